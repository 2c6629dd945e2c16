"""The report's figures say what they show: reward vs KL as a frontier with readable labels, bar values that do
not overlap, per-bin counts on the reliability diagram; eval.html carries the training curves and the reward-vs-KL
plot, and its header names the baseline once."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
from matplotlib.figure import Figure

from alignkit.report.plots import frontier, plot_bars, plot_reward_vs_kl


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved during the test, drawn (so that text extents are known)."""
    figures = []
    save = Figure.savefig

    def keep(fig, *args, **kwargs):
        fig.canvas.draw()
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def overlaps(texts) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_text()]
    return [(a, b) for (a, x), (b, y) in itertools.combinations(boxes, 2) if x.overlaps(y)]


def test_frontier_keeps_the_best_reward_for_each_kl_budget():
    points = [{"kl": k, "reward": r} for k, r in ((0.0, 1.0), (0.2, 1.5), (0.3, 1.2), (0.5, 1.8), (0.9, 1.7))]
    assert [p["kl"] for p in frontier(points)] == [0.0, 0.2, 0.5]


def test_reward_vs_kl_draws_the_frontier_in_kl_order_with_readable_labels(drawn, tmp_path):
    # checkpoint order 25, 50, 75, 100 with KLs that are not monotone: the old plot zigzagged through them
    points = [{"name": "DPO", "kl": kl, "reward": r, "label": f"dpo@{s}"}
              for s, kl, r in ((25, 0.30, 1.50), (50, 0.32, 1.40), (75, 0.31, 1.70), (100, 0.90, 1.80))]
    points.append({"name": "DPO", "kl": 0.0, "reward": 1.2, "label": "sft"})
    plot_reward_vs_kl(points, tmp_path / "r.png")
    ax = drawn[-1].axes[0]
    line = next(line for line in ax.lines if line.get_linestyle() == "-")
    assert list(line.get_xdata()) == [0.0, 0.30, 0.31, 0.90] and list(line.get_ydata()) == [1.2, 1.5, 1.7, 1.8]
    assert not overlaps(ax.texts)


def test_bar_values_do_not_overlap(drawn, tmp_path):
    values = {f"dpo@{s:07d}": {k: v + 0.01 * s for k, v in zip("abcde", (0.1, -0.06, 0.05, 0.98, 1.0))}
              for s in range(6)}
    plot_bars(values, tmp_path / "b.png")
    ax = drawn[-1].axes[0]
    assert len(ax.texts) == 30 and not overlaps(ax.texts)


def test_reliability_diagram_counts_the_pairs_of_each_bin(drawn, tmp_path):
    from alignkit.eval.reward_model import plot_reliability
    from alignkit.stats.calibration import reliability

    margins = np.array([0.1, -0.2, 0.15, 3.0, 2.5, -4.0, 0.05])
    table = reliability(margins, bins=5)
    plot_reliability(table, tmp_path / "rel.png")
    texts = [t.get_text() for t in drawn[-1].axes[0].texts]
    assert texts == [str(int(n)) for n in table.counts if n > 0]


def test_eval_page_has_the_training_curves_and_reward_vs_kl_and_names_the_baseline_once(tiny_world, tmp_path):
    from alignkit.apps.sandbox_build import read_prompts
    from alignkit.eval.evaluate import evaluate
    from alignkit.rewards.judges import SandboxGoldJudge
    from alignkit.sampling.generate import SamplingConfig
    from alignkit.utils.io import write_jsonl

    run = tmp_path / "run"                         # a training run: run/model and run/metrics.jsonl
    shutil.copytree(tiny_world / "base", run / "model")
    write_jsonl(run / "metrics.jsonl", [{"step": s, "loss": 1.0 / s} for s in range(1, 5)])
    base = str(tiny_world / "base")
    prompts = read_prompts(tiny_world / "data" / "prompts_eval.jsonl")[:4]
    evaluate({"trained": str(run / "model")}, base, prompts, SandboxGoldJudge(), out_dir=tmp_path / "rep",
             progress=False, sampling=SamplingConfig(max_new_tokens=4), n_bootstrap=10)
    page = (tmp_path / "rep" / "eval.html").read_text()
    assert 'alt="training_curves"' in page and 'alt="reward_vs_kl"' in page
    assert "baseline baseline" not in page and f"baseline {base};" in page
