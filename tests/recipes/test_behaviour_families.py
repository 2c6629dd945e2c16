"""Behaviour of the direct-alignment family in the sandbox, one test per data kind: the aligned policy beats the
SFT policy by the gold judge (pairs, unpaired, rankings, negatives), and MODPO's weightings trade objectives."""

from __future__ import annotations

import json
import random

import pytest
import torch

from alignkit.recipes import load_config, train
from alignkit.eval.evaluate import evaluate
from alignkit.rewards.judges import SandboxGoldJudge
from alignkit.sampling.generate import SamplingConfig
from alignkit.apps.sandbox_build import read_prompts
from alignkit.utils.io import write_jsonl

pytestmark = pytest.mark.slow


def train_and_judge(sandbox, out, data, loss, limit, lr=5e-4, **values):
    seed = sandbox.spec.seed
    config = load_config(None, recipe="preference", loss=loss, model={"path": str(sandbox.sft_model)},
                         data={"path": str(data), "max_length": 160, "max_prompt_length": 32, "limit": limit},
                         optim={"lr": lr, "warmup_ratio": 0.1}, batch_size=16, epochs=1, output_dir=str(out),
                         progress=False, seed=seed, **values)
    result = train(config)
    prompts = read_prompts(sandbox.world / "data" / "prompts_eval.jsonl")
    report = evaluate({loss: str(result.model_dir)}, str(sandbox.sft_model), prompts, SandboxGoldJudge(),
                      sampling=SamplingConfig(max_new_tokens=64, batch_size=200, seed=seed), progress=False)
    return report["models"][1], result


def assert_beats_sft(judged):
    assert judged["win_rate"]["low"] > 0.5, judged["win_rate"]
    assert judged["win_rate"]["rate"] >= 0.6, judged["win_rate"]


def test_unpaired_kto_beats_sft(sandbox, tmp_path):
    judged, result = train_and_judge(sandbox, tmp_path, sandbox.datasets / "unpaired.jsonl", "kto", 1600)
    assert_beats_sft(judged)
    assert "kl" in result.metrics[-1]


def test_unpaired_bco_with_running_shift_beats_sft(sandbox, tmp_path):
    judged, result = train_and_judge(sandbox, tmp_path, sandbox.datasets / "unpaired.jsonl", "bco", 1600)
    assert_beats_sft(judged)
    state = torch.load(next((tmp_path / "checkpoints").glob("step-*/objective.pt")), weights_only=True)
    assert state["running_mean"]["count"] == 1600, "the shift saw every implicit reward"


def test_rankings_plackett_luce_beats_sft(sandbox, tmp_path):
    judged, _ = train_and_judge(sandbox, tmp_path, sandbox.datasets / "rankings.jsonl", "plackett_luce", 600)
    assert_beats_sft(judged)


def test_negatives_only_d2o_beats_sft(sandbox, tmp_path):
    judged, result = train_and_judge(sandbox, tmp_path, sandbox.datasets / "negatives.jsonl", "d2o", 600,
                                     loss_params={"num_samples": 4})
    assert_beats_sft(judged)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"]["converted"]["reference_samples"] == 4 * 600


def modpo_pairs(sandbox, path, seed=0):
    """Pairs labelled by the `positive` objective, carrying the `concise` scores as the margin objective."""
    rng = random.Random(seed)
    rows = []
    for line in (sandbox.datasets / "scored.jsonl").read_text().splitlines():
        row = json.loads(line)
        pos, concise = row["scores"]["positive"], row["scores"]["concise"]
        i, j = rng.sample(range(len(row["responses"])), 2)
        if pos[i] == pos[j] or row["responses"][i] == row["responses"][j]:
            continue
        w, l = (i, j) if pos[i] > pos[j] else (j, i)
        rows.append({"prompt": row["prompt"], "responses": [row["responses"][w], row["responses"][l]],
                     "ranking": [0, 1], "scores": {"concise": [concise[w], concise[l]]}})
    write_jsonl(path, rows)
    return path


def test_modpo_weightings_trade_objectives(sandbox, tmp_path):
    data = modpo_pairs(sandbox, tmp_path / "modpo.jsonl", seed=sandbox.spec.seed)
    results = {}
    for name, weight in (("positive_heavy", 0.95), ("concise_heavy", 0.1)):
        judged, _ = train_and_judge(sandbox, tmp_path / name, data, "modpo", 800,
                                    loss_params={"weight": weight, "margins": {"concise": round(1 - weight, 6)},
                                                 "beta": 0.1})
        results[name] = judged
    pos_heavy, concise_heavy = results["positive_heavy"], results["concise_heavy"]
    assert pos_heavy["reward/positive"]["mean"] > concise_heavy["reward/positive"]["mean"] + 0.1
    assert concise_heavy["reward/concise"]["mean"] > pos_heavy["reward/concise"]["mean"] + 0.05
