"""Report figures: training curves, reward-vs-KL frontiers and grouped bar charts.

Figures are drawn with the non-interactive Agg backend, always closed after drawing, and
written atomically (rendered into memory, then moved into place in one rename).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402

from alignkit.utils.io import atomic_file  # noqa: E402

MAX_DEFAULT_KEYS = 8
_INDEX_KEYS = {"step", "epoch", "global_step", "iteration", "iter"}
_TIME_WORDS = ("time", "elapsed", "wall", "duration", "second", "clock")
_TIME_SUFFIXES = ("_s", "_sec", "_secs", "_ms")

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@contextlib.contextmanager
def _figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> Iterator[tuple[Figure, Any]]:
    """``plt.subplots`` whose figure is closed on exit, even when drawing fails."""
    fig, axes = plt.subplots(nrows, ncols, **kwargs)
    try:
        yield fig, axes
    finally:
        plt.close(fig)


def _save_png(fig: Figure, out_png: PathLike, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG in memory, then write the bytes atomically to ``out_png``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    out = Path(out_png)
    with atomic_file(out, "wb") as fh:
        fh.write(buf.getvalue())
    return out


# --------------------------------------------------------------------------- metrics


def read_metrics(path: PathLike) -> list[dict[str, Any]]:
    """Read a metrics JSONL file: one JSON object with at least ``"step"`` per line.

    Blank lines are allowed; any other line that is not a JSON object with a ``step``
    raises ``ValueError`` naming ``path:line``.
    """
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            if "step" not in row:
                raise ValueError(f"{path}:{lineno}: missing 'step'")
            rows.append(row)
    return rows


def _is_time_like(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _TIME_WORDS) or lowered.endswith(_TIME_SUFFIXES)


def default_curve_keys(metrics: Iterable[dict[str, Any]], limit: int = MAX_DEFAULT_KEYS) -> list[str]:
    """Numeric keys in first-seen order, minus step/epoch-like and time-like keys, at most ``limit``."""
    keys: dict[str, None] = {}
    for row in metrics:
        for key, value in row.items():
            if key in keys or key in _INDEX_KEYS or _is_time_like(key):
                continue
            if _is_number(value):
                keys[key] = None
    return list(keys)[:limit]


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the rows that carry a numeric ``key``, sorted by step."""
    points = sorted((float(row["step"]), float(row[key])) for row in metrics if _is_number(row.get(key)))
    return [p[0] for p in points], [p[1] for p in points]


def _check_steps(metrics: list[dict[str, Any]]) -> None:
    for i, row in enumerate(metrics):
        if not _is_number(row.get("step")):
            raise ValueError(f"metrics row {i} has no numeric 'step': {row!r}")


def plot_training_curves(
    metrics: list[dict[str, Any]] | PathLike,
    out_png: PathLike,
    keys: list[str] | None = None,
    title: str = "",
) -> Path:
    """One subplot per metric against ``step``; returns the written PNG path.

    ``metrics`` is a list of rows or the path of a metrics JSONL file. ``keys`` defaults to
    :func:`default_curve_keys`. A key missing from some rows (e.g. eval-only metrics) is
    drawn from the rows that have it; a key found in no row gets an empty "no data" panel.
    """
    rows = read_metrics(metrics) if isinstance(metrics, (str, os.PathLike)) else list(metrics)
    _check_steps(rows)
    keys = default_curve_keys(rows) if keys is None else list(keys)
    if not keys:
        raise ValueError("no numeric metrics to plot")

    ncols = 1 if len(keys) == 1 else 2
    nrows = math.ceil(len(keys) / ncols)
    with _figure(nrows, ncols, figsize=(5.5 * ncols, 3.2 * nrows), squeeze=False) as (fig, axes):
        flat = axes.ravel()
        for ax, key in zip(flat, keys):
            _draw_curve(ax, *_series(rows, key), key)
        for ax in flat[len(keys):]:
            ax.set_visible(False)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return _save_png(fig, out_png)


def _draw_curve(ax: Any, steps: list[float], values: list[float], key: str) -> None:
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if not steps:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    ax.plot(steps, values, marker="o" if len(steps) <= 50 else None, markersize=3)


# --------------------------------------------------------------------------- reward vs KL


