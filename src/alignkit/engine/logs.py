"""Where a run's logged rows go besides metrics.jsonl: the console off a terminal, and the trackers the user chose.

On a terminal the loop shows a progress bar; off one (stdout or stderr redirected to a file or a pipe) a bar would
write carriage-return redraws into the file, so it prints one plain line per logged row instead
(:func:`metric_line`). ``report_to`` (tensorboard, wandb, mlflow; default none) sends the rows through Accelerate's
trackers; nothing is sent anywhere the user did not ask for.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

# report_to name -> (the module it needs, what to install)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard (pip install 'alignkit[tensorboard]')"),
            "wandb": ("wandb", "wandb (pip install 'alignkit[wandb]')"),
            "mlflow": ("mlflow", "mlflow (pip install 'alignkit[mlflow]')")}


def on_terminal() -> bool:
    """Whether a progress bar can redraw in place: stdout and stderr (where tqdm writes) are both terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def metric_line(row: dict[str, Any], total_steps: int, steps_per_second: float) -> str:
    """One compact line for a logged row: the loss first, then the other metrics in the row's order, the learning
    rate last, with a few significant digits:
    ``[alignkit] step 20/60 loss 0.6012 rewards/accuracy 0.81 lr 4.1e-05 (3.2 steps/s)``."""
    values = [(k, v) for k, v in row.items() if k not in ("step", "lr") and isinstance(v, (int, float))]
    values.sort(key=lambda kv: kv[0] != "loss")
    parts = [f"{key} {value:.4g}" for key, value in values]
    if isinstance(row.get("lr"), (int, float)):
        parts.append(f"lr {row['lr']:.2g}")
    return f"[alignkit] step {row['step']}/{total_steps} {' '.join(parts)} ({steps_per_second:.3g} steps/s)"


def check_report_to(report_to: list[str]) -> None:
    """ConfigError (one line) for a tracker name that is not known or whose package is not installed."""
    from alignkit.config import ConfigError
    from alignkit.utils.names import did_you_mean

    for name in report_to:
        if name == "none":
            continue
        if name not in TRACKERS:
            raise ConfigError(f"report_to: {name!r} is not one of {', '.join(TRACKERS)} (or none)"
                              f"{did_you_mean(name, TRACKERS)}")
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to: {name} needs {install}, which is not installed")


def make_tracker(name: str, output_dir: Path) -> Any:
    """Accelerate's tracker for ``name``, writing under ``output_dir`` where it writes files (tensorboard/,
    mlruns/; wandb: its own dir setting, offline mode through WANDB_MODE=offline)."""
    from accelerate import tracking

    run_name = output_dir.name
    if name == "tensorboard":
        return tracking.TensorBoardTracker(run_name, output_dir / "tensorboard")
    if name == "wandb":
        return tracking.WandBTracker(run_name, dir=str(output_dir))
    return tracking.MLflowTracker(run_name, logging_dir=str(output_dir / "mlruns"))


def destination(name: str, output_dir: Path) -> str:
    """Where a tracker's logs went, for the closing line."""
    return {"tensorboard": f"tensorboard {output_dir / 'tensorboard'}", "wandb": "wandb",
            "mlflow": f"mlflow {output_dir / 'mlruns'}"}[name]


class Trackers:
    """The chosen trackers of the main process: the run's settings once, then every logged row."""

    def __init__(self, names: list[str], output_dir: Path, settings: dict[str, Any]):
        self.names = list(names)
        self.trackers = [make_tracker(name, output_dir) for name in names]
        self.where = [destination(name, output_dir) for name in names]
        for tracker in self.trackers:
            tracker.store_init_configuration(settings)

    def log(self, row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(values, step=row["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
