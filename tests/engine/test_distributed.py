"""Data parallelism: 2 CPU processes over gloo give the same losses and weights as 1 process with the same
global batch, including the batch statistics that are all-reduced (KTO's reference point, BCO's shift)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.runs import assert_same_weights, run_train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("loss", ["kto", "bco"])
def test_two_processes_match_one(tiny_world, tiny_pairs, tmp_path, loss):
    config = {"recipe": "preference", "loss": loss, "model": {"path": str(tiny_world / "base"), "dtype": "float64"},
              "data": {"path": str(tiny_pairs), "max_length": 128, "max_prompt_length": 32},
              "optim": {"lr": 1e-3}, "max_steps": 3, "log_steps": 1, "progress": False}
    run_train(config, tmp_path / "one", "--num-processes", "1", "batch_size=8")
    if loss == "kto":  # both entry points: accelerate launch with the example file, and --num-processes
        launch_train(config, tmp_path / "two", "ddp", "batch_size=4")
    else:
        run_train(config, tmp_path / "two", "--num-processes", "2", "batch_size=4")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (summary["processes"], summary["parallel"]) == (2, "ddp")
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "two" / "model", atol=1e-5)
    runs = ("one", "two")
    losses = {n: [json.loads(line)["loss"] for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
              for n in runs}
    assert losses["one"] == pytest.approx(losses["two"], abs=1e-8)


def launch_train(config: dict, out: Path, example: str, *extra: str) -> None:
    """`accelerate launch --config_file examples/accelerate/<example>.yaml -m alignkit train ...` (2 processes)."""
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    launcher = Path(sys.executable).with_name("accelerate")
    example_file = Path(__file__).parents[2] / "examples" / "accelerate" / f"{example}.yaml"
    result = subprocess.run([str(launcher), "launch", "--config_file", str(example_file), "-m", "alignkit", "train",
                             "--config", str(path), f"output_dir={out}", *extra],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_fsdp_two_processes_match_one_and_resume_exactly(tiny_world, tiny_pairs, tmp_path):
    """fully_shard over 2 CPU processes (launched with examples/accelerate/fsdp.yaml): same weights as 1 unsharded
    process; checkpoints are whole save_pretrained files, and a run resumed from one (its optimizer state re-sharded,
    launched with --num-processes 2 distributed=fsdp) ends where a straight one does."""
    config = {"recipe": "preference", "loss": "dpo", "model": {"path": str(tiny_world / "base"), "dtype": "float64"},
              "data": {"path": str(tiny_pairs), "max_length": 128, "max_prompt_length": 32},
              "optim": {"lr": 1e-3, "schedule": "constant", "warmup_ratio": 0.0}, "log_steps": 1, "progress": False}
    run_train(dict(config, max_steps=4), tmp_path / "one", "--num-processes", "1", "batch_size=8")
    launch_train(dict(config, max_steps=4), tmp_path / "fsdp", "fsdp", "batch_size=4")  # the example file selects FSDP
    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    assert (summary["processes"], summary["parallel"]) == (2, "fsdp")
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "fsdp" / "model", atol=1e-5)
    run_train(dict(config, max_steps=2), tmp_path / "resumed", "--num-processes", "2", "batch_size=4",
              "distributed=fsdp")
    run_train(dict(config, max_steps=4), tmp_path / "resumed", "--num-processes", "2", "batch_size=4",
              "distributed=fsdp", "resume=auto")
    assert_same_weights(tmp_path / "one" / "model", tmp_path / "resumed" / "model", atol=1e-5)
    losses = {n: [json.loads(line)["loss"] for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
              for n in ("one", "fsdp", "resumed")}
    assert losses["one"] == pytest.approx(losses["fsdp"], abs=1e-8) == losses["resumed"]


@pytest.mark.parametrize("setting, message", [({"lora": {"enabled": True}}, "LoRA"),
                                              ({"loss": "sparsepo"}, "token-level"),
                                              ({"recipe": "reward"}, "recipe: reward")])
def test_fsdp_refuses_what_it_does_not_cover(setting, message):
    """Refused when the config is loaded (and by train, for a config built otherwise), before anything loads."""
    from alignkit.config import ConfigError, read_config
    from alignkit.recipes import load_config, train

    values = dict(distributed="fsdp", model={"path": "unused"}, data={"path": "unused.jsonl"}, **setting)
    with pytest.raises(ConfigError, match=message):
        load_config(None, **values)
    with pytest.raises(ConfigError, match=message):
        train(read_config(None, **values))


@pytest.mark.parametrize("loss, distributed", [("kto", "ddp"), ("dpo", "fsdp")])
def test_a_short_last_step_keeps_processes_in_step(tiny_world, tiny_pairs, tmp_path, loss, distributed):
    """9 records, global batch 8: the second step holds 1 record, which would leave one process without a
    micro-batch while the other waits in a collective (KTO's all-reduced reference point, FSDP's all-gathers).
    The short step is filled from the start of the epoch's order, so both processes finish."""
    pairs = [json.loads(line) for line in tiny_pairs.read_text().splitlines()[:9]]
    if loss == "kto":  # unpaired rows: 9 of them (pairs would give KTO an even number)
        pairs = [{"prompt": p["prompt"], "completion": p["chosen" if i % 2 else "rejected"], "label": bool(i % 2)}
                 for i, p in enumerate(pairs)]
    data = tmp_path / "nine.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = {"recipe": "preference", "loss": loss, "model": {"path": str(tiny_world / "base"), "dtype": "float64"},
              "data": {"path": str(data), "max_length": 128, "max_prompt_length": 32},
              "optim": {"lr": 1e-3}, "epochs": 1, "log_steps": 1, "progress": False}
    run_train(config, tmp_path / "run", "--num-processes", "2", "batch_size=4", f"distributed={distributed}")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
