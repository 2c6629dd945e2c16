"""``alignkit eval`` writes every sample with its judge scores and verdict to ``samples.jsonl``; the HTML page
browses them (a table with a CSS-only model filter; all model text escaped)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignkit.eval.evaluate import evaluate, render_html, samples_html
from alignkit.rewards.judges import SandboxGoldJudge
from alignkit.sampling.generate import SamplingConfig


@pytest.fixture(scope="module")
def evaluated(tiny_world, tmp_path_factory):
    from alignkit.apps.sandbox_build import read_prompts

    out = tmp_path_factory.mktemp("samples")
    prompts = read_prompts(tiny_world / "data" / "prompts_eval.jsonl")[:6]
    base = str(tiny_world / "base")
    report = evaluate({"a": base, "b": base}, base, prompts, SandboxGoldJudge(), progress=False, out_dir=out,
                      sampling=SamplingConfig(max_new_tokens=8, num_samples=2, temperature=1.0),
                      reward_judges=[SandboxGoldJudge("warm")], n_bootstrap=10)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return prompts, report, rows, out


def test_every_sample_of_every_model_with_its_scores_and_verdict(evaluated):
    prompts, report, rows, _ = evaluated
    assert len(rows) == 3 * 6 * 2                     # baseline, a, b; 6 prompts; 2 samples each
    assert [(r["prompt_index"], r["sample_index"], r["model"]) for r in rows[:6]] == [
        (0, 0, "baseline"), (0, 0, "a"), (0, 0, "b"), (0, 1, "baseline"), (0, 1, "a"), (0, 1, "b")]
    gold, warm = SandboxGoldJudge(), SandboxGoldJudge("warm")
    by_key = {(r["model"], r["prompt_index"], r["sample_index"]): r for r in rows}
    for row in rows:
        assert row["prompt"] == prompts[row["prompt_index"]]
        want = gold.score([row["prompt"]], [row["response"]])
        assert row["scores"] == pytest.approx({k: float(v[0]) for k, v in want.items()})
        assert row["rewards"]["sandbox-gold-warm"]["total"] == pytest.approx(
            float(warm.score([row["prompt"]], [row["response"]])["total"][0]))
        if row["model"] == "baseline":
            assert "verdict" not in row
            continue
        base = by_key[("baseline", row["prompt_index"], row["sample_index"])]
        diff = row["scores"]["total"] - base["scores"]["total"]
        assert row["verdict"] == ("win" if diff > 0 else "loss" if diff < 0 else "tie")
        assert row["outcome_vs_baseline"] == {"win": 1.0, "tie": 0.5, "loss": 0.0}[row["verdict"]]
    for model in report["models"]:                     # the rows add up to the report's numbers
        mine = [r for r in rows if r["model"] == model["model"]]
        assert np.mean([r["finished"] for r in mine]) == pytest.approx(model["finished"])
        assert np.mean([r["length"] for r in mine]) == pytest.approx(model["length"]["mean"])
        if "win_rate" in model:
            assert np.mean([r["outcome_vs_baseline"] for r in mine]) == pytest.approx(model["win_rate"]["rate"])


def test_the_page_browses_every_sample_with_a_model_filter(evaluated):
    _, _, rows, out = evaluated
    page = (out / "eval.html").read_text()
    assert "Samples (36, also in samples.jsonl)" in page
    assert page.count('<tr class="samples-') == 36
    for i, name in enumerate(("baseline", "a", "b")):
        assert f'<label for="samples-{i}">{name}</label>' in page
        assert f"#samples-{i}:checked ~ table tbody tr:not(.samples-{i}) {{ display: none; }}" in page
    assert "<script" not in page


def test_model_text_in_the_samples_is_escaped():
    row = {"prompt_index": 0, "model": "<b>m</b>", "prompt": "<i>hi</i>", "response": "<script>alert(1)</script>",
           "finished": True, "length": 3, "scores": {"total": 1.0}, "verdict": "win"}
    html = samples_html([row])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "&lt;b&gt;m&lt;/b&gt;" in html and "&lt;i&gt;hi&lt;/i&gt;" in html
    report = {"judge": "j", "prompts": 1, "baseline": "baseline", "baseline_path": "p", "reference": "p",
              "models": [{"model": "baseline", "kl": {"mean": 0.0}, "length": {"mean": 3.0}, "finished": 1.0}]}
    assert "alert(1)</script>" not in render_html(report, samples=[row])
