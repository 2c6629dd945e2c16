"""Preference sources: ``P(y1 > y2 | x)`` from a pointwise reward (Bradley-Terry) or a pairwise judge."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Sequence

import numpy as np

from alignkit.data.records import Text
from alignkit.rewards.base import RewardSource, check_lengths
from alignkit.rewards.pairwise import judge_both_orders


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` computed as ``(1 + tanh(x / 2)) / 2``: no overflow, exactly 0.5 at 0, NaN kept."""
    return 0.5 * (1.0 + np.tanh(np.asarray(x, dtype=np.float64) / 2.0))


def check_scale(scale: Any) -> float:
    """The Bradley-Terry temperature as a float; ``ValueError`` unless it is a positive finite number."""
    if isinstance(scale, bool) or not (isinstance(scale, Real) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"the Bradley-Terry scale must be a positive number, not {scale!r}")
    return float(scale)


class BradleyTerryPreference:
    """A pointwise source as a preference: Bradley & Terry 1952, ``P(y1 > y2 | x) = sigmoid((r(x, y1) -
    r(x, y2)) / scale)`` (the preference model behind RLHF reward models, Ouyang et al. 2022); 0.5 for equal
    rewards, NaN where either reward is NaN. ``scale`` is the temperature of the rewards' units."""

    def __init__(self, source: RewardSource, scale: float = 1.0):
        self.source, self.scale = source, check_scale(scale)
        self.name = f"bt({source.name})" if scale == 1 else f"bt({source.name}, scale={scale:g})"

    def win_probability(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text],
                        metadata: Sequence[dict] | None = None) -> np.ndarray:
        """Bradley-Terry ``sigmoid((r1 - r2) / scale)`` from one batch of ``2 N`` rewards."""
        n = check_lengths(prompts, first, metadata)
        check_lengths(prompts, second)
        both = self.source.rewards([*prompts, *prompts], [*first, *second],
                                   None if metadata is None else [*metadata, *metadata]).total
        return sigmoid((both[:n] - both[n:]) / self.scale)


_VERDICT_FOR_FIRST_SHOWN = {"A": 1.0, "B": 0.0, "tie": 0.5}


class PairwiseJudgePreference:
    """A pairwise judge (:class:`alignkit.rewards.base.PairwiseJudge`, e.g. ``llm:PATH`` in pairwise mode,
    Zheng et al. 2023) as a preference. Every pair is judged in both presentation orders
    (:func:`alignkit.rewards.pairwise.judge_both_orders`) and the two verdicts are averaged::

        P(y1 > y2) = (s(y1, y2) + 1 - s(y2, y1)) / 2,    s = 1 for "A", 0 for "B", 0.5 for "tie"

    so a judge that always picks the first slot gives 0.5 (its position bias cancels); an invalid verdict
    (None) in either order gives NaN. ``last`` keeps the latest :class:`~alignkit.rewards.pairwise.PairwiseResult`
    (position consistency and bias via ``last.stats()``)."""

    def __init__(self, judge: Any, name: str | None = None):
        if not callable(getattr(judge, "compare", None)):
            raise ValueError(f"judge {getattr(judge, 'name', judge)!r} does not compare two responses")
        self.judge = judge
        self.name = name or judge.name
        self.last: Any = None

    def win_probability(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text],
                        metadata: Sequence[dict] | None = None) -> np.ndarray:
        """Both-orders average ``(s(y1, y2) + 1 - s(y2, y1)) / 2`` of the judge's verdicts (Zheng et al. 2023's
        position swap; see the class docstring). ``metadata`` is not shown to the judge."""
        check_lengths(prompts, first, metadata)
        self.last = judge_both_orders(self.judge, list(prompts), list(first), list(second))
        shown_first = np.array([np.nan if v is None else _VERDICT_FOR_FIRST_SHOWN[v] for v in self.last.verdicts_xy])
        shown_second = np.array([np.nan if v is None else 1.0 - _VERDICT_FOR_FIRST_SHOWN[v]
                                 for v in self.last.verdicts_yx])
        return (shown_first + shown_second) / 2.0
