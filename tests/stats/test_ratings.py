"""Bradley-Terry ratings: recovery of known strengths on synthetic battles, bootstrap intervals, ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignkit.stats.ratings import ELO_SCALE, Battles, bradley_terry_ratings, fit_bradley_terry, win_probability

TRUE = np.array([0.0, 0.5, 1.0, -0.5, 1.5])   # log-strengths of models m0..m4
NAMES = [f"m{i}" for i in range(len(TRUE))]


def synthetic_battles(n: int, seed: int, tie_share: float = 0.0) -> Battles:
    """Random pairs; the first wins with probability sigmoid(theta_a - theta_b); ``tie_share`` of the battles,
    chosen at random, become ties."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(TRUE), n)
    b = (a + rng.integers(1, len(TRUE), n)) % len(TRUE)
    wins = rng.random(n) < 1 / (1 + np.exp(-(TRUE[a] - TRUE[b])))
    outcome = np.where(wins, 1.0, 0.0)
    outcome[rng.random(n) < tie_share] = 0.5
    return Battles(NAMES, a, b, outcome)


def test_recovers_known_strengths():
    theta = fit_bradley_terry(synthetic_battles(6000, seed=0))
    error = np.abs(theta - (TRUE - TRUE.mean()))
    assert error.max() < 0.12, error
    assert list(np.argsort(theta)) == list(np.argsort(TRUE))


def test_a_tie_counts_as_half_a_win_for_each_side():
    """Bradley-Terry with ties as o = 0.5: a tie's likelihood is sqrt(p (1 - p)), so the data with every tie
    replaced by one win and one loss, and every other battle doubled, has the same maximiser."""
    with_ties = synthetic_battles(2000, seed=1, tie_share=0.3)
    tie = with_ties.outcome == 0.5
    rows = np.concatenate([np.flatnonzero(~tie), np.flatnonzero(~tie), np.flatnonzero(tie), np.flatnonzero(tie)])
    doubled = with_ties.subset(rows)
    doubled.outcome = np.concatenate([with_ties.outcome[~tie]] * 2 + [np.ones(tie.sum()), np.zeros(tie.sum())])
    assert fit_bradley_terry(with_ties, l2=1e-9) == pytest.approx(fit_bradley_terry(doubled, l2=1e-9), abs=1e-6)
    # two models that only ever tie are equally strong
    tied = Battles(["a", "b"], np.zeros(10, int), np.ones(10, int), np.full(10, 0.5))
    assert fit_bradley_terry(tied) == pytest.approx([0.0, 0.0], abs=1e-9)


def test_bootstrap_intervals_are_seeded_anchored_and_cover_the_truth():
    battles = synthetic_battles(3000, seed=2)
    ratings = bradley_terry_ratings(battles, anchor="m0", scale="logit", n_bootstrap=300, seed=5)
    again = bradley_terry_ratings(battles, anchor="m0", scale="logit", n_bootstrap=300, seed=5)
    assert [r.as_dict() for r in ratings] == [r.as_dict() for r in again]
    by_name = {r.model: r for r in ratings}
    assert by_name["m0"].rating == 0.0 and by_name["m0"].low == by_name["m0"].high == 0.0
    for i, name in enumerate(NAMES[1:], 1):
        r = by_name[name]
        assert r.low < r.rating < r.high and r.high - r.low < 0.4
        assert r.low - 0.05 <= TRUE[i] <= r.high + 0.05
    assert [r.model for r in ratings] == ["m4", "m2", "m1", "m0", "m3"]   # best first
    assert sum(r.battles for r in ratings) == 2 * len(battles)


def test_elo_scale_and_win_probability():
    battles = synthetic_battles(3000, seed=3)
    logit = {r.model: r.rating for r in bradley_terry_ratings(battles, anchor="m0", scale="logit", n_bootstrap=0)}
    elo = {r.model: r.rating for r in bradley_terry_ratings(battles, anchor="m0", n_bootstrap=0)}
    assert elo["m0"] == 1000.0
    assert elo["m4"] == pytest.approx(1000.0 + ELO_SCALE * logit["m4"])
    assert win_probability(elo["m4"], elo["m0"]) == pytest.approx(1 / (1 + math.exp(-logit["m4"])))
    assert win_probability(1400.0, 1000.0) == pytest.approx(10 / 11)


def test_undefeated_model_gets_a_finite_rating_and_invalid_outcomes_are_skipped():
    battles = Battles.from_outcomes(["a", "b"], {("a", "b"): np.array([1.0, 1.0, 1.0, np.nan])})
    assert len(battles) == 3
    theta = fit_bradley_terry(battles)
    assert np.all(np.isfinite(theta)) and theta[0] > theta[1]
    with pytest.raises(ValueError, match="no battles"):
        fit_bradley_terry(Battles(["a"], np.zeros(0, int), np.zeros(0, int), np.zeros(0)))


def test_soft_outcomes_rate_like_their_expectation_and_out_of_range_ones_are_refused():
    """A soft outcome p is the expected value of a win drawn with probability p: 0.75 everywhere rates A as the
    hard outcomes that win 3 of 4 do."""
    soft = Battles.from_outcomes(["A", "B"], {("A", "B"): np.full(40, 0.75)})
    hard = Battles.from_outcomes(["A", "B"], {("A", "B"): np.tile([1.0, 1.0, 1.0, 0.0], 10)})
    assert fit_bradley_terry(soft) == pytest.approx(fit_bradley_terry(hard))
    with pytest.raises(ValueError, match=r"^outcomes of A vs B must lie in \[0, 1\] .*convert with "
                                         r"outcomes_from_alpacaeval\)$"):
        Battles.from_outcomes(["A", "B"], {("A", "B"): np.array([1.0, 2.0, 1.5])})
