"""Behaviour: a reward model trained in the sandbox agrees with the gold reward on held-out pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.config import load_config
from alignkit.train.recipes import train
from alignkit.utils.io import write_jsonl

from test_rewards_models import sandbox_rows  # noqa: E402

TRAIN_PAIRS, HELD_OUT_PAIRS = 2000, 600


@pytest.mark.slow
def test_trained_reward_model_agrees_with_gold_on_held_out_pairs(tiny_world: Path, tmp_path: Path) -> None:
    """Random-init tiny Llama backbone + scalar head, BT on 2000 low-noise pairs (BT temperature 0.05), 200 steps;
    judged by ``alignkit eval rm --gold sandbox`` on 600 held-out pairs from the same world."""
    rows = sandbox_rows(TRAIN_PAIRS + HELD_OUT_PAIRS, seed=21, noise=0.05)["pairs"]
    write_jsonl(tmp_path / "train.jsonl", rows[:TRAIN_PAIRS])
    write_jsonl(tmp_path / "held_out.jsonl", rows[TRAIN_PAIRS:])
    config = load_config(None, recipe="reward", model={"path": str(tiny_world / "base")},
                         data={"path": str(tmp_path / "train.jsonl"), "max_length": 128, "max_prompt_length": 32},
                         reward={"center_coef": 0.01},
                         optim={"lr": 3e-3, "warmup_ratio": 0.05, "schedule": "cosine"}, batch_size=16,
                         max_steps=200, output_dir=str(tmp_path / "run"), progress=False, log_steps=50, resume="never")
    result = train(config)
    report_dir = tmp_path / "report"
    assert main(["eval", "rm", "--model", str(result.model_dir), "--data", str(tmp_path / "held_out.jsonl"),
                 "--out", str(report_dir), "--gold", "sandbox"]) == 0
    report = json.loads((report_dir / "rm_eval.json").read_text())
    print(f"held-out: gold agreement {report['gold']['agreement']:.3f} on {report['gold']['n_decided']} pairs, "
          f"label accuracy {report['accuracy']:.3f}, ECE {report['calibration']['ece']:.3f}, "
          f"Pearson(reward, gold) {report['gold']['pearson']:.3f}")
    assert report["gold"]["agreement"] >= 0.8
    assert report["gold"]["pearson"] >= 0.6
    assert abs(report["calibration"]["ece"]) < 0.15