def _group_points(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Points grouped by ``name`` (first-seen order), each group sorted by ``kl``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for i, point in enumerate(points):
        missing = [k for k in ("name", "kl", "reward") if k not in point]
        if missing:
            raise ValueError(f"point {i} is missing {', '.join(missing)}: {point!r}")
        groups.setdefault(str(point["name"]), []).append(point)
    return {name: sorted(group, key=lambda p: float(p["kl"])) for name, group in groups.items()}


def _draw_error_bars(ax: Any, group: list[dict[str, Any]], color: Any) -> None:
    with_bars = [p for p in group if p.get("reward_low") is not None and p.get("reward_high") is not None]
    if not with_bars:
        return
    kl = [float(p["kl"]) for p in with_bars]
    reward = [float(p["reward"]) for p in with_bars]
    below = [max(0.0, r - float(p["reward_low"])) for r, p in zip(reward, with_bars)]
    above = [max(0.0, float(p["reward_high"]) - r) for r, p in zip(reward, with_bars)]
    ax.errorbar(kl, reward, yerr=[below, above], fmt="none", ecolor=color, capsize=3, alpha=0.8)


def frontier(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reward-KL frontier of points sorted by ``kl``: each point whose reward beats every point of smaller KL
    (the best reward reachable for a KL budget). Joining all points in checkpoint or KL order zigzags with the
    sampling noise of the rewards; the frontier is what a KL budget buys."""
    best, out = -math.inf, []
    for point in group:
        if float(point["reward"]) > best:
            best = float(point["reward"])
            out.append(point)
    return out


def plot_reward_vs_kl(points: list[dict[str, Any]], out_png: PathLike, title: str = "") -> Path:
    """Reward against KL: a marker per point and, per ``name``, a line along its :func:`frontier` (ordered by KL).

    Each point needs ``name``, ``kl`` and ``reward``; ``reward_low``/``reward_high`` add an
    error bar and ``label`` adds a text annotation next to the marker (alternately above and below, on a white
    box, so that neighbouring labels stay readable).
    """
    groups = _group_points(points)
    if not groups:
        raise ValueError("no points to plot")
    with _figure(figsize=(6.5, 4.5)) as (fig, ax):
        for name, group in groups.items():
            _draw_kl_series(ax, name, group)
        ax.set_xlabel("KL(policy || reference)")
        ax.set_ylabel("reward")
        ax.grid(True, alpha=0.3)
        ax.legend()
        if title:
            ax.set_title(title)
        fig.tight_layout()
        return _save_png(fig, out_png)


def _draw_kl_series(ax: Any, name: str, group: list[dict[str, Any]]) -> None:
    kl = [float(p["kl"]) for p in group]
    reward = [float(p["reward"]) for p in group]
    best = frontier(group)
    (line,) = ax.plot([float(p["kl"]) for p in best], [float(p["reward"]) for p in best], "-",
                      label=f"{name} (frontier)")
    ax.plot(kl, reward, "o", color=line.get_color())
    _draw_error_bars(ax, group, line.get_color())
    span = (max(kl) - min(kl)) or 1.0
    near, last = 0, -math.inf
    for x, y, p in zip(kl, reward, group):
        if p.get("label") is None:
            continue
        near = near + 1 if x - last < 0.15 * span else 0   # labels of close points stack: above, below, further
        last = x
        ax.annotate(str(p["label"]), (x, y), textcoords="offset points", fontsize=8,
                    xytext=(6, (8, -14, 22, -28, 36, -42)[near % 6]),
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})


# --------------------------------------------------------------------------- bars


def plot_bars(values: dict[str, dict[str, float]], out_png: PathLike, title: str = "", ylabel: str = "") -> Path:
    """Grouped bar chart: ``values[series][category]``, e.g. ``values[model][objective]``.

    Categories (x axis) are every inner key in first-seen order; each series (legend) gets one
    bar per category it has a value for.
    """
    if not values:
        raise ValueError("no values to plot")
    categories = list(dict.fromkeys(cat for inner in values.values() for cat in inner))
    n_series = len(values)
    width = 0.8 / n_series
    # value labels stand upright above (or below) their bar, so that neighbouring bars' labels never overlap
    with _figure(figsize=(max(5.0, 0.3 * n_series * len(categories) + 2.5), 4.8)) as (fig, ax):
        for i, (series, inner) in enumerate(values.items()):
            offset = (i - (n_series - 1) / 2) * width
            xs = [j + offset for j, cat in enumerate(categories) if cat in inner]
            ys = [float(inner[cat]) for cat in categories if cat in inner]
            bars = ax.bar(xs, ys, width=width, label=str(series))
            ax.bar_label(bars, fmt="%.2f", fontsize=7, rotation=90, padding=2)
        low, high = ax.get_ylim()
        span = high - low
        ax.set_ylim(low - (0.15 * span if low < 0 else 0), high + 0.15 * span)  # room for the upright labels
        ax.set_xticks(range(len(categories)), [str(c) for c in categories])
        ax.axhline(0.0, color="black", linewidth=0.6)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)   # beside the bars, not over them
        if title:
            ax.set_title(title)
        fig.tight_layout()
        return _save_png(fig, out_png)


# --------------------------------------------------------------------------- intervals


def plot_intervals(rows: dict[str, dict[str, tuple[float, float, float]]], out_png: PathLike, title: str = "",
                   xlabel: str = "", reference: float | None = None) -> Path:
    """Point estimates with intervals, one row per label: ``rows[label][series] = (estimate, low, high)``
    (e.g. ``rows[model]["raw"]`` and ``rows[model]["LC"]`` win rates, or Bradley-Terry ratings).

    Series are offset vertically within a row; ``reference`` draws a dashed vertical line (e.g. 0.5).
    """
    if not rows:
        raise ValueError("no intervals to plot")
    labels = list(rows)
    series = list(dict.fromkeys(s for inner in rows.values() for s in inner))
    height = 0.7 / len(series)
    with _figure(figsize=(6.5, max(2.5, 0.6 * len(labels) * len(series) + 1.2))) as (fig, ax):
        for i, name in enumerate(series):
            offset = (i - (len(series) - 1) / 2) * height
            points = [(y + offset, *rows[label][name]) for y, label in enumerate(labels) if name in rows[label]]
            ys, est, low, high = (list(col) for col in zip(*points))
            below = [max(0.0, e - lo) for e, lo in zip(est, low)]
            above = [max(0.0, hi - e) for e, hi in zip(est, high)]
            ax.errorbar(est, ys, xerr=[below, above], fmt="o", capsize=3, label=str(name))
        if reference is not None:
            ax.axvline(reference, color="gray", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(labels)), [str(label) for label in labels])
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
        if xlabel:
            ax.set_xlabel(xlabel)
        if len(series) > 1:
            ax.legend()
        if title:
            ax.set_title(title)
        fig.tight_layout()
        return _save_png(fig, out_png)
