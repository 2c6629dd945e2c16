"""Small helpers shared by the loss modules."""

from __future__ import annotations

import torch

from alignkit.losses.registry import PairInputs


def pair_metrics(x: PairInputs, chosen_reward: torch.Tensor, rejected_reward: torch.Tensor) -> dict[str, torch.Tensor]:
    """The usual pairwise metrics from implicit rewards (detached)."""
    chosen, rejected = chosen_reward.detach(), rejected_reward.detach()
    return {"rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margin": chosen - rejected,
            "rewards/accuracy": (chosen > rejected).to(chosen.dtype),
            "logps/chosen": x.policy_chosen.detach(), "logps/rejected": x.policy_rejected.detach()}


def reference_metrics(x: PairInputs, beta: float) -> dict[str, torch.Tensor]:
    """Metrics with implicit rewards beta * (log pi - log pi_ref)."""
    return pair_metrics(x, beta * x.chosen_logratios, beta * x.rejected_logratios)
