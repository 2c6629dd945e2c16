"""Gao et al. 2023 over-optimisation fits: closed form vs numpy least squares, recovery of known (a, b), the peak by
calculus (and numerically), and the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignkit.diagnostics import bon_kl, fit_overoptimization, gold_curve, plot_overoptimization


def _design(d: np.ndarray, form: str) -> np.ndarray:
    """Independent design matrix: columns d and -d log d (RL) or -d^2 (BoN), with 0 log 0 = 0."""
    rows = []
    for x in d:
        second = (-x * math.log(x) if x > 0 else 0.0) if form == "rl" else -x * x
        rows.append([x, second])
    return np.array(rows)


@pytest.mark.parametrize("form", ["rl", "bon"])
def test_noiseless_fit_recovers_a_b_exactly(form):
    a, b = 1.3, 0.4 if form == "rl" else 0.15
    kl = np.linspace(0.0, 30.0, 25)
    d = np.sqrt(kl)
    gold = np.array([x * (a - b * (math.log(x) if x > 0 else 0.0)) if form == "rl" else x * (a - b * x) for x in d])
    fit = fit_overoptimization(kl, gold, form)
    assert fit.a == pytest.approx(a, rel=1e-9, abs=1e-12)
    assert fit.b == pytest.approx(b, rel=1e-9, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.n == 25


@pytest.mark.parametrize("form", ["rl", "bon"])
def test_closed_form_equals_numpy_lstsq_on_noisy_data(form):
    rng = np.random.default_rng(0)
    kl = rng.uniform(0.0, 40.0, size=60)
    d = np.sqrt(kl)
    a, b = 0.9, 0.3 if form == "rl" else 0.1
    gold = gold_curve(d, a, b, form) + rng.normal(0.0, 0.05, size=d.size)
    fit = fit_overoptimization(kl, gold, form)
    X = _design(d, form)
    (a_ref, b_ref), *_ = np.linalg.lstsq(X, gold, rcond=None)
    assert fit.a == pytest.approx(a_ref, rel=1e-9)
    assert fit.b == pytest.approx(b_ref, rel=1e-9)
    resid = gold - X @ np.array([a_ref, b_ref])
    r2_ref = 1 - (resid @ resid) / ((gold - gold.mean()) @ (gold - gold.mean()))
    assert fit.r2 == pytest.approx(r2_ref, rel=1e-9)
    # noisy data still recovers the truth approximately
    assert fit.a == pytest.approx(a, abs=0.05)
    assert fit.b == pytest.approx(b, abs=0.03)
    assert 0.9 < fit.r2 <= 1.0


@pytest.mark.parametrize("form,a,b", [("rl", 1.3, 0.4), ("rl", 0.5, 0.9), ("bon", 1.0, 0.2), ("bon", 0.3, 0.05)])
def test_peak_is_the_argmax_of_the_fitted_curve(form, a, b):
    kl = np.linspace(0.5, 20.0, 10)
    fit = fit_overoptimization(kl, gold_curve(np.sqrt(kl), a, b, form), form)
    expected = math.exp(a / b - 1) if form == "rl" else a / (2 * b)
    assert fit.d_star == pytest.approx(expected, rel=1e-9)
    assert fit.kl_star == pytest.approx(expected ** 2, rel=1e-9)
    # numerically: the curve on a fine grid peaks at d* with value gold_star
    grid = np.linspace(1e-6, 4 * expected, 400001)
    values = gold_curve(grid, fit.a, fit.b, form)
    assert grid[values.argmax()] == pytest.approx(expected, rel=1e-4)
    assert fit.gold_star == pytest.approx(values.max(), rel=1e-8)
    if form == "rl":
        assert fit.gold_star == pytest.approx(b * expected, rel=1e-9)
    else:
        assert fit.gold_star == pytest.approx(a * a / (4 * b), rel=1e-9)


def test_no_turnover_gives_infinite_peak_and_bon_negative_a_peaks_at_zero():
    kl = np.linspace(0.1, 10, 8)
    d = np.sqrt(kl)
    rising = fit_overoptimization(kl, 2.0 * d + 0.1 * d * d, "bon")  # b = -0.1
    assert rising.b < 0 and math.isinf(rising.d_star) and math.isinf(rising.gold_star)
    falling = fit_overoptimization(kl, gold_curve(d, -0.5, 0.2, "bon"), "bon")
    assert falling.d_star == 0.0 and falling.gold_star == 0.0


def test_bon_kl_formula():
    assert bon_kl(1) == 0.0
    for n in (2, 4, 16, 1000):
        assert bon_kl(n) == pytest.approx(math.log(n) - (n - 1) / n)
    np.testing.assert_allclose(bon_kl(np.array([2, 8])), [math.log(2) - 0.5, math.log(8) - 7 / 8])
    with pytest.raises(ValueError):
        bon_kl(0)


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="degenerate"):
        fit_overoptimization([4.0, 4.0, 4.0], [1.0, 1.1, 0.9])
    with pytest.raises(ValueError, match=">= 0"):
        fit_overoptimization([-1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        fit_overoptimization([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="form"):
        fit_overoptimization([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], form="ppo")


def test_plot_writes_png_atomically(tmp_path):
    rng = np.random.default_rng(1)
    kl = np.linspace(0, 25, 20)
    d = np.sqrt(kl)
    gold = gold_curve(d, 1.0, 0.35) + rng.normal(0, 0.02, d.size)
    proxy = 0.8 * d + rng.normal(0, 0.02, d.size)
    out = plot_overoptimization(kl, proxy, gold, tmp_path / "sub" / "overopt.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["overopt.png"]  # no temporary file left behind
    plot_overoptimization(kl, None, gold, tmp_path / "bon.png", form="bon", title="BoN")
    assert (tmp_path / "bon.png").stat().st_size > 0
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # figures are closed
