"""Judges: verdict parsing on messy outputs, the both-orders pairwise protocol, rm: and llm: judges."""

from __future__ import annotations

import numpy as np
import pytest

from alignkit.rewards.judges import RewardModelJudge, SandboxGoldJudge, get_judge, is_pairwise
from alignkit.rewards.llm_judge import LLMJudge, parse_pairwise_verdict, parse_score
from alignkit.rewards.pairwise import combine_orders, judge_both_orders, score_outcomes


@pytest.mark.parametrize("text, verdict", [
    ("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"), ("Final verdict: [[C]]", "tie"),
    ("Output (a)", "A"), ("**A**", "A"), ("Winner: B.", "B"), ("tie", "tie"), ("It's a tie.", "tie"),
    ("Verdict: tie", "tie"), ("both are equally good", "tie"), ("A", "A"), ("(b)", "B"), ("B!", "B"),
    ("blah blah [[A]] because it is nicer", "A"),                      # stray text around a clear cue
    ("The better response is **A**", "A"), ("answer b", "B"),
    ("I prefer Response B, it is more polite. Winner: B", "B"),
    ("Winner: B. Not a tie.", "B"),                                     # a keyed verdict beats a tie word
    ("Output (a) says X, Output (b) says Y. [[B]]", "B"),              # both letters, brackets decide
    ("Output (a) is better than Output (b)", None),                    # both letters, nothing decides
    ("Assistant A is polite. Assistant B is rude.", None),
    ("[[A]] [[B]]", None), ("the harbour is lovely .", None), ("", None), ("a", None),
])
def test_pairwise_verdict_parsing(text, verdict):
    assert parse_pairwise_verdict(text) == verdict


@pytest.mark.parametrize("text, score", [
    ("[[7]]", 7.0), ("Rating: 6.5", 6.5), ("Score: 8/10", 8.0), ("I'd say 7 out of 10.", 7.0), ("9", 9.0),
    ("rating of 11", None), ("[[3]] and then [[4]]", None), ("no idea", None), ("[[0]]", None),
])
def test_pointwise_score_parsing(text, score):
    assert parse_score(text) == score


class PositionBiasedJudge:
    """Knows which answer is better (the longer one) but on a fixed 30% of prompts always picks slot A."""

    name = "biased"

    def __init__(self, biased_prompts: set[str], invalid_prompts: frozenset[str] = frozenset()):
        self.biased, self.invalid = biased_prompts, invalid_prompts

    def compare(self, prompts, first, second):
        out = []
        for p, a, b in zip(prompts, first, second):
            if p in self.invalid:
                out.append(None)
            elif p in self.biased:
                out.append("A")
            else:
                out.append("A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie")
        return out


def test_protocol_measures_a_known_position_bias():
    prompts = [f"p{i}" for i in range(100)]
    x = ["long answer" if i % 2 else "s" for i in range(100)]         # x better on odd prompts
    y = ["s" if i % 2 else "long answer" for i in range(100)]
    biased = {f"p{i}" for i in range(0, 100, 10)} | {f"p{i}" for i in range(1, 100, 10)} | \
        {f"p{i}" for i in range(2, 100, 10)}
    result = judge_both_orders(PositionBiasedJudge(biased), prompts, x, y)
    stats = result.stats()
    assert stats["position_consistency"] == pytest.approx(0.7)
    assert stats["position_bias"] == pytest.approx(0.3)               # 60 of 200 verdicts: always slot A
    assert stats["inconsistent_as_ties"] == 30 and stats["invalid"] == 0
    consistent = result.consistent
    assert np.all(result.outcomes[~consistent] == 0.5)                # inconsistent pairs are ties
    odd = np.arange(100) % 2 == 1
    assert np.all(result.outcomes[consistent & odd] == 1.0) and np.all(result.outcomes[consistent & ~odd] == 0.0)
    fair = judge_both_orders(PositionBiasedJudge(set()), prompts, x, y).stats()
    assert fair["position_consistency"] == 1.0 and fair["position_bias"] == 0.0


