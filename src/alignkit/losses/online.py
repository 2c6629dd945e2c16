"""Losses of online methods that add a term on a response sampled from the reference policy (pairs).

The online recipe (:mod:`alignkit.recipes.online`) pairs one policy sample with one reference sample, labels the
pair with the reward source, and marks which of the two came from the reference in the record's scores
(``is_reference_sample``: 1 for that response, 0 for the other). With y_ref that response and the usual
D = rho(y_w) - rho(y_l):

- XPO adds alpha * l(y_ref): minimising it lowers the likelihood of what the reference already writes, an
  exploration bonus;
- SELM adds alpha * beta * rho(y_ref): the same idea measured against the reference (optimism towards responses
  the reference does not favour).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.data.records import DataError
from alignkit.losses.common import reference_metrics
from alignkit.losses.registry import LossOutput, PairInputs, register_loss

REFERENCE_SAMPLE = "is_reference_sample"


def reference_sample_values(x: PairInputs, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per example, the value (``chosen`` or ``rejected``) of the response that was sampled from the reference."""
    if REFERENCE_SAMPLE not in x.scores_chosen:
        raise DataError(f"this loss needs records whose scores say which response the reference sampled "
                        f"('{REFERENCE_SAMPLE}'); train it with recipe: online", field="scores")
    from_ref_chosen = x.scores_chosen[REFERENCE_SAMPLE].to(chosen.dtype)
    from_ref_rejected = x.scores_rejected[REFERENCE_SAMPLE].to(chosen.dtype)
    return from_ref_chosen * chosen + from_ref_rejected * rejected


@register_loss("xpo", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Xie et al. 2024, Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation "
                     "for Sample-Efficient RLHF (XPO, arXiv:2405.21046)")
def xpo(x: PairInputs, beta: float = 0.1, alpha: float = 1e-5) -> LossOutput:
    """XPO: L = -ls(beta * D) + alpha * l(y_ref), y_ref ~ pi_ref one of the pair.

    The pair is (a policy sample, a reference sample), ordered by the reward source; alpha (1e-5 in the paper's
    experiments) weighs the exploration bonus.
    """
    bonus = reference_sample_values(x, x.policy_chosen, x.policy_rejected)
    metrics = reference_metrics(x, beta)
    metrics["logps/reference_sample"] = bonus.detach()
    return LossOutput(-F.logsigmoid(beta * x.margin) + alpha * bonus, metrics)


@register_loss("selm", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Zhang et al. 2024, Self-Exploring Language Models: Active Preference Elicitation for Online "
                     "Alignment (SELM, arXiv:2405.19332)")
def selm(x: PairInputs, beta: float = 0.01, alpha: float = 0.001) -> LossOutput:
    """SELM: L = -ls(beta * D) + alpha * beta * rho(y_ref), y_ref ~ pi_ref one of the pair.

    The optimism term as written in alignkit's formula sheet (METHODS.md; not re-derived from the paper here);
    the method iterates with pi_ref <- pi every round (``online.rounds``).
    """
    rho_ref = reference_sample_values(x, x.chosen_logratios, x.rejected_logratios)
    metrics = reference_metrics(x, beta)
    metrics["rewards/reference_sample"] = (beta * rho_ref).detach()
    return LossOutput(-F.logsigmoid(beta * x.margin) + alpha * beta * rho_ref, metrics)
