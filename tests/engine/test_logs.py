"""Logs: plain metric lines off a terminal (no progress-bar redraws), and report_to's trackers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from shared.runs import dpo_config

from alignkit.config import ConfigError
from alignkit.engine.logs import check_report_to, metric_line


def test_metric_line_is_compact():
    row = {"step": 20, "lr": 4.1234e-05, "rewards/accuracy": 0.8125, "loss": 0.601234567, "grad_norm": 12.3456}
    assert metric_line(row, 60, 3.21) == ("[alignkit] step 20/60 loss 0.6012 rewards/accuracy 0.8125 grad_norm 12.35 "
                                          "lr 4.1e-05 (3.21 steps/s)")


def train_cli(tiny_world, tiny_pairs, tmp_path, *extra):
    config = dict(recipe="preference", model={"path": str(tiny_world / "base")},
                  data={"path": str(tiny_pairs), "max_length": 128, "max_prompt_length": 32}, batch_size=8,
                  max_steps=4, log_steps=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    script = Path(sys.executable).with_name("alignkit")
    result = subprocess.run([str(script), "train", "--config", str(path), f"output_dir={tmp_path / 'run'}", *extra],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_off_a_terminal_metric_lines_replace_the_bar(tiny_world, tiny_pairs, tmp_path):
    result = train_cli(tiny_world, tiny_pairs, tmp_path)
    assert "\r" not in result.stdout and "\r" not in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[alignkit] step ")]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"]
    assert all(" loss " in line and " lr " in line and line.endswith("steps/s)") for line in lines)
    assert f"logs: {tmp_path / 'run' / 'metrics.jsonl'}" in result.stdout  # the closing line says where


def test_progress_false_prints_no_step_lines(tiny_world, tiny_pairs, tmp_path):
    result = train_cli(tiny_world, tiny_pairs, tmp_path, "progress=false")
    assert "[alignkit] step " not in result.stdout and "\r" not in result.stderr
    assert "[alignkit] trained 4 steps" in result.stdout


def test_report_to_names_what_to_install():
    with pytest.raises(ConfigError, match=r"report_to: 'tensorbord' is not one of tensorboard, wandb, mlflow"):
        check_report_to(["tensorbord"])
    check_report_to(["none"])
    for name in ("tensorboard", "wandb", "mlflow"):
        import importlib.util

        if importlib.util.find_spec(name) is None:
            expected = rf"report_to: {name} needs {name} \(pip install 'alignkit\[{name}\]'\)"
            with pytest.raises(ConfigError, match=expected):
                check_report_to([name])


def test_report_to_routes_every_row_to_the_trackers(tiny_world, tiny_pairs, tmp_path, monkeypatch):
    import alignkit.engine.logs as logs
    import alignkit.recipes.runner as runner
    from alignkit.recipes import train

    class FakeTracker:
        def __init__(self):
            self.settings, self.rows, self.finished = None, [], False

        def store_init_configuration(self, settings):
            self.settings = settings

        def log(self, values, step):
            self.rows.append({"step": step, **values})

        def finish(self):
            self.finished = True

    made = {}
    monkeypatch.setattr(runner, "check_report_to", lambda names: None)
    monkeypatch.setattr(logs, "make_tracker", lambda name, out: made.setdefault(name, FakeTracker()))
    result = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "run", max_steps=3, report_to=["tensorboard"]))
    tracker = made["tensorboard"]
    assert tracker.rows == result.metrics and tracker.finished
    assert tracker.settings["report_to"] == ["tensorboard"]
    assert result.logs == [str(tmp_path / "run" / "metrics.jsonl"), f"tensorboard {tmp_path / 'run' / 'tensorboard'}"]
    assert set(made) == {"tensorboard"}  # and nothing by default:
    made.clear()
    train(dpo_config(tiny_world, tiny_pairs, tmp_path / "plain", max_steps=1))
    assert made == {} and not (tmp_path / "plain" / "tensorboard").exists()
