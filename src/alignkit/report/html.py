"""Self-contained HTML pages built from escaped primitives (no evaluation logic: the caller brings the rows;
:func:`alignkit.eval.evaluate.render_html` composes the evaluation report from them).

Safe by construction: every piece of text that comes from a model, a prompt, a file path or a judge goes through
:func:`html.escape` (quotes included), so ``<script>`` in a response is shown as text; the page loads nothing
from outside (plots are embedded as base64 ``data:`` URIs, the style is inline) and its Content-Security-Policy
forbids scripts altogether, as a second line of defence.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Sequence

from alignkit.utils.io import write_text

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f3f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; margin: 0; font-size: 0.95em; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.meta { color: #555; }
"""


def esc(value: Any) -> str:
    """Text for HTML: ``html.escape`` with quotes (the only way model text enters the page)."""
    return html.escape(str(value), quote=True)


def _cell(value: Any, floatfmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "<td></td>"
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return f'<td class="num">{esc(format(float(value), floatfmt))}</td>'
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return f'<td class="num">{esc(value)}</td>'
    return f"<td>{esc(value)}</td>"


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An escaped HTML table of ``rows`` (columns: every key, first-seen order); numbers right-aligned."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    if not cols:
        return ""
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in cols) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def embed_png(path: str | Path, alt: str) -> str:
    """An ``<img>`` whose source is the PNG itself, base64-encoded (no external file or request)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def examples_html(examples: Sequence[dict[str, Any]]) -> str:
    """Numbered examples, each a table of ``name -> text`` rows (text escaped, whitespace kept)."""
    parts = []
    for i, example in enumerate(examples, 1):
        rows = "".join(f"<tr><th>{esc(name)}</th><td><pre>{esc(text)}</pre></td></tr>"
                       for name, text in example.items())
        parts.append(f"<h3>Example {i}</h3><table>{rows}</table>")
    return "".join(parts)


def filter_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], key: str, name: str = "filter",
                 pre: Sequence[str] = ()) -> str:
    """An escaped table of ``rows`` with a filter over the values of column ``key``: one radio button per value
    (and "all") hides the other rows with CSS alone, since the page runs no scripts (:data:`CSP`). Columns in
    ``pre`` keep their whitespace (model text). ``name`` tells two filtered tables on one page apart."""
    values = list(dict.fromkeys(str(row.get(key)) for row in rows))
    tag = "".join(c if c.isalnum() else "-" for c in name)
    buttons, css = [f'<input type="radio" name="{tag}" id="{tag}-all" checked><label for="{tag}-all">all</label>'], []
    for i, value in enumerate(values):
        buttons.append(f'<input type="radio" name="{tag}" id="{tag}-{i}"><label for="{tag}-{i}">{esc(value)}</label>')
        css.append(f"#{tag}-{i}:checked ~ table tbody tr:not(.{tag}-{i}) {{ display: none; }}")
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        f'<tr class="{tag}-{values.index(str(row.get(key)))}">'
        + "".join(f"<td><pre>{esc(row.get(c, ''))}</pre></td>" if c in pre else _cell(row.get(c)) for c in columns)
        + "</tr>" for row in rows)
    return (f'<div class="filtered"><style>{" ".join(css)}</style>{" ".join(buttons)}'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def heading(text: str, level: int = 2) -> str:
    """An escaped ``<hN>`` heading."""
    return f"<h{level}>{esc(text)}</h{level}>"


def paragraph(text: str, css_class: str | None = None) -> str:
    """An escaped ``<p>`` (optionally with a class)."""
    attribute = f' class="{esc(css_class)}"' if css_class else ""
    return f"<p{attribute}>{esc(text)}</p>"


def render_page(title: str, sections: Iterable[str]) -> str:
    """A self-contained page: ``title`` (escaped) and the ``sections`` (HTML built with the helpers above,
    in order), under the strict Content-Security-Policy and the inline style."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def write_page(out_path: str | Path, page: str) -> Path:
    """Write a page (:func:`render_page`) to ``out_path`` atomically; returns the path."""
    out = Path(out_path)
    write_text(out, page)
    return out
