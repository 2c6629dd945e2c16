"""Direct Preference Optimization and its sigmoid-family relatives."""

from __future__ import annotations

import torch.nn.functional as F

from alignkit.losses.registry import LossOutput, PairInputs, register_loss


def implicit_rewards(x: PairInputs, beta: float):
    """beta * (policy - reference) log-ratio of chosen and rejected responses (detached, for metrics)."""
    return (beta * (x.policy_chosen - x.ref_chosen)).detach(), (beta * (x.policy_rejected - x.ref_rejected)).detach()


@register_loss("dpo", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly "
                     "a Reward Model (arXiv:2305.18290)")
def dpo(x: PairInputs, beta: float = 0.1) -> LossOutput:
    """DPO: L = -log sigmoid(beta * [(l(y_w) - l_ref(y_w)) - (l(y_l) - l_ref(y_l))]).

    l is the summed log-probability of the response tokens. beta (0.1 in the paper) is the strength of the
    implicit KL constraint to the reference policy. Computed with ``logsigmoid`` so extreme margins are safe.
    """
    margin = (x.policy_chosen - x.ref_chosen) - (x.policy_rejected - x.ref_rejected)
    chosen, rejected = implicit_rewards(x, beta)
    return LossOutput(-F.logsigmoid(beta * margin), {
        "rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margin": chosen - rejected,
        "rewards/accuracy": (chosen > rejected).float(),
        "logps/chosen": x.policy_chosen.detach(), "logps/rejected": x.policy_rejected.detach(),
    })
