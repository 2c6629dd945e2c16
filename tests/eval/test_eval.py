"""Evaluation plumbing: sampling, judging, KL estimate, report files."""

from __future__ import annotations

import json

import pytest

from alignkit.data.records import DataError
from alignkit.eval.evaluate import evaluate, load_prompts
from alignkit.rewards.judges import SandboxGoldJudge, get_judge
from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.sampling.generate import SamplingConfig, generate


def test_model_against_itself_ties_everywhere_with_zero_kl(tiny_world, tmp_path):
    base = str(tiny_world / "base")
    prompts = load_prompts(tiny_world / "data" / "prompts_eval.jsonl")[:12]
    report = evaluate({"same": base}, base, prompts, SandboxGoldJudge(), out_dir=tmp_path, progress=False,
                      sampling=SamplingConfig(max_new_tokens=8, seed=3))
    same = report["models"][1]
    assert same["win_rate"]["rate"] == 0.5 and same["win_rate"]["ties"] == 12
    assert same["kl"]["mean"] == 0.0
    assert same["length"]["mean"] <= 8
    assert {"eval.json", "eval.md", "objectives.png"} <= {p.name for p in tmp_path.iterdir()}
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["models"][0]["model"] == "baseline" and saved["prompts"] == 12


def test_sampling_is_seeded_and_stops_at_eos(tiny_world):
    model, tok = load_causal_lm(str(tiny_world / "base")), load_tokenizer(str(tiny_world / "base"))
    prompts = load_prompts(tiny_world / "data" / "prompts_eval.jsonl")[:4]
    config = SamplingConfig(num_samples=3, max_new_tokens=6, seed=7)
    a, b = generate(model, tok, prompts, config), generate(model, tok, prompts, config)
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.prompt_index for s in a] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for s in a:
        assert len(s.response_ids) <= 6
        assert s.finished == (s.response_ids[-1] == tok.eos_token_id)


def test_gold_judge_scores_conversations():
    judge = get_judge("sandbox-gold")
    scores = judge.score([[{"role": "user", "content": "describe the rose ."}]],
                         ["thanks , the rose is lovely ."])
    assert scores["on_topic"][0] == 1.0 and scores["positive"][0] == 1.0 and scores["polite"][0] == 0.5
    assert scores["total"][0] == pytest.approx(1.0 + 1.0 + 0.25 + 0.5 + 1.0)
    assert get_judge("sandbox-gold-terse").score(["describe the rose ."], ["the rose is lovely ."])["total"][0] \
        == pytest.approx(1.5 + 0.25 + 1.5 + 1.0)
    with pytest.raises(KeyError, match="unknown judge"):
        get_judge("gpt-judge")


def test_load_prompts_errors_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"question": "b"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2 field 'prompt'"):
        load_prompts(path)
