"""Tests for alignkit.stats.intervals."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from alignkit.stats.intervals import (
    WinRate,
    bootstrap_ci,
    mean_ci,
    pairwise_outcomes,
    student_t_cdf,
    student_t_ppf,
    win_rate,
)

Z95 = NormalDist().inv_cdf(0.975)


def wilson_by_hand(wins: int, n: int, z: float) -> tuple[float, float]:
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# --------------------------------------------------------------------------- pairwise_outcomes


def test_pairwise_outcomes_wins_ties_losses():
    out = pairwise_outcomes([1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 2.0, 5.05], tie_tolerance=0.1)
    assert out.tolist() == [1.0, 0.0, 0.5, 0.5]


def test_pairwise_outcomes_exact_tie_with_zero_tolerance():
    assert pairwise_outcomes([1.0, 1.0], [1.0, 0.999]).tolist() == [0.5, 1.0]


def test_pairwise_outcomes_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        pairwise_outcomes([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="tie_tolerance"):
        pairwise_outcomes([1.0], [1.0], tie_tolerance=-1)
    with pytest.raises(ValueError, match="NaN"):
        pairwise_outcomes([math.nan], [1.0])


# --------------------------------------------------------------------------- win_rate


def test_win_rate_no_ties_matches_wilson():
    wr = win_rate([1.0] * 70 + [0.0] * 30)
    low, high = wilson_by_hand(70, 100, Z95)
    assert wr.rate == pytest.approx(0.7, abs=1e-12)
    assert (wr.n, wr.wins, wr.ties, wr.losses, wr.confidence) == (100, 70, 0, 30, 0.95)
    assert wr.low == pytest.approx(low, abs=1e-12)
    assert wr.high == pytest.approx(high, abs=1e-12)
    assert wr.low == pytest.approx(0.60415, abs=1e-5)
    assert wr.high == pytest.approx(0.78105, abs=1e-5)
    assert wr.low < 0.7 < wr.high
    assert wr.high - wr.low == pytest.approx(0.1769, abs=1e-3)


def test_win_rate_confidence_level_changes_width():
    outcomes = [1.0] * 70 + [0.0] * 30
    wide, narrow = win_rate(outcomes, 0.99), win_rate(outcomes, 0.8)
    low, high = wilson_by_hand(70, 100, NormalDist().inv_cdf(0.995))
    assert (wide.low, wide.high) == pytest.approx((low, high), abs=1e-12)
    assert narrow.high - narrow.low < wide.high - wide.low


def test_ties_count_half_and_reduce_variance():
    with_ties = win_rate([1.0] * 40 + [0.5] * 20 + [0.0] * 40)
    without = win_rate([1.0] * 50 + [0.0] * 50)
    assert with_ties.rate == pytest.approx(0.5)
    assert with_ties.ties == 20
    assert with_ties.high - with_ties.low < without.high - without.low
    # Documented method: Wilson with z^2 scaled by k = (n * var / (p(1-p)) + 1) / (n + 1).
    k = (100 * 0.2 / 0.25 + 1) / 101
    low, high = wilson_by_hand(50, 100, Z95 * math.sqrt(k))
    assert (with_ties.low, with_ties.high) == pytest.approx((low, high), abs=1e-12)


def test_all_wins_and_all_losses():
    wins = win_rate([1.0] * 20)
    assert wins.rate == 1.0 and wins.high == 1.0
    assert wins.low == pytest.approx(wilson_by_hand(20, 20, Z95)[0], abs=1e-12)
    assert 0.0 < wins.low < 1.0
    losses = win_rate([0.0] * 20)
    assert losses.low == 0.0
    assert losses.high == pytest.approx(1.0 - wins.low, abs=1e-12)


def test_all_ties_gives_narrow_sane_interval():
    wr = win_rate([0.5] * 50)
    assert wr.rate == 0.5 and wr.ties == 50
    assert 0.0 <= wr.low < 0.5 < wr.high <= 1.0
    assert wr.high - wr.low < 0.1
    assert wr.low == pytest.approx(1.0 - wr.high, abs=1e-12)


def test_single_outcome_bounds_in_unit_interval():
    for outcome in (0.0, 0.5, 1.0):
        wr = win_rate([outcome])
        assert 0.0 <= wr.low <= wr.rate <= wr.high <= 1.0


def test_win_rate_errors():
    with pytest.raises(ValueError, match="at least one"):
        win_rate([])
    with pytest.raises(ValueError, match=r"^outcomes must lie in \[0, 1\] .*; 1 do not: 1.3 at 1$"):
        win_rate([1.0, 1.3, 0.3])
    with pytest.raises(ValueError, match="convert with outcomes_from_alpacaeval"):
        win_rate([1.0, 2.0, 1.5])
    with pytest.raises(ValueError, match="NaN"):
        win_rate([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        win_rate([1.0], confidence=1.0)


def test_win_rate_as_dict():
    d = win_rate([1.0, 0.0]).as_dict()
    assert list(d) == ["rate", "low", "high", "n", "wins", "ties", "losses", "confidence"]
    assert d["rate"] == 0.5 and d["n"] == 2
    assert isinstance(win_rate([1.0]), WinRate)


# --------------------------------------------------------------------------- Student t


@pytest.mark.parametrize(
    "q, df, expected",
    [
        (0.975, 4, 2.7764451052),
        (0.975, 1, 12.7062047364),
        (0.975, 2, 4.3026527297),
        (0.975, 10, 2.2281388520),
        (0.975, 29, 2.0452296421),
        (0.995, 100, 2.6258905214),
        (0.95, 30, 1.6972608866),
        (0.025, 4, -2.7764451052),
    ],
)
def test_student_t_ppf_known_values(q, df, expected):
    assert student_t_ppf(q, df) == pytest.approx(expected, abs=1e-8)


def test_student_t_ppf_approaches_normal_and_inverts_cdf():
    assert student_t_ppf(0.975, 1e7) == pytest.approx(Z95, abs=1e-5)
    assert student_t_ppf(0.5, 3) == 0.0
    for df in (1, 3, 17):
        assert student_t_cdf(student_t_ppf(0.9, df), df) == pytest.approx(0.9, abs=1e-12)
    # df = 1 is Cauchy: CDF(t) = 1/2 + atan(t) / pi.
    assert student_t_cdf(2.0, 1) == pytest.approx(0.5 + math.atan(2.0) / math.pi, abs=1e-12)


# --------------------------------------------------------------------------- mean_ci


def test_mean_ci_small_sample_by_hand():
    mean, low, high = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451052 * math.sqrt(2.5) / math.sqrt(5)
    assert mean == 3.0
    assert low == pytest.approx(3.0 - half, abs=1e-9)
    assert high == pytest.approx(3.0 + half, abs=1e-9)
    assert low == pytest.approx(1.03676, abs=1e-5)


def test_mean_ci_large_sample_uses_t_quantile():
    values = np.arange(40, dtype=float)
    mean, low, high = mean_ci(values, confidence=0.9)
    half = student_t_ppf(0.95, 39) * values.std(ddof=1) / math.sqrt(40)
    assert mean == 19.5
    assert (low, high) == pytest.approx((19.5 - half, 19.5 + half), abs=1e-12)
    assert student_t_ppf(0.95, 39) == pytest.approx(1.6848751, abs=1e-6)


def test_mean_ci_edge_cases():
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    mean, low, high = mean_ci([4.0])
    assert mean == 4.0 and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError):
        mean_ci([])


# --------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_is_deterministic_by_seed():
    values = np.random.default_rng(123).normal(size=60)
    a = bootstrap_ci(values, seed=7)
    b = bootstrap_ci(values, seed=7)
    c = bootstrap_ci(values, seed=8)
    assert a == b
    assert a[1:] != c[1:]
    assert a[0] == pytest.approx(values.mean())
    assert a[1] < a[0] < a[2]


def test_bootstrap_agrees_roughly_with_t_interval_and_custom_stat():
    values = np.random.default_rng(0).normal(loc=1.0, size=200)
    _, t_low, t_high = mean_ci(values)
    _, b_low, b_high = bootstrap_ci(values, n_resamples=4000)
    assert b_low == pytest.approx(t_low, abs=0.03)
    assert b_high == pytest.approx(t_high, abs=0.03)
    med, low, high = bootstrap_ci(values, stat=np.median, n_resamples=200)
    assert med == pytest.approx(float(np.median(values)))
    assert low <= med <= high


def test_bootstrap_constant_values_and_errors():
    assert bootstrap_ci([3.0] * 5, n_resamples=50) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], n_resamples=0)


def test_soft_outcomes_are_probabilities_of_a_win():
    """AlpacaEval-style soft preferences: the rate is their mean, wins / ties / losses count above / at / below
    0.5, and the interval is narrower than for hard outcomes with the same mean (less spread, like ties)."""
    soft = np.array([0.9, 0.8, 0.5, 0.3, 0.7, 0.6, 0.9, 0.2] * 10)
    wr = win_rate(soft)
    assert wr.rate == pytest.approx(soft.mean()) and (wr.wins, wr.ties, wr.losses) == (50, 10, 20)
    hard = win_rate((np.arange(80) < round(soft.mean() * 80)).astype(float))
    assert wr.low <= wr.rate <= wr.high and wr.high - wr.low < hard.high - hard.low
    assert win_rate([0.5] * 10).as_dict() == win_rate([0.5] * 10).as_dict()


def test_alpacaeval_preferences_convert_to_outcomes():
    from alignkit.stats.intervals import outcomes_from_alpacaeval

    out = outcomes_from_alpacaeval([1.0, 2.0, 1.25, float("nan")])
    assert out[:3].tolist() == [0.0, 1.0, 0.25] and np.isnan(out[3])
    assert win_rate(out[:3]).rate == pytest.approx(1.25 / 3)
    with pytest.raises(ValueError, match=r"lie in \[1, 2\]; got values from 0.5 to 2"):
        outcomes_from_alpacaeval([0.5, 2.0])
