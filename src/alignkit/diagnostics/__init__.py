"""Diagnostics: is the alignment working, or is it gaming the reward? (over-optimisation curves so far)."""

from alignkit.diagnostics.overoptimization import (
    OveroptimizationFit,
    bon_kl,
    fit_overoptimization,
    gold_curve,
    plot_overoptimization,
)

__all__ = ["OveroptimizationFit", "bon_kl", "fit_overoptimization", "gold_curve", "plot_overoptimization"]
