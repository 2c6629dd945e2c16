"""Reward sources for online labelling: verifiers (ACT constraint satisfaction rate), sandbox gold, reward models
with several heads, weighted sums, Bradley-Terry and pairwise-judge preferences, spec errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.rewards.judges import JUDGE_HELP, get_judge
from alignkit.rewards import HeadLayout, load_reward_model, score_heads
from alignkit.rewards.sources import (
    BradleyTerryPreference,
    PairwiseJudgePreference,
    PreferenceSource,
    Rewards,
    RewardSource,
    available_sources_help,
    get_preference_source,
    get_reward_source,
)
from alignkit.rewards.verifiers import (
    CONSTRAINTS,
    VerifierSource,
    count_sentences,
    count_words,
    parse_constraints,
)
from alignkit.sandbox import world


def csr(spec: str, response: str, metadata: dict | None = None) -> float:
    source = get_reward_source(spec)
    return float(source.rewards(["a prompt"], [response], None if metadata is None else [metadata]).total[0])


# ------------------------------------------------------------------------------------------------ verifiers
@pytest.mark.parametrize("spec, response, expected", [
    ("include=please|thanks", "Please help me, thanks!", 1.0),
    ("include=please|thanks", "please help me", 0.0),                 # all keywords must appear
    ("include=please", "I am pleased", 0.0),                          # whole words only
    ("include=thank you", "THANK YOU so much", 1.0),                  # phrases, case-insensitive
    ("include_any=please|thanks", "thanks anyway", 1.0),
    ("include_any=please|thanks", "no polite words", 0.0),
    ("exclude=stupid|dumb", "that is a dumb idea", 0.0),
    ("exclude=stupid|dumb", "lift the dumbbell", 1.0),
    ("exclude=stupid|dumb", "", 1.0),
    ("max_words=2", "the rose .", 1.0),                               # "." is no word
    ("max_words=1", "the rose .", 0.0),
    ("min_words=3", "well-known , don't stop", 1.0),                  # hyphen / apostrophe words count once
    ("min_words=1", "", 0.0),
    ("min_words=0", "", 1.0),
    ("max_words=0", "  . , ! ", 1.0),
    ("min_chars=3", "  abc \n", 1.0),                                  # surrounding whitespace not counted
    ("max_chars=2", "  abc \n", 0.0),
    ("max_chars=0", "   ", 1.0),
    (r"regex=^\d{3}-\d{4}$", "555-1234", 1.0),
    (r"regex=^\d{3}-\d{4}$", "call 555-1234", 0.0),
    (r"regex=a\;b", "x a;b y", 1.0),                                  # escaped ';' inside a value
    ("regex=[Ff]inal answer: \\d+", "so the Final answer: 42", 1.0),
    ("starts_with=Dear", "  dear Sir, hello", 1.0),
    ("starts_with=Dear", "Hello, dear Sir", 0.0),
    ("ends_with=Best regards.", "... best regards. \n", 1.0),
    ("ends_with=Best regards.", "Best regards, Ann", 0.0),
    ("json", '{"a": 1, "b": [true, null]}', 1.0),
    ("json", '```json\n{"a": [1, 2]}\n```', 1.0),
    ("json", "```\n[1, 2]\n```", 1.0),
    ("json", "{a: 1}", 0.0),
    ("json", "NaN", 0.0),                                             # strict JSON
    ("json", "", 0.0),
    ("json", '{"a": 1} trailing', 0.0),
    ("json=true", "3", 1.0),
    ("lowercase", "hello world, 42!", 1.0),
    ("lowercase", "Hello world", 0.0),
    ("lowercase", "", 1.0),
    ("sentences=3", "Hi there. How are you? Fine!", 1.0),
    ("sentences=1", "Pi is 3.14 today.", 1.0),                        # a decimal point ends no sentence
    ("sentences=1", "no punctuation at all", 1.0),
    ("sentences=2", "the rose is lovely . thanks .", 1.0),            # sandbox spacing
    ("min_sentences=2", "Wow!!! Really?", 1.0),
    ("max_sentences=1", "One. Two.", 0.0),
    ("sentences=0", "", 1.0),
])
def test_each_verifier(spec: str, response: str, expected: float) -> None:
    assert csr("verify:" + spec, response) == expected
    # chat responses are judged by their last message
    assert csr("verify:" + spec, [{"role": "assistant", "content": response}]) == expected  # type: ignore[arg-type]


def test_text_measures() -> None:
    assert count_words("") == 0 and count_words("a b  c\n d") == 4 and count_words("the rose is lovely .") == 4
    assert count_sentences("") == 0 and count_sentences("...") == 0 and count_sentences("A. B! C? d") == 4
    assert count_sentences("e.g. this") == 2  # a known limitation: abbreviations end a sentence


def test_every_constraint_is_tested_and_listed() -> None:
    assert set(CONSTRAINTS) == {"include", "include_any", "exclude", "min_words", "max_words", "min_chars",
                                "max_chars", "regex", "starts_with", "ends_with", "json", "lowercase",
                                "min_sentences", "max_sentences", "sentences"}
    for name in CONSTRAINTS:
        assert name in available_sources_help()


def test_constraint_satisfaction_rate_and_components() -> None:
    source = get_reward_source("verify:max_words=4;include=rose;exclude=dull|awful")
    assert isinstance(source, VerifierSource) and isinstance(source, RewardSource)
    responses = ["the rose is lovely .", "the rose is dull .", "the tea is awful today .", "rose"]
    result = source.rewards(["describe the rose ."] * 4, responses)
    assert result.total.dtype == np.float64
    np.testing.assert_allclose(result.total, [1.0, 2 / 3, 0.0, 1.0])
    assert list(result.components) == ["max_words=4", "include=rose", "exclude=dull|awful"]
    np.testing.assert_array_equal(result.components["max_words=4"], [1, 1, 0, 1])
    np.testing.assert_array_equal(result.components["include=rose"], [1, 1, 0, 1])
    np.testing.assert_array_equal(result.components["exclude=dull|awful"], [1, 0, 0, 1])


def test_per_record_constraints() -> None:
    prompts = ["p"] * 5
    responses = ["hello there friend", "Hello there", "{\"x\": 1}", "ok", "ok"]
    metadata = [
        {"constraints": ["max_words=2", "lowercase"]},          # list of strings
        {"constraints": {"include": ["hello", "there"], "lowercase": True}},   # dict, list value, flag
        {"constraints": "json;max_chars=3"},                     # one ';'-joined string
        {},                                                      # no constraints of its own
        {"constraints": None},
    ]
    spec_only = get_reward_source("verify:min_words=1")
    result = spec_only.rewards(prompts, responses, metadata)
    # record 0: min_words ok, max_words=2 fails, lowercase ok -> 2/3; record 1: 1, 1, 0 -> 2/3
    # record 2: min_words ok (one token with letters), json ok, max_chars=3 fails -> 2/3; records 3, 4: 1/1
    np.testing.assert_allclose(result.total, [2 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_array_equal(result.components["max_words=2"], [0, np.nan, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(result.components["lowercase"], [1, 0, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(result.components["include=hello|there"], [np.nan, 1, np.nan, np.nan, np.nan])

    only_records = get_reward_source("verify:")   # per-record constraints only: none -> NaN (cannot score)
    result = only_records.rewards(prompts, responses, metadata)
    np.testing.assert_allclose(result.total, [0.5, 0.5, 0.5, np.nan, np.nan])
    assert list(result.valid) == [True, True, True, False, False]
    assert np.isnan(only_records.rewards(["p"], ["x"]).total[0])           # no metadata at all

    with pytest.raises(ValueError, match=r"record 1: unknown constraint 'max_wrds' \(did you mean 'max_words'"):
        spec_only.rewards(["p", "p"], ["a", "b"], [{}, {"constraints": ["max_wrds=3"]}])
    with pytest.raises(ValueError, match="record 0: constraint 'json' is False"):
        spec_only.rewards(["p"], ["a"], [{"constraints": {"json": False}}])
    with pytest.raises(ValueError, match="lengths must match"):
        spec_only.rewards(["p", "p"], ["a", "b"], [{}])


@pytest.mark.parametrize("spec, message", [
    ("verify:max_word=3", r"unknown constraint 'max_word' \(did you mean 'max_words'\?\); valid constraints: .*json"),
    ("verify:max_words=abc", r"constraint 'max_words' needs a non-negative integer, not 'abc'; valid constraints"),
    ("verify:min_chars=-1", "constraint 'min_chars' needs a non-negative integer"),
    ("verify:max_words", "constraint 'max_words' needs a value"),
    ("verify:json=maybe", "constraint 'json' is a flag and takes no value"),
    ("verify:regex=(", "constraint 'regex' is not a valid regular expression"),
    ("verify:include=a||b", "constraint 'include' needs keywords"),
    ("verify:starts_with=  ", "constraint 'starts_with' needs a non-empty text"),
    ("verify:max_words=3;bogus", "unknown constraint 'bogus'"),
])
def test_bad_constraints_name_the_constraint_and_list_the_valid_ones(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        get_reward_source(spec)
    assert "include=A|B" in str(info.value) and "sentences=N" in str(info.value)


def test_parse_constraints_forms() -> None:
    as_text = parse_constraints("verify:max_words=12;include=please|thanks;json")
    assert [c.text for c in as_text] == ["max_words=12", "include=please|thanks", "json"]
    assert parse_constraints({"max_words": 12, "include": ["please", "thanks"], "json": True}) == as_text
    assert parse_constraints(["max_words=12", "include=please|thanks;json"]) == as_text
    with pytest.raises(ValueError, match="'name=value' string"):
        parse_constraints([12])


def test_verifier_as_a_judge() -> None:
    judge = get_judge("verify:max_words=3")
    assert isinstance(judge, VerifierSource) and judge.objectives == ("max_words=3",)
    scores = judge.score(["tell me about the tea ."] * 2, ["the tea .", "the tea is lovely ."])
    np.testing.assert_array_equal(scores["total"], [1.0, 0.0])
    np.testing.assert_array_equal(scores["max_words=3"], [1.0, 0.0])
    assert "verify:" in JUDGE_HELP and "rm:PATH" in JUDGE_HELP
    with pytest.raises(ValueError, match="without constraints"):
        get_judge("verify:")
    with pytest.raises(ValueError, match="unknown constraint"):
        get_judge("verify:shout")


# ------------------------------------------------------------------------------------------------ sandbox gold
def test_sandbox_gold_source_is_the_gold_reward() -> None:
    prompts = ["describe the rose .", "tell me about the tea .", "describe the harbour ."]
    responses = ["the rose is lovely , thanks .", "um the tea is dull and stupid .", "the harbour is busy ."]
    chat_prompts = [[{"role": "user", "content": p}] for p in prompts]
    for spec, group in [("sandbox-gold", None), ("sandbox-gold-warm", "warm"), ("sandbox-gold-terse", "terse")]:
        source = get_reward_source(spec)
        assert source.name == spec
        result = source.rewards(chat_prompts, responses)
        np.testing.assert_allclose(result.total, [world.gold_reward(p, r, group) for p, r in zip(prompts, responses)])
        assert set(result.components) == set(world.OBJECTIVES)
        np.testing.assert_allclose(result.components["safe"], [1.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------------------ weighted sums
def test_weighted_sum_equals_hand_computation() -> None:
    spec = {"sandbox-gold": 2.0, "sandbox-gold-warm": -0.5, "verify:max_words=5;include=rose": 1.5}
    source = get_reward_source(spec)
    prompts = ["describe the rose .", "describe the rose .", "tell me about the tea ."]
    responses = ["the rose is lovely .", "the rose is lovely and bright and pleasant , thanks .", "tea ."]
    result = source.rewards(prompts, responses)
    csr_ = [1.0, 0.5, 0.5]
    expected = [2.0 * world.gold_reward(p, r) - 0.5 * world.gold_reward(p, r, "warm") + 1.5 * c
                for p, r, c in zip(prompts, responses, csr_)]
    np.testing.assert_allclose(result.total, expected)
    np.testing.assert_allclose(result.components["sandbox-gold"], [world.gold_reward(p, r) for p, r in
                                                                   zip(prompts, responses)])
    np.testing.assert_allclose(result.components["verify:max_words=5;include=rose"], csr_)
    assert "sandbox-gold-warm/polite" in result.components and "verify:max_words=5;include=rose/include=rose" in \
        result.components
    assert source.name == "2*sandbox-gold + -0.5*sandbox-gold-warm + 1.5*verify:max_words=5;include=rose"


def test_weighted_sum_is_nan_when_a_member_is() -> None:
    source = get_reward_source({"sandbox-gold": 1.0, "verify:": 0.0})
    result = source.rewards(["describe the rose ."] * 2, ["the rose .", "the rose ."],
                            [{"constraints": ["max_words=1"]}, {}])
    assert result.total[0] == pytest.approx(world.gold_reward("describe the rose .", "the rose .") + 0.0)
    assert np.isnan(result.total[1]) and not np.isnan(result.components["sandbox-gold"][1])


# ------------------------------------------------------------------------------------------------ preferences
def test_bradley_terry_preferences() -> None:
    prompts = ["describe the rose ."] * 4
    a = ["the rose is lovely , thanks .", "the rose is dull .", "the rose .", "the rose is lovely ."]
    b = ["the rose is dull .", "the rose is lovely , thanks .", "the rose .", "the tea is stupid ."]
    for scale in (1.0, 0.25):
        pref = get_preference_source("sandbox-gold", scale=scale)
        assert isinstance(pref, BradleyTerryPreference) and isinstance(pref, PreferenceSource)
        p_ab = pref.win_probability(prompts, a, b)
        expected = [1 / (1 + math.exp(-(world.gold_reward(prompts[0], x) - world.gold_reward(prompts[0], y)) / scale))
                    for x, y in zip(a, b)]
        np.testing.assert_allclose(p_ab, expected, rtol=1e-12)
        np.testing.assert_allclose(pref.win_probability(prompts, b, a), 1 - p_ab, rtol=1e-12)
        assert p_ab[2] == 0.5                                            # equal rewards
    weighted = get_preference_source({"sandbox-gold": 1.0, "verify:": 1.0})
    p = weighted.win_probability(["p", "p"], ["x", "y"], ["z", "w"], [{"constraints": ["json"]}, {}])
    assert p[0] == 0.5 and np.isnan(p[1])                                # NaN reward -> NaN probability
    extreme = BradleyTerryPreference(get_reward_source("sandbox-gold"), scale=1e-9)
    assert extreme.win_probability(prompts[:1], a[:1], b[:1])[0] == 1.0  # no overflow


class ScriptedJudge:
    """A fake pairwise judge: ``rule(first, second)`` gives the verdict; it records every comparison."""

    name = "scripted"

    def __init__(self, rule):
        self.rule, self.calls = rule, []

    def compare(self, prompts, first, second):
        self.calls.extend(zip(first, second))
        return [self.rule(x, y) for x, y in zip(first, second)]


def test_pairwise_judge_averages_both_orders() -> None:
    always_a = ScriptedJudge(lambda x, y: "A")                  # pure position bias
    pref = PairwiseJudgePreference(always_a)
    p = pref.win_probability(["q"] * 3, ["x", "y", "z"], ["u", "v", "w"])
    np.testing.assert_array_equal(p, [0.5, 0.5, 0.5])
    assert sorted(always_a.calls) == sorted([("x", "u"), ("y", "v"), ("z", "w"), ("u", "x"), ("v", "y"), ("w", "z")])
    assert pref.last.stats()["position_bias"] == 1.0

    prefers_good = ScriptedJudge(lambda x, y: "A" if x == "good" else "B" if y == "good" else "tie")
    p = PairwiseJudgePreference(prefers_good).win_probability(["q"] * 3, ["good", "bad", "meh"],
                                                              ["bad", "good", "meh2"])
    np.testing.assert_array_equal(p, [1.0, 0.0, 0.5])

    # A when first is shown first, tie in the other order -> (1 + 0.5) / 2; an invalid verdict -> NaN
    def mixed(x: str, y: str):
        return {("x", "y"): "A", ("y", "x"): "tie", ("s", "t"): None, ("t", "s"): "B"}[(x, y)]
    p = PairwiseJudgePreference(ScriptedJudge(mixed)).win_probability(["q", "q"], ["x", "s"], ["y", "t"])
    assert p[0] == 0.75 and np.isnan(p[1])


def test_pairwise_spec_selects_an_llm_judge(tiny_world: Path) -> None:
    base = str(tiny_world / "base")
    pref = get_preference_source(f"pairwise:llm:{base}", scale=3.0)      # scale does not apply to a judge
    assert isinstance(pref, PairwiseJudgePreference) and pref.judge.mode == "pairwise"
    pref.judge.max_new_tokens, pref.judge.max_answer_tokens = 4, 12
    p = pref.win_probability(["tell me about the tea ."] * 2, ["the tea is lovely .", "tea"], ["um", "the tea ."])
    assert p.shape == (2,) and all(np.isnan(v) or v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in p)
    assert len(pref.judge.outputs) == 4                                   # both orders of both pairs
    rating = get_reward_source(f"llm:{base}")                             # pointwise rating 1-10 as a source
    rating.judge.max_new_tokens = 4
    result = rating.rewards(["tell me about the tea ."], ["the tea is lovely ."])
    assert result.total.shape == (1,) and rating.judge.mode == "pointwise"


# ------------------------------------------------------------------------------------------------ reward models
@pytest.fixture(scope="module")
def multi_head_rm(tiny_world: Path, tmp_path_factory) -> Path:
    """A saved reward model with two annotator groups x two ensemble heads (random heads, no training)."""
    from alignkit.models.loading import load_tokenizer

    path = tmp_path_factory.mktemp("multi_head_rm")
    tokenizer = load_tokenizer(str(tiny_world / "base"))
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_world / "base"), tokenizer, HeadLayout(("terse", "warm"), ensemble=2),
                              device="cpu")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_heads_mean_min_group(multi_head_rm: Path) -> None:
    prompts = [[{"role": "user", "content": "describe the rose ."}]] * 3 + ["tell me about the tea ."]
    responses = ["the rose is lovely .", "thanks , the rose is lovely and bright .", "um", "the tea is dull ."]
    mean = get_reward_source(f"rm:{multi_head_rm}", device="cpu")
    heads = score_heads(mean.model, mean.tokenizer, prompts, responses).numpy()      # [4, 2 groups, 2 members]
    assert heads.shape == (4, 2, 2) and len(np.unique(heads.round(6))) == 16          # the heads really differ

    result = mean.rewards(prompts, responses)
    np.testing.assert_allclose(result.total, heads.reshape(4, -1).mean(-1), rtol=1e-6)
    assert sorted(result.components) == ["group:terse", "group:warm", "head:terse/0", "head:terse/1",
                                         "head:warm/0", "head:warm/1", "std"]
    np.testing.assert_allclose(result.components["head:warm/1"], heads[:, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(result.components["group:terse"], heads[:, 0].mean(-1), rtol=1e-6)
    np.testing.assert_allclose(result.components["std"], heads.reshape(4, -1).std(-1), rtol=1e-5)

    worst = get_reward_source(f"rm:{multi_head_rm}#min", device="cpu").rewards(prompts, responses)
    np.testing.assert_allclose(worst.total, heads.reshape(4, -1).min(-1), rtol=1e-6)
    warm = get_reward_source(f"rm:{multi_head_rm}#group=warm", device="cpu").rewards(prompts, responses)
    np.testing.assert_allclose(warm.total, heads[:, 1].mean(-1), rtol=1e-6)
    np.testing.assert_allclose(warm.components["std"], heads[:, 1].std(-1), rtol=1e-5)
    warm_min = get_reward_source(f"rm:{multi_head_rm}#group=warm,min", device="cpu").rewards(prompts, responses)
    np.testing.assert_allclose(warm_min.total, heads[:, 1].min(-1), rtol=1e-6)
    uwo = get_reward_source(f"rm:{multi_head_rm}#uwo=0.5", device="cpu").rewards(prompts, responses)
    flat = heads.reshape(4, -1)
    np.testing.assert_allclose(uwo.total, flat.mean(-1) - 0.5 * flat.std(-1), rtol=1e-5)

    # one load serves several specs on the same model inside a weighted source
    combined = get_reward_source({f"rm:{multi_head_rm}": 1.0, f"rm:{multi_head_rm}#min": 1.0}, device="cpu")
    assert combined.members[0][2].model is combined.members[1][2].model
    np.testing.assert_allclose(combined.rewards(prompts, responses).total, flat.mean(-1) + flat.min(-1), rtol=1e-5)

    with pytest.raises(KeyError, match="unknown annotator group 'cold'.*terse, warm"):
        get_reward_source(f"rm:{multi_head_rm}#group=cold", device="cpu")
    with pytest.raises(ValueError, match="unknown reward-model option 'max'.*mean, min, uwo=L, group=NAME"):
        get_reward_source(f"rm:{multi_head_rm}#max", device="cpu")


def test_single_head_reward_model_has_no_head_components(tiny_world: Path, tmp_path: Path) -> None:
    from alignkit.models.loading import load_tokenizer
    from alignkit.rewards import score

    tokenizer = load_tokenizer(str(tiny_world / "base"))
    torch.manual_seed(1)
    model = load_reward_model(str(tiny_world / "base"), tokenizer, HeadLayout(), device="cpu")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    source = get_reward_source(f"rm:{tmp_path}", device="cpu")
    result = source.rewards(["describe the rose ."], ["the rose is lovely ."])
    assert result.components == {}
    np.testing.assert_allclose(result.total, score(model, tokenizer, ["describe the rose ."],
                                                   ["the rose is lovely ."]).numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ spec errors
@pytest.mark.parametrize("spec, error, message", [
    ("sandbox-gld", KeyError, r"unknown reward source 'sandbox-gld' \(did you mean 'sandbox-gold'\?\).*rm:PATH"),
    ("gpt-4", KeyError, "unknown reward source 'gpt-4'; reward sources: sandbox-gold"),
    ("sandbox-gold-cold", KeyError, "unknown sandbox annotator group 'cold'.*warm, terse"),
    ("sandbox-gold-", KeyError, "unknown sandbox annotator group ''"),
    ("rm:", ValueError, "names no reward-model directory"),
    ("llm:", ValueError, "names no model directory"),
    ("pairwise:llm:/x", ValueError, "use get_preference_source"),
    ({}, ValueError, "empty dict"),
    ({"sandbox-gold": "heavy"}, ValueError, "the weight of 'sandbox-gold' must be a finite number, not 'heavy'"),
    ({"sandbox-gold": float("nan")}, ValueError, "finite number"),
    ({"sandbox-gold": True}, ValueError, "finite number"),
    ({"sandbox-gold": 1.0, "sandbox-gld": 1.0}, KeyError, "did you mean 'sandbox-gold'"),
    (3, ValueError, "a string or a dict"),
])
def test_bad_reward_specs(spec, error, message) -> None:
    with pytest.raises(error, match=message):
        get_reward_source(spec)


def test_bad_preference_specs_and_directories(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only pairwise:llm:PATH compares two responses"):
        get_preference_source("pairwise:sandbox-gold")
    with pytest.raises(ValueError, match="positive number"):
        get_preference_source("sandbox-gold", scale=0.0)
    with pytest.raises(KeyError, match=f"did you mean 'rm:{tmp_path}'"):
        get_reward_source(str(tmp_path))                       # a bare directory: suggest rm: / llm:


def test_rewards_checks_shapes_and_sources_pass_through() -> None:
    with pytest.raises(ValueError, match="component 'x' has 2 values for 3 responses"):
        Rewards(np.zeros(3), {"x": np.zeros(2)})
    rewards = Rewards([1, 2], {"c": [0, 1]})
    assert rewards.total.dtype == np.float64 and len(rewards) == 2
    source = get_reward_source("sandbox-gold")
    assert get_reward_source(source) is source                    # an object with .rewards is used as is
    pref = get_preference_source("sandbox-gold")
    assert get_preference_source(pref) is pref
    wrapped = get_preference_source(source, scale=2.0)               # a built source: no second model load
    assert isinstance(wrapped, BradleyTerryPreference) and wrapped.source is source and wrapped.scale == 2.0
