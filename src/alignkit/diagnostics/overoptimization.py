"""Reward-model over-optimisation curves (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization",
arXiv:2210.10760).

As a policy is optimised against a proxy reward, the proxy keeps rising while the gold reward rises, peaks and falls.
Gao et al. measure distance from the initial policy by ``d = sqrt(KL(pi || pi_init))`` and fit the gold reward with

* RL (PPO):    ``R(d) = d * (a - b * log d)``
* Best-of-N:   ``R(d) = d * (a - b * d)``, where best-of-n's KL is ``log n - (n - 1) / n`` (:func:`bon_kl`).

Both pass through ``R(0) = 0``: the gold reward must be measured relative to the initial policy's (subtract the
initial policy's gold score first). Both are linear in ``(a, b)`` — features ``(d, -d log d)`` or ``(d, -d^2)``, no
intercept — so the least-squares fit is the closed-form solution of the 2x2 normal equations.

The peak (for ``b > 0``), by calculus:

* RL: ``R'(d) = a - b * log d - b = 0`` gives ``d* = exp(a / b - 1)``, and ``R'' = -b / d < 0`` so it is a maximum;
  ``R(d*) = d* * (a - (a - b)) = b * d*``.
* BoN: ``R'(d) = a - 2 b d = 0`` gives ``d* = a / (2 b)`` (``R'' = -2b < 0``), ``R(d*) = a^2 / (4 b)``; if ``a <= 0``
  the best is ``d* = 0``.

With ``b <= 0`` the fitted gold reward never turns down: ``d* = inf`` (no over-optimisation seen in the fitted range).
``R^2 = 1 - SS_res / SS_tot`` with ``SS_tot`` around the mean gold reward; it can be negative for a model without an
intercept that fits worse than the constant mean.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

Form = Literal["rl", "bon"]


@dataclass(frozen=True)
class OveroptimizationFit:
    form: str
    a: float
    b: float
    r2: float
    d_star: float      # argmax of the fitted gold curve (inf when it never turns down)
    gold_star: float   # fitted gold reward at d_star
    n: int             # number of points fitted

    @property
    def kl_star(self) -> float:
        """The KL (nats) at the fitted peak: ``d*^2``."""
        return self.d_star ** 2

    def predict(self, d: Sequence[float] | np.ndarray | float) -> np.ndarray:
        """The fitted gold reward at distances ``d``."""
        return gold_curve(d, self.a, self.b, self.form)

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "kl_star": self.kl_star}


def bon_kl(n: int | np.ndarray) -> float | np.ndarray:
    """:func:`alignkit.decoding.best_of_n.best_of_n_kl` (log n - (n - 1) / n) over an array of n, for plotting
    best-of-n curves against KL."""
    from alignkit.decoding.best_of_n import best_of_n_kl

    if np.ndim(n) == 0:
        return best_of_n_kl(int(n))
    return np.array([best_of_n_kl(int(k)) for k in np.ravel(n)]).reshape(np.shape(n))


def _features(d: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray]:
    if form == "rl":
        safe = np.where(d > 0, d, 1.0)
        return d, np.where(d > 0, -d * np.log(safe), 0.0)  # d log d -> 0 as d -> 0
    if form == "bon":
        return d, -d * d
    raise ValueError(f"form must be 'rl' or 'bon', got '{form}'")


def gold_curve(d: Sequence[float] | np.ndarray | float, a: float, b: float, form: Form = "rl") -> np.ndarray:
    """``d * (a - b * log d)`` (``rl``) or ``d * (a - b * d)`` (``bon``), elementwise."""
    d_arr = np.asarray(d, dtype=float)
    x1, x2 = _features(d_arr, form)
    return a * x1 + b * x2


def _peak(a: float, b: float, form: str) -> tuple[float, float]:
    if b <= 0:
        if b == 0 and a <= 0:
            return 0.0, 0.0
        return math.inf, math.inf
    if form == "rl":
        d_star = math.exp(a / b - 1)
        return d_star, b * d_star
    d_star = max(a / (2 * b), 0.0)
    return d_star, float(gold_curve(d_star, a, b, "bon"))


def fit_overoptimization(kl: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray,
                         form: Form = "rl") -> OveroptimizationFit:
    """Least-squares fit of Gao et al.'s gold-reward curve to ``(kl, gold)`` points; ``kl`` in nats, >= 0."""
    kl_arr = np.asarray(kl, dtype=float).reshape(-1)
    y = np.asarray(gold, dtype=float).reshape(-1)
    if kl_arr.shape != y.shape:
        raise ValueError(f"kl and gold must have the same length, got {kl_arr.size} and {y.size}")
    if not (np.all(np.isfinite(kl_arr)) and np.all(np.isfinite(y))):
        raise ValueError("kl and gold must be finite")
    if np.any(kl_arr < 0):
        raise ValueError("kl must be >= 0 (a negative KL estimate cannot be placed at d = sqrt(KL))")
    d = np.sqrt(kl_arr)
    x1, x2 = _features(d, form)
    s11, s12, s22 = float(x1 @ x1), float(x1 @ x2), float(x2 @ x2)
    t1, t2 = float(x1 @ y), float(x2 @ y)
    det = s11 * s22 - s12 * s12
    if not det > 1e-12 * max(s11 * s22, 1e-300):
        raise ValueError("the fit is degenerate: it needs at least two points at distinct positive KL values")
    a = (t1 * s22 - t2 * s12) / det
    b = (s11 * t2 - s12 * t1) / det
    residual = y - (a * x1 + b * x2)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(residual @ residual) / ss_tot if ss_tot > 0 else math.nan
    d_star, gold_star = _peak(a, b, form)
    return OveroptimizationFit(form, a, b, r2, d_star, gold_star, int(y.size))


