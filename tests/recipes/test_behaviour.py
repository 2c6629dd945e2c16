"""Behaviour in the sandbox: the aligned policy really scores higher by the gold reward."""

from __future__ import annotations

import pytest

from alignkit.recipes import load_config, train
from alignkit.eval.evaluate import evaluate
from alignkit.rewards.judges import SandboxGoldJudge
from alignkit.sampling.generate import SamplingConfig
from alignkit.apps.sandbox_build import read_prompts

pytestmark = pytest.mark.slow


def test_sft_policy_varies_in_every_gold_objective(sandbox):
    prompts = read_prompts(sandbox.world / "data" / "prompts_eval.jsonl")
    report = evaluate({}, str(sandbox.sft_model), prompts, SandboxGoldJudge(), progress=False)
    sft = report["models"][0]
    assert sft["kl"]["mean"] == 0.0  # the baseline is its own reference
    import json

    scored = [json.loads(line) for line in (sandbox.datasets / "scored.jsonl").read_text().splitlines()]
    for objective in SandboxGoldJudge().objectives:
        values = {round(v, 3) for row in scored for v in row["scores"][objective]}
        assert len(values) >= 2, f"SFT samples never vary in {objective}"


def test_dpo_raises_the_gold_reward_over_sft(sandbox, sandbox_seed, tmp_path):
    config = load_config(None, recipe="preference", loss="dpo", model={"path": str(sandbox.sft_model)},
                         data={"path": str(sandbox.datasets / "pairs.jsonl"), "max_length": 160,
                               "max_prompt_length": 32},
                         optim={"lr": 5e-4, "warmup_ratio": 0.1}, batch_size=16, epochs=1, output_dir=str(tmp_path),
                         progress=False, seed=sandbox_seed)
    result = train(config)
    prompts = read_prompts(sandbox.world / "data" / "prompts_eval.jsonl")
    report = evaluate({"dpo": str(result.model_dir)}, str(sandbox.sft_model), prompts, SandboxGoldJudge(),
                      sampling=SamplingConfig(max_new_tokens=64, batch_size=200, seed=sandbox_seed), progress=False)
    sft, dpo = report["models"]
    assert dpo["win_rate"]["low"] > 0.5 and dpo["win_rate"]["rate"] >= 0.65
    assert dpo["reward/total"]["mean"] > sft["reward/total"]["mean"] + 0.3
    assert dpo["kl"]["mean"] > 0.5, "alignment moved the policy away from the reference"
    later = [row["rewards/accuracy"] for row in result.metrics[len(result.metrics) // 2:]]
    assert sum(later) / len(later) > 0.55, "the implicit reward ranks held-in pairs better than chance"
