"""Tests for alignkit.report (tables and plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from alignkit.report.plots import (
    default_curve_keys,
    plot_bars,
    plot_reward_vs_kl,
    plot_training_curves,
    read_metrics,
)
from alignkit.report.tables import format_ci, markdown_escape, markdown_table
from alignkit.utils.io import write_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000
    # Only the PNG itself: no temporary files left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert plt.get_fignums() == []


# --------------------------------------------------------------------------- tables


def test_format_ci():
    assert format_ci(0.7123, 0.6612, 0.7589) == "0.712 [0.661, 0.759]"
    assert format_ci(0.5, 0.25, 0.75, fmt=".1f") == "0.5 [0.2, 0.8]"


def test_markdown_table_exact():
    rows = [
        {"model": "dpo|beta=0.1", "win_rate": 0.71234, "n": 200, "note": None},
        {"model": "sft", "win_rate": 0.5, "n": 200, "note": "base\nline"},
        {"model": "ipo", "n": 199, "extra": True},
    ]
    expected = (
        "| model | win_rate | n | note | extra |\n"
        "| --- | ---: | ---: | --- | --- |\n"
        "| dpo\\|beta=0.1 | 0.712 | 200 |  |  |\n"
        "| sft | 0.500 | 200 | base line |  |\n"
        "| ipo |  | 199 |  | True |"
    )
    assert markdown_table(rows) == expected


def test_markdown_table_columns_and_floatfmt():
    rows = [{"a": 1.23456, "b": "x", "c": np.float32(0.5)}]
    assert markdown_table(rows, columns=["c", "a"], floatfmt=".2f") == "| c | a |\n| ---: | ---: |\n| 0.50 | 1.23 |"
    assert markdown_table([{"a": math.nan}]) == "| a |\n| ---: |\n| nan |"


def test_markdown_table_empty():
    assert markdown_table([]) == ""
    assert markdown_table([], columns=["a", "b"]) == "| a | b |\n| --- | --- |"


ATTACK = "<img src=x onerror=alert(1)> & ![pixel](http://example.com/p.png)|a\\|b\r\nnext"
ATTACK_ESCAPED = ("&lt;img src=x onerror=alert(1)&gt; &amp; ![pixel\\](http://example.com/p.png)\\|a\\\\\\|b "
                  "next")


def test_markdown_table_shows_user_and_model_text_as_text():
    """No HTML, no link or image, no new cell or row from a cell's text; headers too."""
    assert markdown_escape(ATTACK) == ATTACK_ESCAPED
    assert markdown_table([{"<b>": ATTACK, "n": 1}]) == (f"| &lt;b&gt; | n |\n| --- | ---: |\n| {ATTACK_ESCAPED} | 1 |")
    assert markdown_table([{"model": "0.5 [0.4, 0.6]"}]) == "| model |\n| --- |\n| 0.5 [0.4, 0.6] |"


def test_markdown_table_of_markdown_keeps_it_in_its_cell():
    cell = "``group_size >= 2`` a|b\nc"
    assert markdown_table([{"m": cell}], markdown=True) == "| m |\n| --- |\n| ``group_size >= 2`` a\\|b c |"


def test_eval_md_escapes_names_and_judge(tmp_path):
    from alignkit.eval.evaluate import write_report

    row = {"kl": {"mean": 0.0}, "length": {"mean": 3.0}}
    report = {"judge": "rm:<script>", "prompts": 2, "judge_mode": "pointwise", "baseline": "base<i>|",
              "models": [{"model": "base<i>|", **row}, {"model": ATTACK, **row}], "examples": []}
    write_report(report, tmp_path, html=False)
    md = (tmp_path / "eval.md").read_text()
    assert "<" not in md and ATTACK_ESCAPED in md
    assert md.startswith("# Evaluation (rm:&lt;script&gt;, 2 prompts)")
    assert "| win rate vs base&lt;i&gt;\\| [95% CI] |" in md
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 4 and len({line.replace("\\|", "").count("|") for line in rows}) == 1


# --------------------------------------------------------------------------- read_metrics


