"""Further pairwise losses TRL users know, on the reference log-ratios (pairs, with a reference policy).

Notation: c = l(y_w) - l_ref(y_w), r = l(y_l) - l_ref(y_l) (summed log-probs), D = c - r, ls = log-sigmoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from alignkit.losses.common import reference_metrics
from alignkit.losses.registry import LossOutput, PairInputs, register_loss


@register_loss("nca_pair", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Chen et al. 2024, Noise Contrastive Alignment of Language Models with Explicit Rewards "
                     "(arXiv:2402.05369)")
def nca_pair(x: PairInputs, beta: float = 0.1) -> LossOutput:
    """NCA (pairwise): L = -ls(beta * c) - 0.5 * ls(-beta * c) - 0.5 * ls(-beta * r).

    Optimises absolute implicit rewards, not only their difference, so the chosen likelihood is not pushed down.
    """
    bc, br = beta * x.chosen_logratios, beta * x.rejected_logratios
    return LossOutput(-F.logsigmoid(bc) - 0.5 * F.logsigmoid(-bc) - 0.5 * F.logsigmoid(-br), reference_metrics(x, beta))


@register_loss("exo_pair", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Ji et al. 2024, Towards Efficient Exact Optimization of Language Model Alignment "
                     "(EXO, arXiv:2402.00856), eq. 16")
def exo_pair(x: PairInputs, beta: float = 0.1, epsilon: float = 1e-3) -> LossOutput:
    """EXO (pairwise): L = s(z) * (ls(z) - log(1 - e)) + s(-z) * (ls(-z) - log(e)), z = beta * D.

    The reverse KL between the model's pair distribution sigma(z) and the (epsilon-smoothed) label distribution.
    """
    if not 0 < epsilon < 1:
        raise ValueError(f"exo_pair needs 0 < epsilon < 1, got {epsilon}")
    z = beta * x.margin
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - epsilon)) + \
        torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(epsilon))
    return LossOutput(losses, reference_metrics(x, beta))


APO_PAPER = ("D'Oosterlinck et al. 2024, Anchored Preference Optimization and Contrastive Revisions "
             "(arXiv:2408.06266)")


@register_loss("apo_zero", data_kind="pairs", reduction="sum", needs_reference=True, paper=APO_PAPER)
def apo_zero(x: PairInputs, beta: float = 0.1) -> LossOutput:
    """Anchored PO, zero: L = (1 - sigma(beta * c)) + sigma(beta * r).

    Raises the chosen and lowers the rejected likelihood: for chosen outputs better than the model's own.
    """
    losses = 1 - torch.sigmoid(beta * x.chosen_logratios) + torch.sigmoid(beta * x.rejected_logratios)
    return LossOutput(losses, reference_metrics(x, beta))


@register_loss("apo_down", data_kind="pairs", reduction="sum", needs_reference=True, paper=APO_PAPER)
def apo_down(x: PairInputs, beta: float = 0.1) -> LossOutput:
    """Anchored PO, down: L = sigma(beta * c) + (1 - sigma(beta * D)).

    Lowers both likelihoods while keeping the chosen above the rejected: for chosen outputs worse than the model's.
    """
    losses = torch.sigmoid(beta * x.chosen_logratios) + 1 - torch.sigmoid(beta * x.margin)
    return LossOutput(losses, reference_metrics(x, beta))


AOT_PAPER = ("Melnyk et al. 2024, Distributional Preference Alignment of LLMs via Optimal Transport "
             "(AOT, arXiv:2406.05882)")


def _smoothed(delta: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


@register_loss("aot", data_kind="pairs", reduction="sum", needs_reference=True, paper=AOT_PAPER, batch_coupled=True)
def aot(x: PairInputs, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """AOT (paired data): L = -ls(beta * (sort(l_w - l_l)_i - sort(l_ref,w - l_ref,l)_i)) for example i.

    The distribution of the policy's chosen-minus-rejected log-ratio over the batch should dominate the
    reference's (first-order stochastic dominance via 1-D optimal transport: compare sorted quantiles).
    Batch-coupled: one example's loss depends on the others, so gradient accumulation is not equivalent to a
    larger batch. Same as TRL's ``aot``.
    """
    policy = torch.sort(x.policy_chosen - x.policy_rejected).values
    reference = torch.sort(x.ref_chosen - x.ref_rejected).values
    return LossOutput(_smoothed(policy - reference, beta, label_smoothing), reference_metrics(x, beta))


@register_loss("aot_pair", data_kind="pairs", reduction="sum", needs_reference=True, paper=AOT_PAPER,
               batch_coupled=True)
def aot_pair(x: PairInputs, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """AOT (unpaired data): L = -ls(beta * (sort(c)_i - sort(r)_i)) for example i.

    The distribution of chosen implicit rewards should dominate that of rejected ones, without using the
    pairing (so it also fits unpaired data). Batch-coupled, like ``aot``. Same as TRL's ``aot_pair``
    (renamed ``aot_unpaired`` in newer TRL).
    """
    delta = torch.sort(x.chosen_logratios).values - torch.sort(x.rejected_logratios).values
    return LossOutput(_smoothed(delta, beta, label_smoothing), reference_metrics(x, beta))


@register_loss("discopop", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Lu et al. 2024, Discovering Preference Optimization Algorithms with and for Large Language "
                     "Models (DiscoPOP, arXiv:2406.08414), eq. 5")
def discopop(x: PairInputs, beta: float = 0.05, tau: float = 0.05) -> LossOutput:
    """DiscoPOP (log-ratio modulated): L = (1 - m) * (-ls(z)) + m * exp(-z), z = beta * D, m = sigma(z / tau).

    A blend of the logistic (DPO) and exponential losses, found by LLM-driven search. m * exp(-z) is computed as
    exp(ls(z / tau) - z) so that it cannot overflow.
    """
    z = beta * x.margin
    m = torch.sigmoid(z / tau)
    return LossOutput((1 - m) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / tau) - z), reference_metrics(x, beta))
