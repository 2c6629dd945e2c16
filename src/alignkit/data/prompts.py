"""Prompt files for sampling (online training, evaluation, ``alignkit generate``).

A JSONL file of ``{"prompt": ...}`` rows (text or chat messages); any other keys of a row are kept as that prompt's
metadata (e.g. ``constraints`` for verifier rewards). Any preference data file alignkit reads also works: its
distinct prompts, in order. Prompts are read and checked exactly as training data's are (one reader,
:mod:`alignkit.data.jsonio`; one validator, :mod:`alignkit.data.validate`); errors name ``file:line`` and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.jsonio import canonical_json, data_suffix, jsonl_rows, read_bytes
from alignkit.data.records import DataError, DataReport, OnInvalid, Text
from alignkit.data.validate import parse_prompt, type_name
from alignkit.utils.io import warn


@dataclass
class PromptRow:
    prompt: Text
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"


def load_prompt_rows(path: str | Path, on_invalid: OnInvalid = "error") -> list[PromptRow]:
    """Every prompt of ``path`` with its metadata and ``file:line`` (see the module docstring).

    ``on_invalid="skip"`` (``data.on_invalid``) leaves out invalid rows as training data's loader does; the prompts
    have no data report, so what was skipped is one warning line (count per reason, first places)."""
    path = Path(path)
    if data_suffix(path) != ".jsonl":
        return _prompts_of_data_file(path, on_invalid)
    report = DataReport()
    skip = None if on_invalid == "error" else (lambda error: report.drop(error.reason, error.source or str(path)))
    rows = []
    for source, value in jsonl_rows(read_bytes(path), str(path), skip):
        try:
            rows.append(_prompt_row(value, source))
        except DataError as error:
            if skip is None:
                raise
            skip(error)
    if not rows:
        raise DataError("no prompts" + (f" left ({report.summary()})" if report.dropped else ""), source=str(path))
    report.loaded = len(rows)
    _warn_skipped(path, report)
    return rows


def _warn_skipped(path: Path, report: DataReport) -> None:
    if report.dropped:
        warn(f"{path}: prompts: {report.summary()}")


def _prompt_row(value: Any, source: str) -> PromptRow:
    """One ``{"prompt": ...}`` row, its prompt checked as training data's prompts are."""
    if not isinstance(value, dict):
        raise DataError(f"expected an object with a 'prompt' per row, got {type_name(value)}", source=source)
    if "prompt" not in value:
        raise DataError("expected an object with a 'prompt'", source=source, field="prompt")
    prompt = parse_prompt(value["prompt"], "prompt", source)
    return PromptRow(prompt, {k: v for k, v in value.items() if k != "prompt"}, source)


def _prompts_of_data_file(path: Path, on_invalid: OnInvalid) -> list[PromptRow]:
    """The distinct prompts of a preference data file, in order."""
    from alignkit.data.formats import load_records

    records, report = load_records(path, on_invalid=on_invalid)
    if any(reason.startswith("invalid:") for reason in report.dropped):
        _warn_skipped(path, report)
    seen: dict[str, PromptRow] = {}
    for record in records:
        seen.setdefault(canonical_json(record.prompt), PromptRow(record.prompt, {}, record.source))
    return list(seen.values())


def load_prompts(path: str | Path) -> list[Text]:
    """Just the prompts of :func:`load_prompt_rows`."""
    return [row.prompt for row in load_prompt_rows(path)]
