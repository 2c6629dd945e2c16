"""The module that turns token ids into the log-probs of chosen tokens, with the LM head applied only where needed.

``ResponseScorer`` wraps a causal LM. Its forward runs the decoder, gathers the hidden states at the positions
that predict a scored token, applies the LM head to those alone (in chunks) and returns each scored token's
log-probability. Models whose head is more than a linear map (logit soft-capping, logit scaling) go through the
model's own forward and full logits instead.

Being one module whose forward does the whole computation is what lets FSDP shard it: its root pre-forward
gathers the embedding, final norm and head, and its backward hooks reduce their gradients.
"""

from __future__ import annotations

import torch
from torch import nn


def plain_linear_head(model: nn.Module) -> nn.Module | None:
    """The LM head when it is a plain linear map (so it can be applied to gathered hidden states), else None."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if isinstance(head, nn.Linear) else None


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target], in float32 for half-precision logits."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class ResponseScorer(nn.Module):
    """``forward(input_ids, attention_mask, predictors, targets, position_ids=None) -> [M]``: the log-prob of
    ``targets[m]`` predicted at flat position ``predictors[m]`` (an index into ``input_ids.view(-1)``)."""

    def __init__(self, model: nn.Module, chunk_size: int = 4096):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    @property
    def config(self):  # noqa: ANN201 - the wrapped model's config
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, predictors: torch.Tensor,
                targets: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        head = plain_linear_head(self.model)
        if head is None or not hasattr(self.model, "get_decoder"):
            logits = self.model(**inputs).logits
            return token_logps(logits.reshape(-1, logits.shape[-1])[predictors], targets)
        states = self.model.get_decoder()(**inputs).last_hidden_state
        selected = states.reshape(-1, states.shape[-1])[predictors]
        step = self.chunk_size
        return torch.cat([token_logps(head(selected[i: i + step]), targets[i: i + step])
                          for i in range(0, max(1, selected.shape[0]), step)])


def as_scorer(model: nn.Module) -> ResponseScorer:
    """``model`` itself when it already is a scorer (e.g. FSDP-sharded), else a scorer around it."""
    return model if isinstance(model, ResponseScorer) else ResponseScorer(model)


def language_model(model: nn.Module) -> nn.Module:
    """The causal LM inside a scorer (or the model itself)."""
    return model.model if isinstance(model, ResponseScorer) else model
