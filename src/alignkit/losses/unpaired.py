"""Losses for unpaired binary feedback (one response, desirable or not): KTO and BCO; and BCO's pair form.

Notation: rho(y) = l(y) - l_ref(y) with summed log-probs; label 1 = desirable, 0 = undesirable; ls = log-sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.losses.common import reference_metrics
from alignkit.losses.registry import LossOutput, PairInputs, UnpairedInputs, register_loss
from alignkit.losses.state import RunningMean


def unpaired_metrics(x: UnpairedInputs, beta: float, rho: torch.Tensor) -> dict[str, torch.Tensor]:
    rewards = (beta * rho).detach()
    return {"rewards/implicit": rewards, "rewards/desirable": torch.where(x.labels > 0, rewards, torch.nan),
            "rewards/undesirable": torch.where(x.labels > 0, torch.nan, rewards), "logps/policy": x.policy.detach()}


@register_loss("kto", data_kind="unpaired", reduction="sum", needs_reference=True, mismatched_pairs=True,
               paper="Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization "
                     "(arXiv:2402.01306)")
def kto(x: UnpairedInputs, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> LossOutput:
    """KTO: L = lamD * (1 - sigma(beta * (rho(y) - z0))) for desirable y,
    L = lamU * (1 - sigma(beta * (z0 - rho(y)))) for undesirable y.

    The reference point z0 = max(0, mean over the batch of rho(x, y')) is estimated on mismatched pairs (each
    prompt with a response to a different prompt, from a seeded shuffle: see train.preference.mismatched_partners),
    detached and averaged across processes. Set lamD * n_D / (lamU * n_U)
    to 1-4/3 when classes are imbalanced (paper).
    """
    rho = x.policy - x.reference
    if x.kl_policy is None:
        raise ValueError("kto needs the mismatched-pair log-probs (kl_policy / kl_reference)")
    kl = (x.kl_policy - x.kl_reference).detach().mean()
    kl = x.reducer.mean(kl).clamp(min=0)
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (rho - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - rho)))
    metrics = unpaired_metrics(x, beta, rho)
    metrics["kl"] = kl.expand_as(rho)
    return LossOutput(torch.where(x.labels > 0, desirable, undesirable), metrics)


BCO_PAPER = "Jung et al. 2024, Binary Classifier Optimization for Large Language Model Alignment (arXiv:2404.04656)"


@register_loss("bco", data_kind="unpaired", reduction="sum", needs_reference=True, paper=BCO_PAPER, stateful=True)
def bco(x: UnpairedInputs, beta: float = 0.1, udm: bool = False) -> LossOutput:
    """BCO: L = -ls(beta * rho(y) - delta) for desirable y, L = -w(x) * ls(-(beta * rho(y) - delta)) for undesirable.

    The implicit reward beta * rho is a binary classifier's logit; delta is the running mean of all implicit
    rewards seen so far (kept across steps, synchronised across processes, saved in checkpoints). With ``udm``
    the undesirable examples are weighted by w(x) = clamp(p / (1 - p), 0.5, 10.0), p a classifier's probability
    that the prompt comes from the desirable set (underlying distribution matching), supplied as ``weights``.
    """
    rho = x.policy - x.reference
    state: RunningMean = x.state
    rewards = beta * rho
    delta = state.update(rewards, x.reducer) if state is not None else 0.0
    weights = x.weights if (udm and x.weights is not None) else torch.ones_like(rho)
    losses = torch.where(x.labels > 0, -F.logsigmoid(rewards - delta), -weights * F.logsigmoid(-(rewards - delta)))
    metrics = unpaired_metrics(x, beta, rho)
    metrics["delta"] = torch.full_like(rho, float(delta)).detach()
    return LossOutput(losses, metrics)


@register_loss("bco_pair", data_kind="pairs", reduction="sum", needs_reference=True, paper=BCO_PAPER, stateful=True)
def bco_pair(x: PairInputs, beta: float = 0.1) -> LossOutput:
    """BCO on pairs: L = -ls(beta * rho(y_w) - delta) - ls(-(beta * rho(y_l) - delta)).

    delta = running mean of the implicit rewards of all chosen and rejected responses seen so far.
    """
    chosen, rejected = beta * x.chosen_logratios, beta * x.rejected_logratios
    state: RunningMean | None = x.state
    delta = state.update(torch.cat([chosen, rejected]), x.reducer) if state is not None else 0.0
    losses = -F.logsigmoid(chosen - delta) - F.logsigmoid(-(rejected - delta))
    metrics = reference_metrics(x, beta)
    metrics["delta"] = torch.full_like(chosen, float(delta)).detach()
    return LossOutput(losses, metrics)
