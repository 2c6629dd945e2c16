"""Best-of-n sampling: draw n responses from the policy, keep the one the reward model likes best.

The selection rule and the analytic KL bound that is usually quoted for it (Stiennon et al. 2020, "Learning to
summarize from human feedback"; proved as an upper bound by Beirami et al. 2024, "Theoretical guarantees on the
best-of-n alignment policy"):

    KL(pi_BoN || pi) <= log n - (n - 1) / n,

with equality in the limit of a continuous reward with no ties (every response distinct and of vanishing
probability). For a discrete policy the exact KL is smaller.
"""

from __future__ import annotations

import math

import torch


def best_of_n(rewards: torch.Tensor) -> torch.Tensor:
    """Best-of-n selection (Stiennon et al. 2020, "Learning to summarize from human feedback"): for rewards
    ``r[p, j]`` of the ``N`` candidates of ``P`` prompts, the index ``argmax_j r[p, j]`` per prompt, shape ``[P]``.

    Ties go to the lowest index; a NaN reward (a judge that gave no score) counts as ``-inf``, so it is chosen
    only when every candidate of the prompt is NaN (then index 0)."""
    if rewards.dim() != 2 or rewards.shape[1] == 0:
        raise ValueError(f"rewards must have shape [prompts, n] with n >= 1, got {tuple(rewards.shape)}")
    r = torch.nan_to_num(rewards.double(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    is_best = r == r.max(dim=1, keepdim=True).values
    index = torch.arange(r.shape[1], device=r.device).expand_as(r)
    return torch.where(is_best, index, torch.full_like(index, r.shape[1])).min(dim=1).values


def best_of_n_kl(n: int) -> float:
    """Analytic KL of the best-of-n policy from the sampling policy (Stiennon et al. 2020, "Learning to summarize
    from human feedback", App. G.3; Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment
    policy", an upper bound): ``KL(pi_BoN || pi) <= log n - (n - 1) / n`` nats (0 for n = 1)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n
