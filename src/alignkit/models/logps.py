"""Per-token log-probabilities of response tokens only.

The LM head is applied only at the positions that predict a response token (see
:class:`alignkit.models.scoring.ResponseScorer`), so no full-vocabulary logits are built for prompt or padding
positions; batches can be packed (:mod:`alignkit.models.packing`) or run in length-sorted row groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from alignkit.data.collate import Batch
from alignkit.models.scoring import as_scorer, language_model
from alignkit.models.packing import PackedLayout, check_once, every_process, packed_layout, packing_supported


@dataclass
class SequenceLogps:
    """Per-token log-probs ``token_logps[i, t] = log p(input_ids[i, t] | input_ids[i, :t])`` on the response
    mask (zero elsewhere). Sums, per-token means and lengths derive from it."""

    token_logps: torch.Tensor  # [N, T]
    mask: torch.Tensor         # [N, T] bool

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def sum(self) -> torch.Tensor:
        return self.token_logps.sum(-1)

    def mean(self) -> torch.Tensor:
        return self.sum() / self.lengths.clamp(min=1)

    def reduce(self, reduction: str) -> torch.Tensor:
        if reduction == "sum":
            return self.sum()
        if reduction == "mean":
            return self.mean()
        raise ValueError(f"unknown reduction {reduction!r}: expected 'sum' or 'mean'")

    def detach(self) -> "SequenceLogps":
        return SequenceLogps(self.token_logps.detach(), self.mask)


def response_logps(model: nn.Module, batch: Batch, *, chunk_size: int = 4096,
                   rows_per_forward: int | None = None, pack: bool = False) -> SequenceLogps:
    """Log-probs of the response tokens of ``batch`` under ``model`` (a causal LM).

    With ``pack``, the batch is packed (see :mod:`alignkit.models.packing`): each record's prompt is computed once for
    all its responses and short records share a row, when the model's attention supports it. With
    ``rows_per_forward``, rows are sorted by length and run in groups of that many rows, each trimmed to its own
    longest row, so far less padding is computed. Either way the result (and its gradient) is the same up to float
    rounding."""
    if pack and packing_supported(model):
        layout = packed_layout(batch)
        if every_process(model, layout is not None):
            packed = _packed_logps(model, batch, layout, chunk_size)
            rowwise = lambda: _plain_logps(model, batch, chunk_size, None).token_logps  # noqa: E731
            if check_once(model, packed.token_logps, rowwise):
                return packed
    return _plain_logps(model, batch, chunk_size, rows_per_forward)


def _plain_logps(model: nn.Module, batch: Batch, chunk_size: int, rows_per_forward: int | None) -> SequenceLogps:
    rows = batch.input_ids.shape[0]
    if rows_per_forward and rows > rows_per_forward:
        return _grouped_by_length(model, batch, chunk_size, rows_per_forward)
    return _response_logps(model, batch.input_ids, batch.attention_mask, batch.response_mask, chunk_size)


def _grouped_by_length(model: nn.Module, batch: Batch, chunk_size: int, group: int) -> SequenceLogps:
    lengths = batch.attention_mask.sum(-1)
    order = torch.argsort(lengths, stable=True)
    width = batch.input_ids.shape[1]
    parts = []
    for idx in order.split(group):
        w = int(lengths[idx].max())
        part = _response_logps(model, batch.input_ids[idx, :w], batch.attention_mask[idx, :w],
                               batch.response_mask[idx, :w], chunk_size)
        parts.append(torch.nn.functional.pad(part.token_logps, (0, width - w)))
    token_logps = torch.cat(parts)[torch.argsort(order)]
    mask = batch.response_mask.clone()
    mask[:, 0] = False
    return SequenceLogps(token_logps, mask)


def _response_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    response_mask: torch.Tensor, chunk_size: int) -> SequenceLogps:
    flat = torch.arange(input_ids.numel(), device=input_ids.device).view(input_ids.shape)
    return _score(model, input_ids, response_mask, chunk_size, lambda targets_mask: dict(
        input_ids=input_ids, attention_mask=attention_mask, predictors=flat[:, :-1][targets_mask]))


def _packed_logps(model: nn.Module, batch: Batch, layout: PackedLayout, chunk_size: int) -> SequenceLogps:
    config = language_model(model).config
    dtype = next(model.parameters()).dtype
    mask = layout.attention_mask(dtype, additive=config._attn_implementation == "eager")
    return _score(model, batch.input_ids, batch.response_mask, chunk_size, lambda targets_mask: dict(
        input_ids=layout.input_ids, attention_mask=mask, position_ids=layout.position_ids,
        predictors=layout.where[:, :-1][targets_mask]))


def _score(model: nn.Module, input_ids: torch.Tensor, response_mask: torch.Tensor, chunk_size: int,
           scorer_inputs: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> SequenceLogps:
    """Score the tokens of ``response_mask`` (but the first column, which nothing predicts) with the scorer
    inputs built for them; the result is laid out like ``input_ids``."""
    mask = response_mask.clone()
    mask[:, 0] = False
    targets_mask = mask[:, 1:]  # predictions made at positions t-1 for tokens t
    scorer = as_scorer(model)
    scorer.chunk_size = chunk_size
    picked = scorer(targets=input_ids[:, 1:][targets_mask], **scorer_inputs(targets_mask))
    token_logps = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
    token_logps[:, 1:][targets_mask] = picked
    return SequenceLogps(token_logps, mask)


@dataclass
class TokenDistributions:
    """Full next-token log-distributions at the positions that predict response tokens (for token-level losses).

    ``full[m]`` is the log-softmax over the vocabulary that predicts the m-th response token (row-major order of
    ``logps.mask``); ``hidden_states`` are the model's per-layer hidden states when asked for.
    """

    logps: SequenceLogps
    full: torch.Tensor                          # [M, V]
    hidden_states: tuple[torch.Tensor, ...] | None = None

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """[M] values at scored positions -> [N, T] aligned with ``logps.token_logps``."""
        out = torch.zeros(self.logps.mask.shape, dtype=values.dtype, device=values.device)
        out[:, 1:][self.logps.mask[:, 1:]] = values
        return out


def response_distributions(model: nn.Module, batch: Batch, hidden_states: bool = False) -> TokenDistributions:
    """Like :func:`response_logps`, keeping the whole log-distribution at every scored position.

    Builds full-vocabulary logits, so it is meant for token-level methods (SparsePO), not the default path."""
    mask = batch.response_mask.clone()
    mask[:, 0] = False
    targets_mask = mask[:, 1:]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                output_hidden_states=hidden_states)
    logits = out.logits[:, :-1][targets_mask]
    full = torch.log_softmax(logits if logits.dtype in (torch.float32, torch.float64) else logits.float(), dim=-1)
    picked = full.gather(-1, batch.input_ids[:, 1:][targets_mask].unsqueeze(-1)).squeeze(-1)
    token_logps = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)
    token_logps[:, 1:][targets_mask] = picked
    return TokenDistributions(SequenceLogps(token_logps, mask), full,
                              tuple(out.hidden_states[1:]) if hidden_states else None)
