"""Token-level preference losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.losses.common import pair_metrics
from alignkit.losses.registry import LossOutput, PairInputs, TokenLogps, register_loss


def _weighted(t: TokenLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_t m_t * rho_t, sum_t m'_t * kl_t) over one sequence's response tokens."""
    rho = (t.policy - t.reference) * t.mask
    return (t.weights * rho).sum(-1), (t.kl_weights * t.kl * t.mask).sum(-1)


@register_loss("sparsepo", data_kind="pairs", reduction="sum", needs_reference=True, token_level=True,
               paper="Christopoulou et al. 2024, SparsePO: Controlling Preference Alignment of LLMs via Sparse "
                     "Token Masks (arXiv:2410.05102)")
def sparsepo(x: PairInputs, beta: float = 0.1, mask: str = "activations", independent: bool = False,
             l1: float = 0.0) -> LossOutput:
    """SparsePO: L = -ls(beta * (u - d)) + l1 * (|m(y_w)|_1 + |m(y_l)|_1),
    u = sum_t m_t rho_t(y_w) - sum_t m_t rho_t(y_l),  d = sum_t m'_t k_t(y_w) - sum_t m'_t k_t(y_l).

    rho_t = log pi(y_t) - log pi_ref(y_t); k_t = sum_v pi_ref(v) (log pi(v) - log pi_ref(v)) is the per-token
    (negative) KL of the TDPO form. ``mask``: ``activations`` (fixed weights in [0, 1] from the reference model's
    activations, the same for u and d, no L1) or ``learned`` (a trainable head on the reference's hidden states,
    shared by u and d unless ``independent``; its L1 penalty ``l1``, halved for a shared mask as in the authors'
    code). With all weights 1 it is TDPO-style token-level DPO. Defaults from the authors' code (beta 0.1).
    """
    if mask not in ("activations", "learned"):
        raise ValueError(f"sparsepo mask must be 'activations' or 'learned', got {mask!r}")
    c, r = x.tokens_chosen, x.tokens_rejected
    (uc, dc), (ur, dr) = _weighted(c), _weighted(r)
    u, d = uc - ur, dc - dr
    losses = -F.logsigmoid(beta * (u - d))
    if mask == "learned" and l1:
        scale = 1.0 if independent else 0.5
        penalty = sum((t.weights * t.mask).sum(-1) + (t.kl_weights * t.mask).sum(-1) for t in (c, r))
        losses = losses + scale * l1 * penalty
    metrics = pair_metrics(x, (beta * uc).detach(), (beta * ur).detach())
    metrics["mask/mean_weight"] = ((c.weights * c.mask).sum(-1) / c.mask.sum(-1).clamp(min=1)).detach()
    metrics["kl/token_term"] = (d).detach()
    return LossOutput(losses, metrics)
