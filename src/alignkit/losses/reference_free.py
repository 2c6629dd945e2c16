"""Reference-free pairwise losses: SLiC-HF, SimPO, CPO, ORPO.

Notation: l = summed response log-probability, lbar = per-token mean, NLL = per-token-mean negative
log-likelihood of the chosen response, ls = log-sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.losses.common import pair_metrics
from alignkit.losses.registry import LossOutput, PairInputs, register_loss


@register_loss("slic", data_kind="pairs", reduction="sum", needs_reference=False,
               paper="Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback "
                     "(arXiv:2305.10425)")
def slic(x: PairInputs, delta: float = 1.0, lam: float = 0.1) -> LossOutput:
    """SLiC-HF: L = max(0, delta - l(y_w) + l(y_l)) - lam * l(y_w).

    Rank calibration hinge plus a regulariser on the log-likelihood of the target, here the chosen response
    (the paper's "SLiC-HF-direct" uses the SFT target; on preference data the chosen response plays that role).
    """
    hinge = F.relu(delta - x.policy_chosen + x.policy_rejected)
    return LossOutput(hinge - lam * x.policy_chosen, pair_metrics(x, x.policy_chosen, x.policy_rejected))


@register_loss("simpo", data_kind="pairs", reduction="mean", needs_reference=False,
               paper="Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward "
                     "(arXiv:2405.14734)")
def simpo(x: PairInputs, beta: float = 2.0, gamma: float = 1.0) -> LossOutput:
    """SimPO: L = -ls(beta * (lbar(y_w) - lbar(y_l)) - gamma).

    The implicit reward is the length-normalised log-likelihood; gamma is the target reward margin
    (paper: beta 2.0-2.5 and gamma/beta about 0.5).
    """
    return LossOutput(-F.logsigmoid(beta * (x.policy_chosen - x.policy_rejected) - gamma),
                      pair_metrics(x, beta * x.policy_chosen, beta * x.policy_rejected))


@register_loss("cpo", data_kind="pairs", reduction="sum", needs_reference=False,
               paper="Xu et al. 2024, Contrastive Preference Optimization: Pushing the Boundaries of LLM "
                     "Performance in Machine Translation (arXiv:2401.08417)")
def cpo(x: PairInputs, beta: float = 0.1, alpha: float = 1.0) -> LossOutput:
    """CPO: L = -ls(beta * (l(y_w) - l(y_l))) + alpha * NLL(y_w).

    DPO with a uniform reference (dropped) plus a behaviour-cloning term on the chosen response.
    """
    losses = -F.logsigmoid(beta * (x.policy_chosen - x.policy_rejected)) + alpha * x.chosen_nll
    return LossOutput(losses, pair_metrics(x, beta * x.policy_chosen, beta * x.policy_rejected))


def log1mexp(v: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(v)) for v < 0, accurate near 0 and for very negative v.

    v is clamped at -1e-20 so that v = 0 (a response of probability 1) stays finite (TRL gives -inf there)."""
    v = v.clamp(max=-1e-20)
    near = v > -0.6931
    # each branch sees only inputs where it is accurate, so neither produces inf (and NaN gradients through where)
    near_zero = torch.log(-torch.expm1(torch.where(near, v, -1.0)))
    far = torch.log1p(-torch.exp(torch.where(near, -1.0, v)))
    return torch.where(near, near_zero, far)


@register_loss("orpo", data_kind="pairs", reduction="mean", needs_reference=False,
               paper="Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model "
                     "(arXiv:2403.07691)")
def orpo(x: PairInputs, lam: float = 0.1) -> LossOutput:
    """ORPO: L = NLL(y_w) - lam * ls(log_odds),
    log_odds = (lbar_w - lbar_l) - (log(1 - exp(lbar_w)) - log(1 - exp(lbar_l))).

    The odds ratio of the chosen over the rejected response, with per-token-mean log-probs. lam (0.1) is
    TRL's ``beta`` for ORPO.
    """
    log_odds = (x.policy_chosen - x.policy_rejected) - (log1mexp(x.policy_chosen) - log1mexp(x.policy_rejected))
    ratio = F.logsigmoid(log_odds)
    metrics = pair_metrics(x, lam * x.policy_chosen, lam * x.policy_rejected)
    metrics["log_odds"] = log_odds.detach()
    return LossOutput(x.chosen_nll - lam * ratio, metrics)
