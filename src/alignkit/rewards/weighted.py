"""Weighted mappings ``{spec: weight, ...}``: several reward sources combined linearly."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from alignkit.data.records import Text
from alignkit.rewards.base import Rewards, RewardSource, check_lengths


class WeightedSource:
    """Several sources combined linearly: ``r(x, y) = sum_m w_m r_m(x, y)`` (the linear scalarisation of
    multi-objective RLHF, e.g. Rame et al. 2023 "Rewarded soups" / Zhou et al. 2023 MODPO's weighted rewards).
    A NaN from any member makes the total NaN. Components: each member's total under its spec, and the
    member's own components as ``<spec>/<component>``."""

    def __init__(self, members: Sequence[tuple[str, float, RewardSource]]):
        if not members:
            raise ValueError("a weighted reward source needs at least one member")
        self.members = [(spec, float(weight), source) for spec, weight, source in members]
        self.name = " + ".join(f"{w:g}*{spec}" for spec, w, _ in self.members)

    def rewards(self, prompts: Sequence[Text], responses: Sequence[Text],
                metadata: Sequence[dict] | None = None) -> Rewards:
        """``sum_m w_m r_m`` per response (NaN if any member is NaN); components: every member's rewards."""
        n = check_lengths(prompts, responses, metadata)
        total = np.zeros(n)
        components: dict[str, np.ndarray] = {}
        for spec, weight, source in self.members:
            result = source.rewards(prompts, responses, metadata)
            total = total + weight * result.total
            components[spec] = result.total
            components.update({f"{spec}/{k}": v for k, v in result.components.items()})
        return Rewards(total, components)
