"""Prompt files for sampling (online training, evaluation, ``alignkit generate``).

A JSONL file of ``{"prompt": ...}`` rows (text or chat messages); any other keys of a row are kept as that prompt's
metadata (e.g. ``constraints`` for verifier rewards). Any preference data file alignkit reads also works: its
distinct prompts, in order. Errors name ``file:line`` and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.records import DataError, Text


@dataclass
class PromptRow:
    prompt: Text
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"


def load_prompt_rows(path: str | Path) -> list[PromptRow]:
    """Every prompt of ``path`` with its metadata and ``file:line`` (see the module docstring)."""
    path = Path(path)
    if path.suffix != ".jsonl":
        from alignkit.data.formats import load_records

        records, _ = load_records(path)
        seen: dict[str, PromptRow] = {}
        for record in records:
            seen.setdefault(json.dumps(record.prompt, sort_keys=True), PromptRow(record.prompt, {}, record.source))
        return list(seen.values())
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON: {exc}", source=f"{path}:{n}") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise DataError("expected an object with a 'prompt'", source=f"{path}:{n}", field="prompt")
        if not isinstance(row["prompt"], (str, list)) or not row["prompt"]:
            raise DataError("the prompt must be non-empty text or chat messages", source=f"{path}:{n}", field="prompt")
        rows.append(PromptRow(row["prompt"], {k: v for k, v in row.items() if k != "prompt"}, f"{path}:{n}"))
    if not rows:
        raise DataError("no prompts", source=str(path))
    return rows


def load_prompts(path: str | Path) -> list[Text]:
    """Just the prompts of :func:`load_prompt_rows`."""
    return [row.prompt for row in load_prompt_rows(path)]
