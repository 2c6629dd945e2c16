"""Data rows for tests: chat messages, JSON / JSONL files, and sandbox data of every shape."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from alignkit.apps.sandbox_build import SandboxSpec, label_samples
from alignkit.apps.sandbox_build import user as sandbox_user
from alignkit.sandbox import world


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows: list[Any]) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def sandbox_rows(n: int, seed: int, noise: float, k: int = 2) -> dict[str, list[dict]]:
    """Sandbox data of every shape from ``k`` Writer responses per prompt (no SFT model needed)."""
    rng = random.Random(seed)
    writer = world.Writer(rng)
    prompts = [sandbox_user(world.make_prompt(rng)) for _ in range(n)]
    texts = [[writer.response(p[0]["content"]) for _ in range(k)] for p in prompts]
    return label_samples(prompts, texts, SandboxSpec(seed=seed, label_noise=noise))
