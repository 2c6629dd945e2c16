"""The pairwise protocol: every comparison judged in both presentation orders.

LLM judges prefer answers by position (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot
Arena", section 3.3). Following their conservative swap rule, each pair (x, y) is shown as (x, y) and as
(y, x); a verdict for x counts only when both orders agree, an inconsistent pair counts as a tie, and an
invalid verdict in either order makes the comparison invalid (counted in ``invalid``, left out of the rate).

Reported with the outcomes:

* position consistency = consistent pairs / pairs with two valid verdicts;
* position bias = (verdicts for the first slot - verdicts for the second slot) / valid verdicts, over both
  orders, in ``[-1, 1]``: 0 for an unbiased judge, +1 for one that always picks the first answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from alignkit.data.records import Text
from alignkit.rewards.base import PairwiseJudge, Verdict
from alignkit.stats.intervals import LOSS, TIE, WIN, pairwise_outcomes

# Outcome for x when x is shown first (order 1) or second (order 2).
_AS_FIRST = {"A": WIN, "B": LOSS, "tie": TIE}
_AS_SECOND = {"A": LOSS, "B": WIN, "tie": TIE}


@dataclass
class PairwiseResult:
    """Per-comparison outcomes for x against y (1 / 0.5 / 0, NaN where invalid) and protocol statistics."""

    outcomes: np.ndarray
    verdicts_xy: list[Verdict]
    verdicts_yx: list[Verdict]

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.outcomes)

    @property
    def consistent(self) -> np.ndarray:
        """Pairs whose two verdicts name the same winner (or both say tie)."""
        return np.array([a is not None and b is not None and _AS_FIRST[a] == _AS_SECOND[b]
                         for a, b in zip(self.verdicts_xy, self.verdicts_yx)], dtype=bool)

    def stats(self) -> dict[str, Any]:
        """Counts, position consistency and position bias (Zheng et al. 2023; see the module docstring)."""
        both = self.valid
        verdicts = [v for v in (*self.verdicts_xy, *self.verdicts_yx) if v is not None]
        first, second = verdicts.count("A"), verdicts.count("B")
        n_both = int(both.sum())
        return {
            "comparisons": len(self.outcomes),
            "judge_calls": 2 * len(self.outcomes),
            "invalid": int((~both).sum()),
            "invalid_verdicts": sum(v is None for v in (*self.verdicts_xy, *self.verdicts_yx)),
            "position_consistency": float(self.consistent.sum() / n_both) if n_both else float("nan"),
            "position_bias": (first - second) / len(verdicts) if verdicts else float("nan"),
            "inconsistent_as_ties": int(n_both - self.consistent.sum()),
            "tie_verdicts": verdicts.count("tie"),
        }


def combine_orders(verdicts_xy: Sequence[Verdict], verdicts_yx: Sequence[Verdict]) -> PairwiseResult:
    """Outcome for x per pair from the verdicts of both orders: agreement -> that outcome, disagreement -> tie
    (Zheng et al. 2023's swap rule), an invalid verdict in either order -> NaN (invalid)."""
    if len(verdicts_xy) != len(verdicts_yx):
        raise ValueError(f"{len(verdicts_xy)} verdicts in one order but {len(verdicts_yx)} in the other")
    outcomes = np.full(len(verdicts_xy), np.nan)
    for i, (a, b) in enumerate(zip(verdicts_xy, verdicts_yx)):
        if a is None or b is None:
            continue
        first, second = _AS_FIRST[a], _AS_SECOND[b]
        outcomes[i] = first if first == second else TIE
    return PairwiseResult(outcomes, list(verdicts_xy), list(verdicts_yx))


def judge_both_orders(judge: PairwiseJudge, prompts: Sequence[Text], x: Sequence[Text],
                      y: Sequence[Text]) -> PairwiseResult:
    """Judge every (prompt, x_i, y_i) as (x_i, y_i) and as (y_i, x_i) in one batch of ``2 n`` comparisons and
    combine the orders with :func:`combine_orders` (Zheng et al. 2023's position-swap protocol)."""
    if not len(prompts) == len(x) == len(y):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(x)} and {len(y)} responses")
    n = len(prompts)
    verdicts = judge.compare([*prompts, *prompts], [*x, *y], [*y, *x])
    if len(verdicts) != 2 * n:
        raise ValueError(f"judge {judge.name} returned {len(verdicts)} verdicts for {2 * n} comparisons")
    for v in verdicts:
        if v not in ("A", "B", "tie", None):
            raise ValueError(f"judge {judge.name} returned {v!r}; verdicts are 'A', 'B', 'tie' or None")
    return combine_orders(verdicts[:n], verdicts[n:])


def score_outcomes(x_scores: np.ndarray, y_scores: np.ndarray, tie_tolerance: float = 0.0) -> np.ndarray:
    """Outcome for x per pair from pointwise scores: 1 if ``s_x - s_y > tol``, 0 if ``< -tol``, else a tie;
    NaN where either score is NaN (the judge gave no valid score). Scores shown one at a time have no
    position, so no swap is needed."""
    x_scores, y_scores = np.asarray(x_scores, dtype=float), np.asarray(y_scores, dtype=float)
    outcomes = np.full(x_scores.shape, np.nan)
    valid = ~(np.isnan(x_scores) | np.isnan(y_scores))
    outcomes[valid] = pairwise_outcomes(x_scores[valid], y_scores[valid], tie_tolerance)
    return outcomes
