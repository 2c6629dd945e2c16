"""Statistics for comparing a policy against a baseline: win rates and confidence intervals.

Everything here is plain numpy + the standard library (no scipy):

* :func:`pairwise_outcomes` turns two score vectors into per-prompt outcomes 1 / 0.5 / 0.
* :func:`win_rate` summarises outcomes as a :class:`WinRate` with a tie-aware Wilson interval.

Outcome convention (here, in :mod:`alignkit.stats.length_control` and :mod:`alignkit.stats.ratings`): an outcome is
the probability that the model's answer is preferred to the baseline's, a number in ``[0, 1]``: 1 a win, 0.5 a tie,
0 a loss, and anything in between a soft preference (a judge's probability, e.g. AlpacaEval's logprob-weighted
preference). AlpacaEval stores ``preference`` in ``[1, 2]`` (2: the model's answer, ``output_2``, is preferred):
:func:`outcomes_from_alpacaeval` converts it (``p - 1``); values outside ``[0, 1]`` are refused, never guessed.
* :func:`mean_ci` is a Student-t interval for a mean (exact t quantiles, see
  :func:`student_t_ppf`).
* :func:`bootstrap_ci` is a seeded percentile bootstrap for any statistic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Callable, Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray

WIN, TIE, LOSS = 1.0, 0.5, 0.0


@dataclass(frozen=True)
class WinRate:
    """A win rate (ties count half, soft outcomes count as they are) with a confidence interval ``[low, high]``;
    ``wins`` / ``ties`` / ``losses`` count outcomes above, at and below 0.5."""

    rate: float
    low: float
    high: float
    n: int
    wins: int
    ties: int
    losses: int
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- validation


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _z(confidence: float) -> float:
    """Two-sided standard normal critical value, e.g. 1.96 for 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


# --------------------------------------------------------------------------- win rates


def check_outcomes(values: np.ndarray, name: str = "outcomes") -> None:
    """Refuse outcomes outside ``[0, 1]`` (NaN is the caller's business) in one line naming how many and the first
    few, with the hint for AlpacaEval's ``[1, 2]`` preferences."""
    values = np.ravel(values)
    bad = np.flatnonzero((values < 0) | (values > 1))
    if bad.size:
        shown = ", ".join(f"{values[i]:g} at {i}" for i in bad[:3]) + (", ..." if bad.size > 3 else "")
        hint = (" (AlpacaEval preferences in [1, 2]: convert with outcomes_from_alpacaeval)"
                if np.all((values >= 1) & (values <= 2)) else "")
        raise ValueError(f"{name} must lie in [0, 1] (the probability that the model is preferred: 1 win, 0.5 tie, "
                         f"0 loss); {bad.size} do not: {shown}{hint}")


def outcomes_from_alpacaeval(preferences: ArrayLike) -> np.ndarray:
    """AlpacaEval ``preference`` values in ``[1, 2]`` (1: baseline ``output_1`` preferred, 2: the model's ``output_2``;
    soft in between; NaN kept as invalid) as outcomes in ``[0, 1]``: ``preference - 1``."""
    arr = np.asarray(preferences, dtype=float)
    finite = arr[np.isfinite(arr)]
    if np.any((finite < 1) | (finite > 2)):
        raise ValueError(f"AlpacaEval preferences lie in [1, 2]; got values from {finite.min():g} to {finite.max():g}")
    return arr - 1.0


def pairwise_outcomes(
    policy_scores: ArrayLike, baseline_scores: ArrayLike, tie_tolerance: float = 0.0
) -> np.ndarray:
    """Per-prompt outcome of policy vs baseline: 1 (win), 0.5 (tie) or 0 (loss).

    A pair is a tie when ``|policy - baseline| <= tie_tolerance``.
    """
    policy = _as_1d(policy_scores, "policy_scores")
    baseline = _as_1d(baseline_scores, "baseline_scores")
    if policy.shape != baseline.shape:
        raise ValueError(f"score vectors differ in length: {policy.shape[0]} vs {baseline.shape[0]}")
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    diff = policy - baseline
    outcomes = np.where(diff > 0, WIN, LOSS)
    outcomes[np.abs(diff) <= tie_tolerance] = TIE
    return outcomes