def plot_overoptimization(kl: Sequence[float] | np.ndarray, proxy: Sequence[float] | np.ndarray | None,
                          gold: Sequence[float] | np.ndarray, path: str | os.PathLike, form: Form = "rl",
                          title: str = "") -> Path:
    """Proxy and gold reward against ``d = sqrt(KL)`` with the fitted gold curve and its peak; PNG written
    atomically (Agg backend, figure always closed). Returns the path. ``proxy`` may be None."""
    from alignkit.report.plots import _figure, _save_png  # Agg backend, closed figures, atomic PNG

    fit = fit_overoptimization(kl, gold, form)
    d = np.sqrt(np.asarray(kl, dtype=float).reshape(-1))
    top = float(d.max()) * 1.05 if d.size else 1.0
    if math.isfinite(fit.d_star):
        top = max(top, min(fit.d_star * 1.1, 2 * top))
    grid = np.linspace(0.0, top, 200)
    with _figure(figsize=(6.4, 4.2)) as (fig, ax):
        if proxy is not None:
            ax.scatter(d, np.asarray(proxy, dtype=float).reshape(-1), s=18, color="tab:blue", label="proxy reward")
        ax.scatter(d, np.asarray(gold, dtype=float).reshape(-1), s=18, color="tab:orange", label="gold reward")
        shape = "d(a - b log d)" if form == "rl" else "d(a - b d)"
        ax.plot(grid, fit.predict(grid), color="tab:orange", linestyle="--",
                label=f"gold fit {shape}: a={fit.a:.3g}, b={fit.b:.3g}, R²={fit.r2:.3f}")
        if math.isfinite(fit.d_star) and fit.d_star <= top:
            ax.axvline(fit.d_star, color="gray", linestyle=":", linewidth=1,
                       label=f"fitted gold peak d*={fit.d_star:.3g} (KL {fit.kl_star:.3g})")
        ax.set_xlabel("d = sqrt(KL(pi || pi_init))")
        ax.set_ylabel("reward (relative to the initial policy)")
        ax.set_title(title or f"Reward over-optimisation ({'RL' if form == 'rl' else 'best-of-n'})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return _save_png(fig, path)
