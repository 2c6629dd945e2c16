"""Checkpoints: weights via ``save_pretrained`` (safetensors) plus optimizer, scheduler, RNG and trainer
state, written into a temporary directory and renamed into place, so a crash never leaves half a checkpoint.

An optimizer state partitioned over processes (DeepSpeed ZeRO) is saved as one shard per process,
``optimizer/rank-00000.pt`` ..., beside ``optimizer.pt`` (which then says how it was partitioned). Every process
first writes its shard (atomically) into a hidden staging directory, ``checkpoints/.step-0000010.shards``; after a
barrier the main process moves them into the checkpoint's temporary directory, which is renamed into place only
when all of them are there. A checkpoint is thus complete, shards included, or not there at all.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from alignkit.utils.io import atomic_dir, atomic_file

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:07d}"


def shard_name(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def shard_staging_dir(output_dir: str | Path, step: int) -> Path:
    """Where the processes put their optimizer shards before the main process writes the checkpoint (a hidden
    name, never taken for a checkpoint)."""
    return Path(output_dir) / "checkpoints" / f".step-{step:07d}.shards"


def stage_optimizer_shard(output_dir: str | Path, step: int, rank: int, shard: dict[str, Any]) -> None:
    """Every process: write its optimizer shard for the checkpoint of ``step`` (atomically)."""
    with atomic_file(shard_staging_dir(output_dir, step) / shard_name(rank), "wb") as fh:
        torch.save(shard, fh)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with a trainer_state.json), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if CHECKPOINT_RE.match(p.name) and (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def find_resume_checkpoint(output_dir: str | Path, resume: str) -> Path | None:
    """``auto``: the latest complete checkpoint if any; ``never``: None; otherwise the given directory."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(f"resume: {path} is not a complete alignkit checkpoint (no trainer_state.json)")
    return path


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, step: int, *, model: Any, tokenizer: Any, optimizer_state: dict[str, Any],
                    scheduler: Any, trainer_state: dict[str, Any], keep: int,
                    objective_state: dict[str, Any] | None = None,
                    model_state: dict[str, torch.Tensor] | None = None, shards: int = 0) -> Path:
    """``model_state``: full weights to save instead of the model's own (FSDP and ZeRO-3 gather them).
    ``shards``: the number of optimizer shards the processes staged (:func:`stage_optimizer_shard`), moved into the
    checkpoint; a missing one fails the save, leaving no checkpoint."""
    target = checkpoint_dir(output_dir, step)
    staging = shard_staging_dir(output_dir, step)
    with atomic_dir(target) as tmp:
        if shards:
            (tmp / "optimizer").mkdir()
            for rank in range(shards):
                os.replace(staging / shard_name(rank), tmp / "optimizer" / shard_name(rank))
        model.save_pretrained(tmp / "model", safe_serialization=True,
                              **({"state_dict": model_state} if model_state is not None else {}))
        tokenizer.save_pretrained(tmp / "model")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        torch.save(objective_state or {}, tmp / "objective.pt")  # running loss state, trainable loss modules
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    shutil.rmtree(staging, ignore_errors=True)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_training_state(path: Path, load_optimizer: Callable[[dict[str, Any], Path | None], None],
                        scheduler: Any, rank: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore optimizer (through ``load_optimizer(state, shard)``; ``shard`` is the file of process ``rank``'s
    optimizer shard when the checkpoint has shards, else None), scheduler and RNG state (weights are loaded with
    the model); return the trainer state and the objective's state."""
    shard = path / "optimizer" / shard_name(rank)
    load_optimizer(torch.load(path / "optimizer.pt", weights_only=True), shard if shard.exists() else None)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    objective = torch.load(path / "objective.pt", weights_only=True) if (path / "objective.pt").exists() else {}
    return json.loads((path / "trainer_state.json").read_text()), objective
