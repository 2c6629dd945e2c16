"""Markdown tables and confidence-interval strings for evaluation reports."""

from __future__ import annotations

import numbers
from typing import Any, Iterable


def format_ci(rate: float, low: float, high: float, fmt: str = ".3f") -> str:
    """``"0.712 [0.661, 0.759]"``: a point estimate followed by its interval."""
    return f"{rate:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


TEXT_ESCAPES = (("\\", "\\\\"),  # first: the backslashes added later stay single
                ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"),  # no HTML: <img onerror=...> shows as text
                ("](", "\\]("))  # no inline link or image: [x](url), ![x](url)
CELL_ESCAPES = (("|", "\\|"),  # no new cell
                ("\r\n", " "), ("\n", " "), ("\r", " "))  # no new row


def _replace_all(text: str, escapes: tuple[tuple[str, str], ...]) -> str:
    for char, escaped in escapes:
        text = text.replace(char, escaped)
    return text


def markdown_escape(text: str) -> str:
    """``text`` shown as itself inside a Markdown table cell or heading, whoever wrote it (a user, a model):
    HTML special characters become entities, ``\\`` and ``|`` are backslash-escaped, ``](`` cannot open a link
    or an image, and line breaks become spaces."""
    return _replace_all(_replace_all(text, TEXT_ESCAPES), CELL_ESCAPES)


def _escape_cell(text: str, markdown: bool) -> str:
    """Cell text: escaped as text (:func:`markdown_escape`), or, for Markdown written on purpose (``markdown``),
    only kept inside its cell (``|`` escaped, line breaks as spaces)."""
    return _replace_all(text, CELL_ESCAPES) if markdown else markdown_escape(text)


def format_cell(value: Any, floatfmt: str = ".3f", markdown: bool = False) -> str:
    """One cell: ``None`` -> ``""``, floats with ``floatfmt``, anything else via ``str``; escaped
    (see :func:`_escape_cell`)."""
    if value is None:
        return ""
    if _is_number(value) and not isinstance(value, numbers.Integral):
        return format(float(value), floatfmt)
    return _escape_cell(str(value), markdown)


def _default_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Every key that occurs in ``rows``, in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _is_numeric_column(rows: list[dict[str, Any]], column: str) -> bool:
    present = [row[column] for row in rows if row.get(column) is not None]
    return bool(present) and all(_is_number(v) for v in present)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, floatfmt: str = ".3f", *,
                   markdown: bool = False) -> str:
    """Render ``rows`` as a GitHub-flavoured Markdown table (no trailing newline).

    ``columns`` defaults to every key in ``rows`` in first-seen order; a row that lacks a
    column, or holds ``None``, gets an empty cell. Floats use ``floatfmt``. Headers and cells are text, shown as
    written (:func:`markdown_escape`: no HTML, links or broken rows from a model's output or a user's name);
    ``markdown=True`` is for cells that hold Markdown on purpose (code spans in the methods table): only ``|`` and
    line breaks are escaped then. Columns whose values are all numbers are right-aligned.
    Returns ``""`` when there are neither rows nor columns.
    """
    cols = list(columns) if columns is not None else _default_columns(rows)
    if not cols:
        return ""
    header = "| " + " | ".join(_escape_cell(str(c), markdown) for c in cols) + " |"
    rule = "| " + " | ".join("---:" if _is_numeric_column(rows, c) else "---" for c in cols) + " |"
    body = ["| " + " | ".join(format_cell(row.get(c), floatfmt, markdown) for c in cols) + " |" for row in rows]
    return "\n".join([header, rule, *body])
