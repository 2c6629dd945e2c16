"""Behaviour: a reward model trained in the sandbox agrees with the gold reward on held-out pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.recipes import load_config, train
from alignkit.models.loading import load_tokenizer
from alignkit.rewards import load_reward_model, score
from alignkit.sandbox import world
from alignkit.utils.io import write_jsonl

from shared.rows import sandbox_rows  # noqa: E402

def train_on_sandbox(base: Path, tmp_path: Path, kind: str, seed: int, train_pairs: int = 2000, steps: int = 200,
                     held_out_pairs: int = 600, **reward: object) -> tuple[Path, list]:
    """Write ``train_pairs`` training and ``held_out_pairs`` held-out low-noise rows (BT temperature 0.05) of
    ``kind``; train a reward model from ``base`` for ``steps`` steps of 16 pairs. Returns the model directory and
    the held-out rows."""
    rows = sandbox_rows(train_pairs + held_out_pairs, seed=seed, noise=0.05)[kind]
    write_jsonl(tmp_path / "train.jsonl", rows[:train_pairs])
    write_jsonl(tmp_path / "held_out.jsonl", rows[train_pairs:])
    config = load_config(None, recipe="reward", model={"path": str(base)},
                         data={"path": str(tmp_path / "train.jsonl"), "max_length": 128, "max_prompt_length": 32},
                         reward=reward, optim={"lr": 3e-3, "warmup_ratio": 0.05, "schedule": "cosine"},
                         batch_size=16, max_steps=steps, output_dir=str(tmp_path / "run"), progress=False,
                         log_steps=50, resume="never", seed=seed)
    return train(config).model_dir, rows[train_pairs:]


@pytest.mark.slow
def test_trained_reward_model_agrees_with_gold_on_held_out_pairs(tiny_world: Path, tmp_path: Path,
                                                                  sandbox_seed: int) -> None:
    """BT with centring on pairs labelled by the overall gold; judged by ``alignkit eval rm --gold sandbox``.

    6000 pairs, 600 steps, judged on 3000 held-out pairs. With 2000 pairs and 200 steps the model underfit (train
    accuracy still rising at the end): held-out gold agreement 0.78-0.84 over seeds 0-4 (0.86-0.95 on pairs whose
    gold differs by more than 0.6), so the 0.8 claim held on two draws of five. 6000 / 600 gave 0.815-0.864 on 600
    held-out pairs, whose standard error (~0.015) was most of that spread (12000 / 1200 did not lift the mean:
    0.830-0.867 on four seeds); 3000 pairs bring it to ~0.007."""
    model_dir, _ = train_on_sandbox(tiny_world / "base", tmp_path, "pairs", seed=21 + 100 * sandbox_seed,
                                    train_pairs=6000, steps=600, held_out_pairs=3000, center_coef=0.01)
    report_dir = tmp_path / "report"
    assert main(["eval", "rm", "--model", str(model_dir), "--data", str(tmp_path / "held_out.jsonl"),
                 "--out", str(report_dir), "--gold", "sandbox"]) == 0
    report = json.loads((report_dir / "rm_eval.json").read_text())
    print(f"held-out: gold agreement {report['gold']['agreement']:.3f} on {report['gold']['n_decided']} pairs, "
          f"label accuracy {report['accuracy']:.3f}, ECE {report['calibration']['ece']:.3f}, "
          f"Pearson(reward, gold) {report['gold']['pearson']:.3f}")
    assert report["gold"]["agreement"] >= 0.8
    assert report["gold"]["pearson"] >= 0.6
    assert abs(report["calibration"]["ece"]) < 0.15


@pytest.mark.slow
def test_annotator_heads_learn_their_groups_preferences(tiny_world: Path, tmp_path: Path, sandbox_seed: int) -> None:
    """One head per annotator group (reward.group_by) on pairs labelled by 10 annotators of two groups: on each
    group's held-out pairs, that group's head agrees with the group's gold reward clearly more than the other head."""
    model_dir, held_out = train_on_sandbox(tiny_world / "base", tmp_path, "annotators", seed=31 + 100 * sandbox_seed,
                                         group_by="gold_group")
    tokenizer = load_tokenizer(str(model_dir))
    model = load_reward_model(str(model_dir), tokenizer)
    agreement = {}
    for group in world.GROUP_WEIGHTS:
        rows = [r for r in held_out if r["gold_group"] == group]
        prompts = [r["prompt"] for r in rows]
        gold = torch.tensor([world.gold_reward(r["prompt"][0]["content"], r["chosen"][0]["content"], group)
                             - world.gold_reward(r["prompt"][0]["content"], r["rejected"][0]["content"], group)
                             for r in rows])
        for head in world.GROUP_WEIGHTS:
            margin = (score(model, tokenizer, prompts, [r["chosen"] for r in rows], group=head)
                      - score(model, tokenizer, prompts, [r["rejected"] for r in rows], group=head))
            agreement[group, head] = (margin.sign() == gold.sign())[gold != 0].float().mean().item()
    print({f"{g} pairs / {h} head": round(v, 3) for (g, h), v in agreement.items()})
    assert agreement["warm", "warm"] >= agreement["warm", "terse"] + 0.1
    assert agreement["terse", "terse"] >= agreement["terse", "warm"] + 0.1
