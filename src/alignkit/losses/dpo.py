"""Direct Preference Optimization and its sigmoid-family relatives (pairs, with a reference policy).

Notation: D = (l(y_w) - l_ref(y_w)) - (l(y_l) - l_ref(y_l)) with l the summed response log-probability
(per-token mean for LN-DPO), ls = log-sigmoid. Every loss is written with ``logsigmoid`` / ``softplus`` so that
extreme margins stay finite in float32 and bfloat16.
"""

from __future__ import annotations

import torch.nn.functional as F

from alignkit.losses.common import reference_metrics
from alignkit.losses.registry import LossOutput, PairInputs, register_loss

DPO_PAPER = ("Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward "
             "Model (arXiv:2305.18290)")


@register_loss("dpo", data_kind="pairs", reduction="sum", needs_reference=True, paper=DPO_PAPER,
               aliases=("sigmoid",))
def dpo(x: PairInputs, beta: float = 0.1) -> LossOutput:
    """DPO: L = -ls(beta * D).

    beta (0.1 in the paper) is the strength of the implicit KL constraint to the reference policy.
    """
    return LossOutput(-F.logsigmoid(beta * x.margin), reference_metrics(x, beta))


@register_loss("cdpo", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Mitchell 2023, A note on DPO with noisy preferences and relationship to IPO (conservative DPO)")
def cdpo(x: PairInputs, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Conservative DPO: L = -(1 - e) * ls(beta * D) - e * ls(-beta * D).

    DPO against labels that are flipped with probability e (label smoothing; 0.1-0.2 typical). TRL before 1.0
    computed it as ``sigmoid`` with ``label_smoothing = e``; TRL 1.x ignores label smoothing there.
    """
    z = beta * x.margin
    return LossOutput(-(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z),
                      reference_metrics(x, beta))


@register_loss("robust", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Chowdhury et al. 2024, Provably Robust DPO: Aligning Language Models with Noisy Feedback "
                     "(arXiv:2403.00409)", aliases=("rdpo",))
def robust(x: PairInputs, beta: float = 0.1, label_smoothing: float = 0.1) -> LossOutput:
    """Robust DPO (rDPO): L = [-(1 - e) * ls(beta * D) + e * ls(-beta * D)] / (1 - 2e).

    An unbiased estimate of the clean-label DPO loss when labels flip with known probability 0 <= e < 0.5.
    Note the + sign on the second term: unlike cDPO, it corrects for the noise instead of smoothing towards it.
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    z = beta * x.margin
    losses = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return LossOutput(losses, reference_metrics(x, beta))


@register_loss("ln_dpo", data_kind="pairs", reduction="mean", needs_reference=True, aliases=("sigmoid_norm",),
               paper="Ahrabian et al. 2024, A Practical Analysis of Human Alignment with *PO (LN-DPO, "
                     "arXiv:2407.15229)")
def ln_dpo(x: PairInputs, beta: float = 5.0) -> LossOutput:
    """Length-normalised DPO: L = -ls(beta * (rho(y_w)/|y_w| - rho(y_l)/|y_l|)).

    rho = l - l_ref; the per-token-mean reduction makes the log-ratios length-free, so beta must be larger than
    DPO's (per-token log-ratios are ~|y| times smaller). Default 5.0 as in OLMo 2's length-normalised DPO (the
    paper's own recommendation could not be confirmed). ``sigmoid_norm`` is an alias.
    """
    return LossOutput(-F.logsigmoid(beta * x.margin), reference_metrics(x, beta))


@register_loss("hinge", data_kind="pairs", reduction="sum", needs_reference=True, aliases=("rso_hinge",),
               paper="Liu et al. 2024, Statistical Rejection Sampling Improves Preference Optimization "
                     "(RSO, arXiv:2309.06657), hinge-norm loss")
def hinge(x: PairInputs, beta: float = 0.05) -> LossOutput:
    """RSO hinge-norm: L = max(0, 1 - gamma * D), with gamma = ``beta``.

    A SLiC-style hinge on the reference-normalised margin (D is measured against the SFT/reference policy).
    """
    return LossOutput(F.relu(1 - beta * x.margin), reference_metrics(x, beta))


@register_loss("ipo", data_kind="pairs", reduction="mean", needs_reference=True,
               paper="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human "
                     "Preferences (IPO, arXiv:2310.12036); per-token-mean form as in TRL")
def ipo(x: PairInputs, beta: float = 0.1) -> LossOutput:
    """IPO (default, per-token mean): L = (D_mean - 1/(2 * beta))^2 with D_mean built from per-token means.

    The paper writes D with summed log-probs (``ipo_sum``); with sums the target margin 1/(2 beta) is reached
    trivially by long responses, so the per-token-mean form (TRL's, reportedly confirmed by the authors) is the
    default here.
    """
    return LossOutput((x.margin - 1 / (2 * beta)) ** 2, reference_metrics(x, beta))


@register_loss("ipo_sum", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human "
                     "Preferences (IPO, arXiv:2310.12036), as written in the paper")
def ipo_sum(x: PairInputs, beta: float = 0.1) -> LossOutput:
    """IPO as in the paper: L = (D - 1/(2 * beta))^2 with summed log-probs."""
    return LossOutput((x.margin - 1 / (2 * beta)) ** 2, reference_metrics(x, beta))
