"""Markdown tables and confidence-interval strings for evaluation reports."""

from __future__ import annotations

import numbers
from typing import Any, Iterable


def format_ci(rate: float, low: float, high: float, fmt: str = ".3f") -> str:
    """``"0.712 [0.661, 0.759]"``: a point estimate followed by its interval."""
    return f"{rate:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _escape(text: str) -> str:
    """Make ``text`` safe inside one Markdown table cell."""
    return text.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def format_cell(value: Any, floatfmt: str = ".3f") -> str:
    """One cell: ``None`` -> ``""``, floats with ``floatfmt``, anything else via ``str``; escaped."""
    if value is None:
        return ""
    if _is_number(value) and not isinstance(value, numbers.Integral):
        return format(float(value), floatfmt)
    return _escape(str(value))


def _default_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every key that occurs in ``rows``, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _is_numeric_column(rows: list[dict[str, Any]], column: str) -> bool:
    present = [row[column] for row in rows if row.get(column) is not None]
    return bool(present) and all(_is_number(v) for v in present)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, floatfmt: str = ".3f") -> str:
    """Render ``rows`` as a GitHub-flavoured Markdown table (no trailing newline).

    ``columns`` defaults to every key in ``rows`` in first-seen order; a row that lacks a
    column, or holds ``None``, gets an empty cell. Floats use ``floatfmt``; ``|`` is escaped
    and newlines become spaces. Columns whose values are all numbers are right-aligned.
    Returns ``""`` when there are neither rows nor columns.
    """
    cols = list(columns) if columns is not None else _default_columns(rows)
    if not cols:
        return ""
    header = "| " + " | ".join(_escape(str(c)) for c in cols) + " |"
    rule = "| " + " | ".join("---:" if _is_numeric_column(rows, c) else "---" for c in cols) + " |"
    body = ["| " + " | ".join(format_cell(row.get(c), floatfmt) for c in cols) + " |" for row in rows]
    return "\n".join([header, rule, *body])
