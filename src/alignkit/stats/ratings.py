"""Bradley-Terry ratings for several models from pairwise outcomes, with seeded bootstrap intervals.

Model (Bradley & Terry 1952, "Rank analysis of incomplete block designs"; as in Chatbot Arena, Chiang et al.
2024): model i beats model j with probability ``P(i > j) = sigmoid(theta_i - theta_j)``. The strengths are the
maximum of the log-likelihood ``sum_k [o_k log sigmoid(theta_a - theta_b) + (1 - o_k) log sigmoid(theta_b -
theta_a)]`` over battles k = (a, b, o) with outcome ``o`` in [0, 1] (1 / 0.5 / 0: win / tie / loss, a tie counting
as half a win for each side; soft preferences in between, the convention of :mod:`alignkit.stats.intervals`), minus a small ridge ``l2/2 * |theta|^2`` that keeps the fit finite when a model wins every battle, found
by Newton's method. Strengths are identified up to a shift: they are reported relative to an anchor model (the
baseline, rating 0 / Elo 1000) or centred to mean 0. The Elo scale is ``1000 + 400 / ln(10) * theta``.

Intervals: percentile bootstrap over battles (resampled with replacement, ``np.random.default_rng(seed)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from alignkit.stats.intervals import check_outcomes

ELO_SCALE = 400.0 / math.log(10.0)
ELO_BASE = 1000.0


@dataclass
class Battles:
    """Pairwise outcomes between named models: ``outcome[k]`` is model ``a[k]``'s result against ``b[k]``."""

    models: list[str]
    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray

    @classmethod
    def from_outcomes(cls, models: Sequence[str], pairs: dict[tuple[str, str], np.ndarray]) -> "Battles":
        """Battles from per-pair outcome vectors ``{(name_a, name_b): outcomes of a}`` in [0, 1] (others are
        refused, :func:`~alignkit.stats.intervals.check_outcomes`); NaN (invalid) skipped."""
        index = {m: i for i, m in enumerate(models)}
        a, b, o = [], [], []
        for (name_a, name_b), outcomes in pairs.items():
            outcomes = np.asarray(outcomes, dtype=float)
            outcomes = outcomes[~np.isnan(outcomes)]
            check_outcomes(outcomes, f"outcomes of {name_a} vs {name_b}")
            a += [index[name_a]] * len(outcomes)
            b += [index[name_b]] * len(outcomes)
            o += outcomes.tolist()
        return cls(list(models), np.array(a, dtype=int), np.array(b, dtype=int), np.array(o, dtype=float))

    def __len__(self) -> int:
        return len(self.outcome)

    def subset(self, rows: np.ndarray) -> "Battles":
        return Battles(self.models, self.a[rows], self.b[rows], self.outcome[rows])


def fit_bradley_terry(battles: Battles, l2: float = 1e-3, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Log-strengths ``theta`` (mean 0) maximising the Bradley-Terry log-likelihood
    ``sum_k o_k log sigmoid(theta_a - theta_b) + (1 - o_k) log sigmoid(theta_b - theta_a) - l2/2 |theta|^2``
    (Bradley & Terry 1952), by Newton's method. Ties (o = 0.5) are half a win for each side."""
    m = len(battles.models)
    if len(battles) == 0:
        raise ValueError("no battles to rate")
    theta = np.zeros(m)
    design = np.zeros((len(battles), m))
    rows = np.arange(len(battles))
    design[rows, battles.a] += 1.0
    design[rows, battles.b] -= 1.0
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        grad = design.T @ (battles.outcome - p) - l2 * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + l2 * np.eye(m)
        step = np.linalg.solve(hessian, grad)
        theta += step
        if np.max(np.abs(step)) < tol:
            break
    return theta - theta.mean()


@dataclass
class Rating:
    model: str
    rating: float
    low: float
    high: float
    battles: int

    def as_dict(self) -> dict[str, Any]:
        return vars(self).copy()


def bradley_terry_ratings(battles: Battles, *, anchor: str | None = None, scale: str = "elo",
                          n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
                          l2: float = 1e-3) -> list[Rating]:
    """Bradley-Terry ratings (Bradley & Terry 1952) with seeded percentile-bootstrap intervals, best first.

    ``scale="elo"`` reports ``1000 + 400 / ln(10) * (theta_i - theta_anchor)`` (Elo points; a 400-point gap
    means 10:1 odds), ``scale="logit"`` reports ``theta_i - theta_anchor``. Without ``anchor`` the strengths are
    centred on their mean. Each bootstrap replicate resamples the battles with replacement and refits.
    """
    if scale not in ("elo", "logit"):
        raise ValueError(f"scale must be elo or logit, not {scale!r}")

    def to_scale(theta: np.ndarray) -> np.ndarray:
        shifted = theta - (theta[battles.models.index(anchor)] if anchor is not None else 0.0)
        return ELO_BASE + ELO_SCALE * shifted if scale == "elo" else shifted

    point = to_scale(fit_bradley_terry(battles, l2=l2))
    rng = np.random.default_rng(seed)
    replicates = np.array([to_scale(fit_bradley_terry(battles.subset(rng.integers(0, len(battles), len(battles))),
                                                      l2=l2)) for _ in range(n_bootstrap)])
    alpha = 1.0 - confidence
    low, high = (np.quantile(replicates, [alpha / 2, 1 - alpha / 2], axis=0) if n_bootstrap
                 else (np.full_like(point, np.nan), np.full_like(point, np.nan)))
    counts = np.bincount(np.concatenate([battles.a, battles.b]), minlength=len(battles.models))
    ratings = [Rating(name, float(point[i]), float(low[i]), float(high[i]), int(counts[i]))
               for i, name in enumerate(battles.models)]
    return sorted(ratings, key=lambda r: -r.rating)


def win_probability(rating_a: float, rating_b: float, scale: str = "elo") -> float:
    """``P(a beats b) = sigmoid(theta_a - theta_b)`` under Bradley-Terry, from ratings on ``scale``."""
    diff = rating_a - rating_b
    return 1.0 / (1.0 + math.exp(-(diff / ELO_SCALE if scale == "elo" else diff)))