def write_lines(path: Path, lines: list[str]) -> Path:
    write_text(path, "\n".join(lines) + "\n")
    return path


def test_read_metrics_roundtrip(tmp_path):
    rows = [{"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.8, "eval_reward": 0.1}]
    path = write_lines(tmp_path / "metrics.jsonl", [json.dumps(r) for r in rows] + [""])
    assert read_metrics(path) == rows


@pytest.mark.parametrize(
    "bad_line, message",
    [('{"step": 3, "loss":', "invalid JSON"), ("[1, 2]", "expected a JSON object"), ('{"loss": 1.0}', "missing 'step'")],
)
def test_read_metrics_error_names_path_and_line(tmp_path, bad_line, message):
    path = write_lines(tmp_path / "metrics.jsonl", ['{"step": 1, "loss": 1.0}', "", bad_line])
    with pytest.raises(ValueError) as info:
        read_metrics(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


# --------------------------------------------------------------------------- plots


def training_rows() -> list[dict]:
    rows = []
    for step in range(1, 41):
        row = {"step": step, "epoch": step / 40, "loss": 1.0 / step, "lr": 1e-4, "time_s": 0.1 * step,
               "elapsed": step, "tag": "train", "flag": True}
        if step % 10 == 0:
            row["eval_reward"] = 0.1 * step
        rows.append(row)
    return rows


def test_default_curve_keys_skip_index_time_and_non_numeric():
    assert default_curve_keys(training_rows()) == ["loss", "lr", "eval_reward"]
    many = [{"step": 0, **{f"m{i}": float(i) for i in range(12)}}]
    assert default_curve_keys(many) == [f"m{i}" for i in range(8)]


def test_plot_training_curves_from_rows(tmp_path):
    out = tmp_path / "plots" / "curves.png"
    assert plot_training_curves(training_rows(), out, title="run") == out
    assert_png(out)


def test_plot_training_curves_from_path_with_explicit_and_missing_keys(tmp_path):
    metrics = write_lines(tmp_path / "m" / "metrics.jsonl", [json.dumps(r) for r in training_rows()])
    out = tmp_path / "out" / "curves.png"
    plot_training_curves(metrics, out, keys=["eval_reward", "not_logged_yet", "loss"])
    assert_png(out)


def test_plot_training_curves_errors(tmp_path):
    with pytest.raises(ValueError, match="no numeric metrics"):
        plot_training_curves([{"step": 1, "tag": "x"}], tmp_path / "c.png")
    with pytest.raises(ValueError, match="step"):
        plot_training_curves([{"loss": 1.0}], tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []
    assert plt.get_fignums() == []


def test_plot_reward_vs_kl(tmp_path):
    points = [
        {"name": "dpo", "kl": 2.0, "reward": 0.6, "reward_low": 0.55, "reward_high": 0.65, "label": "beta=0.1"},
        {"name": "dpo", "kl": 0.5, "reward": 0.3, "label": "beta=1"},
        {"name": "ipo", "kl": 1.0, "reward": 0.4, "reward_low": 0.3, "reward_high": 0.5},
        {"name": "best-of-n", "kl": 1.5, "reward": 0.5},
    ]
    out = tmp_path / "frontier.png"
    plot_reward_vs_kl(points, out, title="frontier")
    assert_png(out)


def test_plot_reward_vs_kl_missing_field(tmp_path):
    with pytest.raises(ValueError, match="point 1 is missing kl"):
        plot_reward_vs_kl([{"name": "a", "kl": 0.0, "reward": 1.0}, {"name": "a", "reward": 1.0}], tmp_path / "f.png")


def test_plot_bars(tmp_path):
    values = {
        "sft": {"helpful": 0.2, "harmless": 0.5, "concise": -0.1},
        "dpo": {"helpful": 0.6, "harmless": 0.45},
    }
    out = tmp_path / "bars.png"
    plot_bars(values, out, title="gold reward", ylabel="mean gold reward")
    assert_png(out)


def test_plots_overwrite_existing_file(tmp_path):
    out = tmp_path / "bars.png"
    write_text(out, "old")
    plot_bars({"a": {"x": 1.0}}, out)
    assert_png(out)
