"""Multi-objective direct preference optimisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.losses.common import reference_metrics
from alignkit.losses.registry import LossOutput, PairInputs, register_loss


@register_loss("modpo", data_kind="pairs", reduction="sum", needs_reference=True,
               paper="Zhou et al. 2024, Beyond One-Preference-Fits-All Alignment: Multi-Objective Direct "
                     "Preference Optimization (MODPO, arXiv:2310.03708)")
def modpo(x: PairInputs, beta: float = 0.1, weight: float = 0.5, margins: dict | None = None) -> LossOutput:
    """MODPO: L = -ls( (1/w_k) * (beta * D - sum_o w_o * (r_o(y_w) - r_o(y_l))) ).

    The pairs express preferences on objective k (weight w_k = ``weight``); ``margins`` maps the names of the
    records' per-response scores of the other objectives o (from reward models, or gold in the sandbox) to their
    weights w_o, with w_k + sum_o w_o = 1. The policy that minimises this is the optimum of the w-weighted
    reward, so different weightings give different trade-offs.
    """
    margins = margins or {}
    total = weight + sum(margins.values())
    if not 0 < weight <= 1 or abs(total - 1) > 1e-6:
        raise ValueError(f"modpo weights must be positive and sum to 1 (weight={weight}, margins={margins})")
    shift = torch.zeros_like(x.policy_chosen)
    for name, w in margins.items():
        if name not in x.scores_chosen:
            raise KeyError(f"modpo margin '{name}' is not among the records' scores: {sorted(x.scores_chosen)}")
        shift = shift + w * (x.scores_chosen[name] - x.scores_rejected[name])
    return LossOutput(-F.logsigmoid((beta * x.margin - shift) / weight), reference_metrics(x, beta))