def _variance_factor(outcomes: np.ndarray, p_hat: float) -> float:
    """Ratio of the observed outcome variance to the binomial variance ``p_hat (1 - p_hat)``.

    Equals 1 without ties and drops below 1 as ties replace win/loss pairs. It is shrunk
    towards 1 by one pseudo-observation, ``(n * ratio + 1) / (n + 1)``, so that a sample of
    only ties still gets a (narrow) interval instead of a zero-width one. At ``p_hat`` of 0
    or 1 the ratio is undefined and the factor is 1 (the plain Wilson interval).
    """
    binomial_var = p_hat * (1.0 - p_hat)
    if binomial_var <= 0.0:
        return 1.0
    n = outcomes.size
    ratio = float(np.var(outcomes)) / binomial_var  # ddof=0: exactly 1 when there are no ties
    return (n * ratio + 1.0) / (n + 1.0)


def _wilson(p_hat: float, n: int, z2: float) -> tuple[float, float]:
    """Roots of ``(p_hat - p)^2 = z2 * p (1 - p) / n``: the Wilson score interval."""
    denom = 1.0 + z2 / n
    centre = (p_hat + z2 / (2.0 * n)) / denom
    half = math.sqrt(z2) / denom * math.sqrt(p_hat * (1.0 - p_hat) / n + z2 / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(outcomes: ArrayLike, confidence: float = 0.95) -> WinRate:
    """Win rate (mean outcome, ties count half, soft outcomes as they are) with a tie-aware Wilson score interval.

    Method. The Wilson interval solves ``|p_hat - p| <= z * sqrt(v(p) / n)`` for ``p`` with
    the binomial variance ``v(p) = p (1 - p)``. Outcomes with ties are not binomial: a tie
    contributes 0.5 with no spread, so the per-item variance is smaller. We therefore use
    ``v(p) = k * p (1 - p)`` where ``k`` is the observed variance of the outcomes divided by
    ``p_hat (1 - p_hat)`` (see :func:`_variance_factor`). This is the Wilson interval with
    ``z^2`` replaced by ``k z^2`` (equivalently, an effective sample size ``n / k``):

    * no ties: ``k = 1``, the textbook Wilson interval;
    * ties: ``k < 1``, a narrower interval than the same rate without ties;
    * all wins (or all losses): ``k = 1``, giving ``high = 1`` and ``low < 1`` (mirrored);
    * all ties: ``k = 1 / (n + 1)``, a narrow interval around 0.5;
    * soft outcomes (probabilities in ``[0, 1]``, see the module docstring) have less spread than wins and
      losses, like ties, and the same observed-variance factor accounts for it.

    Bounds always lie in ``[0, 1]``. Raises ``ValueError`` for an empty input, NaN, or outcomes outside
    ``[0, 1]`` (:func:`check_outcomes`).
    """
    _check_confidence(confidence)
    arr = _as_1d(outcomes, "outcomes")
    n = arr.size
    if n == 0:
        raise ValueError("win_rate needs at least one outcome")
    check_outcomes(arr)
    p_hat = float(arr.mean())
    z2 = _z(confidence) ** 2 * _variance_factor(arr, p_hat)
    low, high = _wilson(p_hat, n, z2)
    return WinRate(
        rate=p_hat,
        low=min(low, p_hat),
        high=max(high, p_hat),
        n=int(n),
        wins=int(np.sum(arr > TIE)),
        ties=int(np.sum(arr == TIE)),
        losses=int(np.sum(arr < TIE)),
        confidence=confidence,
    )


# --------------------------------------------------------------------------- Student t


def _betacf(a: float, b: float, x: float, max_iter: int = 300, eps: float = 1e-15) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t, found by bisection on :func:`student_t_cdf` (e.g. ``t_{0.975,4} = 2.776``)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    if q == 0.5:
        return 0.0
    lo, hi = 0.0, max(1.0, NormalDist().inv_cdf(q))
    while student_t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``.

    Uses exact t quantiles for every ``n`` (:func:`student_t_ppf`), so there is no jump
    where a normal approximation would take over. ``n = 1`` gives NaN bounds (no spread can
    be estimated); ``n = 0`` raises ``ValueError``.
    """
    _check_confidence(confidence)
    arr = _as_1d(values, "values")
    n = arr.size
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(arr.mean())
    if n == 1:
        return mean, math.nan, math.nan
    half = student_t_ppf(0.5 + confidence / 2.0, n - 1) * float(arr.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    values: ArrayLike,
    stat: Callable[[np.ndarray], float] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(stat(values), low, high)`` with a percentile bootstrap interval.

    Resamples ``values`` with replacement ``n_resamples`` times using
    ``np.random.default_rng(seed)``, so the same inputs and seed give the same interval.
    """
    _check_confidence(confidence)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arr = _as_1d(values, "values")
    n = arr.size
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    stats = np.array([float(stat(arr[rng.integers(0, n, size=n)])) for _ in range(n_resamples)])
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(stat(arr)), float(low), float(high)
