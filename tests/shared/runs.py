"""Short training runs on the tiny world: a DPO config, straight vs interrupted-and-resumed runs, weight
comparisons, and ``alignkit train`` as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignkit.engine.checkpoint import list_checkpoints
from alignkit.recipes import load_config, train


def dpo_config(tiny_world, tiny_pairs, out, **values):
    settings = dict(recipe="preference", loss="dpo", model={"path": str(tiny_world / "base")},
                    data={"path": str(tiny_pairs), "max_length": 128, "max_prompt_length": 32},
                    optim={"lr": 1e-3, "warmup_ratio": 0.2}, batch_size=8, max_steps=6, output_dir=str(out),
                    progress=False, log_steps=1, resume="never")
    settings.update(values)
    return load_config(None, **settings)


def weights(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a, b, atol):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=atol, rtol=0), key


class Interrupted(Exception):
    pass


def straight_and_resumed(tiny_world, tiny_pairs, tmp_path, crash_step=4, **settings):
    """Train once straight through (``a``), and once interrupted after ``crash_step`` then resumed (``b``)."""
    settings.setdefault("save_steps", 3)
    straight = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "a", **settings))

    def crash(step, model):
        if step == crash_step:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(dpo_config(tiny_world, tiny_pairs, tmp_path / "b", **settings), on_step=crash)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == [f"step-{settings['save_steps']:07d}"]
    resumed = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "b", **dict(settings, resume="auto")))
    return straight, resumed


def run_train(config: dict, out: Path, *extra: str) -> None:
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    script = Path(sys.executable).with_name("alignkit")
    result = subprocess.run([str(script), "train", "--config", str(path), f"output_dir={out}", *extra],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
