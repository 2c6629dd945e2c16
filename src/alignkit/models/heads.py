"""The extra models of ``recipe: rl``: the value function (a linear head on the policy, or a critic initialised from a
reward model) and SALSA's reference soup.

Values are laid out like log-probs (:class:`alignkit.models.logps.SequenceLogps`): ``values[i, t]`` is ``V`` of the state
that predicts token ``t`` (read at position ``t - 1``, the position whose output scores token ``t``), so
``values`` and ``token_logps`` share the response mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from alignkit.data.collate import Batch


def align_to_tokens(per_position: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` outputs at every position -> ``[N, T]`` aligned with the tokens they predict (column 0 is 0)."""
    out = torch.zeros_like(per_position)
    out[:, 1:] = per_position[:, :-1]
    return out


class ValueHead(nn.Module):
    """``V(h) = w . h + b`` on the policy's last hidden state (the shared-trunk value function of Ziegler et al.
    2019 and TRL's old ``AutoModelForCausalLMWithValueHead``). Zero-initialised: the first values are 0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


class Critic(nn.Module):
    """A separate value model: a transformer backbone and a scalar head at every position, initialised from a
    reward model directory (InstructGPT / PPO-max: "critic initialised from the reward model"). A reward model with
    several heads (ensemble members, annotator groups) starts from their mean."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(head.in_features, 1, bias=True, dtype=head.weight.dtype, device=head.weight.device)
        with torch.no_grad():
            self.head.weight.copy_(head.weight.mean(0, keepdim=True))
            self.head.bias.copy_(head.bias.mean() if head.bias is not None else torch.zeros(()))

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden = self.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               use_cache=False).last_hidden_state
        return align_to_tokens(self.head(hidden).squeeze(-1).float())


@torch.no_grad()
def weight_soup(models: Sequence[nn.Module], weights: Sequence[float]) -> nn.Module:
    """SALSA's reference (Chegini et al. 2024, "SALSA: Soup-based Alignment Learning for Stronger Adaptation in
    RLHF", arXiv:2411.01798): ``theta_soup = sum_m w_m theta_m`` over models of one architecture, written into the
    first model (returned). Non-float buffers are taken from the first model; tied weights are mixed once."""
    if len(models) != len(weights) or not models:
        raise ValueError("weight_soup needs one weight per model")
    first, *others = models
    states = [m.state_dict() for m in others]
    done: set[int] = set()  # tied weights (embeddings = LM head) appear under two names: mix them once
    for name, value in first.state_dict().items():
        if not value.is_floating_point() or value.data_ptr() in done:
            continue
        done.add(value.data_ptr())
        for state in states:
            if name not in state or state[name].shape != value.shape:
                raise ValueError(f"rl.reference_soup: the models differ at {name!r}; a soup needs one architecture")
        mixed = weights[0] * value.double() + sum(w * s[name].double() for w, s in zip(weights[1:], states))
        value.copy_(mixed.to(value.dtype))
    return first
