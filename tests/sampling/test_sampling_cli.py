"""`alignkit generate`: JSONL rows of samples, best-of-n under a judge, errors."""

from __future__ import annotations

import json
import math

import pytest

from alignkit.cli import main
from alignkit.rewards.judges import SandboxGoldJudge
from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.sampling.generate import SamplingConfig, generate
from alignkit.apps.sandbox_build import read_prompts


def run(tiny_world, out, *extra):
    return main(["generate", "--model", str(tiny_world / "base"), "--prompts",
                 str(tiny_world / "data" / "prompts_eval.jsonl"), "--out", str(out), "--num-prompts", "5",
                 "--max-new-tokens", "6", "--seed", "1", "--batch-size", "4", "--quiet", *extra])


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_writes_one_row_per_sample_as_the_library_samples(tiny_world, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert run(tiny_world, out, "--num-samples", "3", "--temperature", "0.9", "--top-k", "50") == 0
    rows = rows_of(out)
    prompts = read_prompts(tiny_world / "data" / "prompts_eval.jsonl")[:5]
    model, tok = load_causal_lm(str(tiny_world / "base")), load_tokenizer(str(tiny_world / "base"))
    want = generate(model, tok, prompts, SamplingConfig(num_samples=3, max_new_tokens=6, temperature=0.9, top_k=50,
                                                        seed=1, batch_size=4))
    assert len(rows) == 15
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(i, k) for i in range(5) for k in range(3)]
    for row, s in zip(rows, want):
        assert row["prompt"] == prompts[s.prompt_index]
        assert row["response"] == s.text and row["response_ids"] == s.response_ids
        assert row["finished"] == s.finished and row["logprobs"] == pytest.approx(s.logprobs, abs=1e-6)
        assert len(row["logprobs"]) == len(row["response_ids"]) <= 6
    assert "generated 15 samples for 5 prompts" in capsys.readouterr().out


def test_best_of_keeps_the_judges_favourite_and_reports_the_kl_bound(tiny_world, tmp_path, capsys):
    out = tmp_path / "best.jsonl"
    assert run(tiny_world, out, "--best-of", "4", "--reward", "sandbox-gold") == 0
    rows = rows_of(out)
    prompts = read_prompts(tiny_world / "data" / "prompts_eval.jsonl")[:5]
    model, tok = load_causal_lm(str(tiny_world / "base")), load_tokenizer(str(tiny_world / "base"))
    samples = generate(model, tok, prompts, SamplingConfig(num_samples=4, max_new_tokens=6, seed=1, batch_size=4))
    gold = SandboxGoldJudge().score([prompts[s.prompt_index] for s in samples],
                                    [s.as_response(prompts[s.prompt_index]) for s in samples])["total"]
    assert len(rows) == 5
    for p, row in enumerate(rows):
        group = list(gold[4 * p: 4 * p + 4])
        assert row["prompt_index"] == p and row["best_of"] == 4
        assert row["sample_index"] == group.index(max(group)) and row["reward"] == pytest.approx(max(group))
        assert row["response_ids"] == samples[4 * p + row["sample_index"]].response_ids
    assert any(r["sample_index"] > 0 for r in rows)  # the judge's choice is not always the first sample
    text = capsys.readouterr().out
    assert f"KL(best-of-4 || policy) <= log 4 - (4-1)/4 = {math.log(4) - 0.75:.4f} nats" in text


@pytest.mark.parametrize("extra,message", [
    (["--best-of", "4"], "--best-of needs --reward"),
    (["--best-of", "4", "--reward", "no-such-judge"], "unknown judge 'no-such-judge'"),
    (["--reward", "sandbox-gold"], "--reward is used with --best-of"),
    (["--best-of", "2", "--num-samples", "3", "--reward", "sandbox-gold"], "leave --num-samples at 1"),
    (["--temperature", "-1"], "temperature must be >= 0"),
])
def test_generate_argument_errors(tiny_world, tmp_path, capsys, extra, message):
    out = tmp_path / "x.jsonl"
    assert run(tiny_world, out, *extra) == 2
    assert message in capsys.readouterr().err and not out.exists()