def test_protocol_counts_invalid_verdicts_and_ties():
    prompts = ["p0", "p1", "p2", "p3"]
    result = judge_both_orders(PositionBiasedJudge(set(), frozenset({"p1"})), prompts,
                               ["aa", "aa", "same", "a"], ["a", "a", "same", "aa"])
    assert np.isnan(result.outcomes[1]) and result.outcomes[[0, 2, 3]].tolist() == [1.0, 0.5, 0.0]
    stats = result.stats()
    assert stats["invalid"] == 1 and stats["invalid_verdicts"] == 2 and stats["tie_verdicts"] == 2
    assert stats["position_consistency"] == 1.0
    # one valid order is not enough: the comparison is invalid, not silently decided by one order
    assert np.isnan(combine_orders(["A"], [None]).outcomes[0])
    assert combine_orders(["A", "tie"], ["B", "B"]).outcomes.tolist() == [1.0, 0.5]


def test_score_outcomes_mark_invalid_scores():
    assert np.array_equal(score_outcomes(np.array([2.0, 1.0, np.nan, 1.0]), np.array([1.0, 2.0, 1.0, 1.0])),
                          np.array([1.0, 0.0, np.nan, 0.5]), equal_nan=True)


def test_judge_names():
    assert isinstance(get_judge("sandbox-gold"), SandboxGoldJudge) and not is_pairwise(get_judge("sandbox-gold"))
    assert is_pairwise(PositionBiasedJudge(set()))
    with pytest.raises(KeyError, match="rm:PATH"):
        get_judge("gpt-judge")


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_world, tmp_path_factory):
    """A sequence-classification model (one label) made from the tiny sandbox base and saved."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from alignkit.models.loading import load_tokenizer

    path = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_world / "base"), num_labels=1)
    model.save_pretrained(path)
    load_tokenizer(str(tiny_world / "base")).save_pretrained(path)
    return path


def test_reward_model_judge_scores_text_and_conversations(tiny_reward_model):
    judge = get_judge(f"rm:{tiny_reward_model}")
    assert isinstance(judge, RewardModelJudge) and judge.objectives == ()
    prompts = [[{"role": "user", "content": "describe the rose ."}]] * 3 + ["tell me about the tea ."]
    responses = ["the rose is lovely .", "thanks , the rose is lovely and bright .", "um", "the tea is dull ."]
    scores = judge.score(prompts, responses)["total"]
    assert scores.shape == (4,) and np.all(np.isfinite(scores)) and len(set(scores.round(6))) == 4
    one_by_one = RewardModelJudge(str(tiny_reward_model), batch_size=1).score(prompts, responses)["total"]
    assert one_by_one == pytest.approx(scores, abs=1e-5)          # padding does not change a reward


def test_llm_judge_end_to_end_counts_invalid_verdicts(tiny_world):
    base = str(tiny_world / "base")
    judge = get_judge(f"llm:{base}", mode="pairwise", max_new_tokens=6, max_answer_tokens=12)
    assert isinstance(judge, LLMJudge) and is_pairwise(judge)
    prompts = ["tell me about the tea .", "describe the rose .", "describe the { weird } {answer_a} prompt ."]
    result = judge_both_orders(judge, prompts, ["the tea is lovely ."] * 3, ["<script>x</script> dull"] * 3)
    assert len(judge.outputs) == 6
    parsed = [parse_pairwise_verdict(t) for t in judge.outputs]
    assert result.verdicts_xy + result.verdicts_yx == parsed          # verdicts are exactly the parses
    assert judge.invalid == sum(v is None for v in parsed)
    assert result.stats()["invalid"] == sum(a is None or b is None for a, b in zip(parsed[:3], parsed[3:]))
    pointwise = get_judge(f"llm:{base}", mode="pointwise", max_new_tokens=4, max_answer_tokens=12)
    assert not is_pairwise(pointwise)
    totals = pointwise.score(prompts[:2], ["the tea is lovely .", "the rose ."])["total"]
    assert totals.shape == (2,) and pointwise.invalid == int(np.isnan(totals).sum())
    with pytest.raises(ValueError, match="answer_b"):
        LLMJudge(base, template="{question} {answer_a}")


# --------------------------------------------------------------------------- sandbox-gold on a foreign model
ENGLISH = ["The quick brown fox jumps over the lazy dog near the river bank.",
           "Our quarterly report shows revenue growth across all regions this year.",
           "Please remember to submit your application before the deadline on Friday.",
           "Scientists discovered a new species of frog in the rainforest last month.",
           "Install the package with pip and run the command from your terminal window."] * 4


def foreign_model(tmp_path):
    """A tiny random Llama with a BPE tokenizer trained on English (a user's own model, not a sandbox one)."""
    from alignkit.sandbox.assets import build_model, build_tokenizer

    tokenizer = build_tokenizer(ENGLISH * 20, vocab_size=400)
    path = tmp_path / "foreign"
    build_model(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_sandbox_gold_refuses_text_that_is_not_the_sandbox_language():
    from alignkit.data.records import DataError
    from alignkit.rewards.sources import build_source
    from alignkit.rewards.spec import parse_spec

    with pytest.raises(DataError, match=r"^judge sandbox-gold: it scores the sandbox world's language; \d\d% of the "
                                        r"\d+ words in the responses are not sandbox words and \d\.\d% are sandbox "
                                        r"topic, sentiment or politeness words \(is this a sandbox model\?\)$"):
        SandboxGoldJudge().score(["tell me about the harbour ."] * len(ENGLISH), ENGLISH)
    with pytest.raises(DataError, match="judge sandbox-gold-warm: "):   # the reward source of training, too
        build_source(parse_spec("sandbox-gold-warm")).rewards(["tell me about the tea ."] * len(ENGLISH), ENGLISH)


def test_sandbox_gold_scores_sandbox_text_and_an_untrained_sandbox_models_tokens(tiny_world):
    import random

    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.apps.sandbox_build import read_prompts
    from alignkit.sampling.generate import SamplingConfig, generate
    from alignkit.sandbox import world

    rng = random.Random(0)
    writer = world.Writer(rng)
    prompts = [world.make_prompt(rng) for _ in range(40)]
    scores = SandboxGoldJudge().score(prompts, [writer.response(p) for p in prompts])
    assert scores["total"].shape == (40,)
    prompts = read_prompts(tiny_world / "data" / "prompts_eval.jsonl")    # random init: the sandbox's BPE pieces
    model, tokenizer = load_causal_lm(str(tiny_world / "base")), load_tokenizer(str(tiny_world / "base"))
    samples = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=32))
    assert SandboxGoldJudge().score(prompts, [s.text for s in samples])["total"].shape == (len(prompts),)
    assert SandboxGoldJudge().score(prompts, ["i hope this helps ."] * len(prompts))["safe"].min() == 1.0


def test_eval_with_sandbox_gold_on_a_foreign_model_is_one_line(tiny_world, tmp_path, capsys):
    from alignkit.cli import main
    from alignkit.utils.io import write_jsonl

    model = foreign_model(tmp_path)
    capsys.readouterr()
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": text} for text in ENGLISH * 2])   # enough words to judge (gold.MIN_WORDS)
    assert main(["eval", "--model", f"mine={model}", "--baseline", str(model), "--prompts", str(prompts),
                 "--max-new-tokens", "48", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]   # after the sampling progress bar
    assert err.startswith("alignkit: error: judge sandbox-gold: it scores the sandbox world's language; ")
    assert err.endswith(f"(is this a sandbox model?) [responses of model 'baseline': {model}]")
