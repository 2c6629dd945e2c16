"""Token masks for token-level preference losses (SparsePO), computed from the reference model's activations.

- :func:`activation_mask`: fixed weights in [0, 1]. Each layer's hidden state is averaged over the hidden
  dimension to one scalar per token, z-normalised over the response tokens of its sequence, min-max rescaled to
  [0, 1] per sequence, and the layers are averaged. (The SparsePO authors hook more activation points — MLP
  outputs, attention projections, logits; alignkit uses the residual stream of every layer.)
- :class:`LearnedTokenMask`: a small trainable head on the same per-layer hidden states — a shared LayerNorm,
  a Linear(hidden -> 1) with ReLU per layer, then a Linear(layers -> 1, no bias) with ReLU — giving non-negative,
  unbounded weights, kept sparse by an L1 penalty in the loss.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _per_sequence_rescale(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    n = m.sum(-1, keepdim=True).clamp(min=1)
    mean = (values * m).sum(-1, keepdim=True) / n
    std = (((values - mean) ** 2) * m).sum(-1, keepdim=True).div(n).sqrt()
    z = (values - mean) / (std + 1e-6)
    low = torch.where(mask, z, torch.full_like(z, float("inf"))).amin(-1, keepdim=True)
    high = torch.where(mask, z, torch.full_like(z, float("-inf"))).amax(-1, keepdim=True)
    scaled = (z - low) / (high - low).clamp(min=1e-6)
    return torch.where(mask, scaled, torch.zeros_like(scaled))


@torch.no_grad()
def activation_mask(hidden_states: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """[N, T] weights in [0, 1] on ``mask`` (zero elsewhere) from per-layer hidden states [N, T, H].

    The weight of token t comes from the activations at position t - 1, the position that predicts it."""
    per_layer = []
    for h in hidden_states:
        scalar = h.float().mean(-1)
        shifted = torch.zeros_like(scalar)
        shifted[:, 1:] = scalar[:, :-1]
        per_layer.append(_per_sequence_rescale(shifted, mask))
    return torch.stack(per_layer).mean(0)


class LearnedTokenMask(nn.Module):
    """Per-token non-negative weights from per-layer hidden states (SparsePO's learned mask)."""

    def __init__(self, hidden_size: int, num_layers: int, dropout: float = 0.01):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.per_layer = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.mix = nn.Linear(num_layers, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        nn.init.constant_(self.mix.weight, 1.0 / num_layers)
        for layer in self.per_layer:  # start near 1 everywhere: the loss begins as plain token-level DPO
            nn.init.zeros_(layer.weight)
            nn.init.constant_(layer.bias, 1.0)

    def forward(self, hidden_states: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        scores = [torch.relu(layer(self.norm(h.detach()))).squeeze(-1) for layer, h in zip(self.per_layer, hidden_states)]
        mixed = torch.relu(self.mix(self.dropout(torch.stack(scores, -1)))).squeeze(-1)
        shifted = torch.zeros_like(mixed)
        shifted[:, 1:] = mixed[:, :-1]
        return shifted * mask
