"""A run started in an ``output_dir`` that already holds one: resume it, say it is finished, or refuse.

Resuming is only exact when the run goes on with the settings it was trained with, so before anything loads the
training-relevant settings saved with the run (``config.json`` beside the checkpoint's ``checkpoints/`` folder,
written by the loop) are compared with the new ones:

- Settings that do not change the trained weights (:data:`NEUTRAL`: progress, logging, saving, evaluation, where
  things go) may change freely; ``max_steps`` and ``epochs`` may grow (training continues to the new end).
- Any other difference refuses the run with one line listing what differs (``key: old -> new``) and how to go on.
- A run that is finished (its last checkpoint is its final step, ``model/`` and ``summary.json`` are there) with the
  same settings is not trained or written again: the existing result is returned.

``resume=never`` over an earlier run does not mix the two: the earlier run's checkpoints, model and logs are moved
into ``output_dir/earlier-runs/<n>/`` first (nothing is deleted), and the new run starts at step 0.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from alignkit.config import ConfigError, TrainConfig, to_dict
from alignkit.engine.checkpoint import LOOP_OUTPUTS, list_checkpoints

# top-level keys and sections' keys whose value does not change what is trained
NEUTRAL = frozenset({"progress", "log_steps", "save_steps", "save_total_limit", "output_dir", "resume", "report_to",
                     "eval_steps", "data.eval_path", "online.eval_every", "online.eval_prompts",
                     "online.eval_samples", "online.gold", "reference.cache_dir", "rows_per_forward", "pack",
                     "gradient_checkpointing"})
GROWABLE = ("max_steps", "epochs")  # may grow: training continues
SHOWN = 3  # differences named in the refusal before "and N more"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted key -> value (loss_params' entries stay one value: they are the loss's)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "loss_params" and not prefix:
            flat.update(flatten(value, key + "."))
        else:
            flat[prefix + key] = value
    return flat


def differences(saved: dict[str, Any], new: dict[str, Any],
                relevant: Callable[[str], bool] = lambda key: True) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every training-relevant setting that differs, in key order. A larger ``max_steps`` or
    ``epochs`` is not a difference (nor an ``epochs`` change while ``max_steps`` decides the length). Not compared:
    settings ``relevant`` rules out (those only other recipes read), and settings the saved run does not have (added
    to alignkit after it was trained) while the new run leaves them at their default."""
    old_flat, new_flat = flatten(saved), flatten(new)
    defaults = flatten(json.loads(json.dumps(to_dict(TrainConfig()))))
    found = []
    for key in sorted(set(old_flat) | set(new_flat)):
        old, value = old_flat.get(key), new_flat.get(key)
        if key in NEUTRAL or old == value or not relevant(key):
            continue
        if key not in old_flat and value == defaults.get(key):
            continue
        if key in GROWABLE and old is not None and value is not None and value >= old:
            continue
        if key == "epochs" and old_flat.get("max_steps") is not None and new_flat.get("max_steps") is not None:
            continue
        found.append((key, old, value))
    return found


def describe(found: Sequence[tuple[str, Any, Any]]) -> str:
    shown = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in found[:SHOWN])
    return shown + (f" and {len(found) - SHOWN} more" if len(found) > SHOWN else "")


def run_of(checkpoint: Path) -> Path:
    """The output_dir a checkpoint (``<output_dir>/checkpoints/step-N``) belongs to."""
    return checkpoint.parent.parent


def check_resume(config: dict[str, Any], checkpoint: Path, relevant: Callable[[str], bool] = lambda key: True) -> None:
    """Refuse (ConfigError, one line) to resume ``checkpoint`` with settings that differ from its run's (those
    ``relevant`` keeps: see :func:`differences`)."""
    saved_file = run_of(checkpoint) / "config.json"
    if not saved_file.exists():
        return  # nothing to compare with (a run from before config.json was written)
    found = differences(json.loads(saved_file.read_text()), config, relevant)
    if found:
        raise ConfigError(
            f"{config['output_dir']}: the run in {run_of(checkpoint)} was trained with other settings "
            f"({describe(found)}); resuming would mix them. Use another output_dir, or resume=never to start fresh "
            "there (the earlier run is moved to earlier-runs/)")


def finished_run(config: dict[str, Any], checkpoint: Path) -> dict[str, Any] | None:
    """The summary of the run in output_dir when ``checkpoint`` is its final step and its model and summary are
    saved (and the new settings do not ask for more steps), else None."""
    output_dir = Path(config["output_dir"])
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    summary_file = output_dir / "summary.json"
    if run_of(checkpoint) != output_dir or state.get("step") != state.get("total_steps"):
        return None
    if not (output_dir / "model").is_dir() or not summary_file.exists():
        return None
    saved = flatten(json.loads((output_dir / "config.json").read_text()))
    new = flatten(config)
    if any(saved.get(key) != new.get(key) for key in GROWABLE if key != "epochs" or new.get("max_steps") is None):
        return None  # a longer run asked for: train on
    return json.loads(summary_file.read_text())


def move_earlier_run(output_dir: str | Path, outputs: Sequence[str] = ()) -> Path | None:
    """``resume=never``: move an earlier run's checkpoints, model and logs (and ``outputs``, the recipes' files)
    into ``output_dir/earlier-runs/<n>/``, so that the new run neither mixes with it nor deletes it. Returns where
    it went (None: nothing there)."""
    root = Path(output_dir)
    names = ["checkpoints", "model", "tensorboard", *LOOP_OUTPUTS, *outputs]
    present = [name for name in names if (root / name).exists()]
    if not list_checkpoints(root) and not (root / "model").exists():
        return None
    number = 1
    while (root / "earlier-runs" / str(number)).exists():
        number += 1
    target = root / "earlier-runs" / str(number)
    target.mkdir(parents=True)
    for name in present:
        os.replace(root / name, target / name)
    return target
