"""Alignment from negative samples only."""

from __future__ import annotations

import torch.nn.functional as F

from alignkit.losses.registry import LossOutput, NegativesInputs, register_loss


@register_loss("d2o", data_kind="negatives", reduction="sum", needs_reference=True,
               paper="Duan et al. 2024, Negating Negatives: Alignment with Human Negative Samples via "
                     "Distributional Dispreference Optimization (D2O, arXiv:2403.03419), eq. 3")
def d2o(x: NegativesInputs, beta: float = 0.1, alpha: float = 0.1, num_samples: int = 11) -> LossOutput:
    """D2O: L = -ls( (beta/K) * sum_i [l(y_i) - l_ref(y_i)] - alpha * [l(y_l) - l_ref(y_l)] ).

    y_l is the human negative; y_1..y_K are K (``num_samples``) responses sampled from the reference policy
    before training, which stand in for "anything but the negative" (the distributional dispreference).
    The paper allows two references (one per term); its experiments use the SFT model for both, as here.
    """
    k = x.samples_valid.sum(-1).clamp(min=1).to(x.samples_policy.dtype)
    samples = ((x.samples_policy - x.samples_reference) * x.samples_valid).sum(-1)
    negative = x.negative_policy - x.negative_reference
    logits = (beta / k) * samples - alpha * negative
    return LossOutput(-F.logsigmoid(logits), {
        "rewards/samples": (beta * samples / k).detach(), "rewards/negative": (beta * negative).detach(),
        "rewards/margin": logits.detach(), "logps/negative": x.negative_policy.detach()})
