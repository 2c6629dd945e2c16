"""Statistical rejection sampling (RSO) of preference-optimisation data from SFT-policy candidates.

Liu et al. 2024, "Statistical Rejection Sampling Improves Preference Optimization" (arXiv:2309.06657): the
optimal KL-regularised policy is ``pi*(y|x) ∝ pi_sft(y|x) * exp(r(x, y) / beta)``. With candidates ``y_i`` drawn
from ``pi_sft`` as proposals, rejection sampling with envelope ``M = exp((r_max - r) / beta)`` accepts a
candidate with probability ``exp((r(x, y_i) - r_max) / beta)``, where ``r_max`` is the largest reward among the
remaining candidates (the paper's estimate of the supremum): accepted responses are (approximately, exactly
when ``r_max`` is the supremum) draws from ``pi*``. ``beta -> inf`` accepts everything (``pi_sft``), ``beta -> 0``
only the best (best-of-n).
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch


def _uniform(generator: torch.Generator | random.Random) -> float:
    if isinstance(generator, random.Random):
        return generator.random()
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def _shuffled(items: list[int], generator: torch.Generator | random.Random) -> list[int]:
    if isinstance(generator, random.Random):
        out = list(items)
        generator.shuffle(out)
        return out
    return [items[k] for k in torch.randperm(len(items), generator=generator).tolist()]


def rso_select(rewards: Sequence[float], beta: float, num_accept: int,
               generator: torch.Generator | random.Random) -> list[int]:
    """Statistical rejection sampling (Liu et al. 2024, "Statistical Rejection Sampling Improves Preference
    Optimization", Algorithm 1): indices of up to ``num_accept`` candidates, in order of acceptance, approximately
    distributed as ``pi*(y) ∝ pi_sft(y) * exp(r(y) / beta)`` when the candidates are draws from ``pi_sft``.

    Repeat until ``num_accept`` are accepted or no candidate remains: ``r_max`` = the largest reward among the
    remaining candidates; visit the remaining candidates in random order and accept each with probability
    ``exp((r - r_max) / beta)`` (the one with ``r_max`` always), stopping as soon as ``num_accept`` are accepted;
    remove the accepted ones. Randomness (order and acceptance draws) comes only from ``generator``."""
    if beta <= 0 or math.isnan(beta):
        raise ValueError(f"beta must be > 0, got {beta}")
    values = [float(r) for r in rewards]
    if any(math.isnan(r) for r in values):
        raise ValueError("rewards contain NaN; score or drop those candidates first")
    remaining = list(range(len(values)))
    accepted: list[int] = []
    while remaining and len(accepted) < num_accept:
        r_max = max(values[i] for i in remaining)
        taken = []
        for i in _shuffled(remaining, generator):
            accept = 1.0 if values[i] == r_max else math.exp((values[i] - r_max) / beta)  # inf - inf safe
            if _uniform(generator) < accept:
                accepted.append(i)
                taken.append(i)
                if len(accepted) == num_accept:
                    break
        remaining = [i for i in remaining if i not in taken]
    return accepted
