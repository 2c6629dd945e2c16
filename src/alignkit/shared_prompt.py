"""Shared-prompt packing: a record's K responses scored in one sequence that holds its prompt once.

A record ``x, y_1 .. y_K`` is laid out as ``[x, y_1, .., y_K]``. Each response token attends to the prompt and to
the earlier tokens of its own response (a block mask), and its position ids continue from the end of the
prompt, so every response token sees exactly what it would see in the row ``[x, y_k]``: the log-probs are the
same up to float rounding. The prompt is computed once instead of K times, and there is one sequence per record
instead of K, so less padding. For pairs whose prompt is half the tokens, a third of the positions go.

Only attention that honours a custom 4D mask can do this (``sdpa`` and ``eager`` in ``transformers``); the first
batch a model scores this way is also scored row by row and compared, and packing is switched off for that
model, with a warning, if they differ (e.g. a sliding window or a model-specific mask that the 4D mask
overrides).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from alignkit.data.collate import Batch

SUPPORTED_ATTENTION = ("sdpa", "eager")
_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


@dataclass
class PackedLayout:
    """Where every token of the row-per-response batch sits in the packed one-row-per-record batch."""

    input_ids: torch.Tensor      # [B, L] packed tokens (pad where unused)
    position_ids: torch.Tensor   # [B, L]
    segment: torch.Tensor        # [B, L] -1 padding, 0 prompt, k + 1 response k
    where: torch.Tensor          # [N, T] flat index (b * L + l) of each row token in the packed batch; -1 padding

    @property
    def lengths(self) -> torch.Tensor:
        return (self.segment >= 0).sum(-1)

    def attention_mask(self, dtype: torch.dtype, additive: bool) -> torch.Tensor:
        """[B, 1, L, L]: causal, and a response attends only to the prompt and to its own response."""
        seg = self.segment
        width = seg.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
        allowed = causal & ((seg[:, :, None] == seg[:, None, :]) | (seg == 0)[:, None, :])
        allowed = allowed[:, None]
        if not additive:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)


def shared_prompt_layout(batch: Batch, pad_id: int = 0) -> PackedLayout | None:
    """The packed layout of ``batch``, or None when packing gains nothing (one response per record) or does not
    apply (a record's rows do not share their prompt, or a row has no prompt)."""
    if max(batch.responses_per_record) < 2:
        return None
    ids, attention, response = batch.input_ids, batch.attention_mask.bool(), batch.response_mask
    lengths = attention.sum(-1).tolist()
    prompt_lengths = response.int().argmax(-1).tolist()
    rows_of: list[list[int]] = [[] for _ in range(batch.num_records)]
    for row, b in enumerate(batch.group.tolist()):
        rows_of[b].append(row)
    src_row, src_col, positions, segments, record_lengths, prompts = [], [], [], [], [], []
    where = torch.full(ids.shape, -1, dtype=torch.long)
    for rows in rows_of:
        p = prompt_lengths[rows[0]]
        if p == 0 or any(prompt_lengths[r] != p for r in rows):
            return None
        if len(rows) > 1 and not bool((ids[rows, :p] == ids[rows[0], :p]).all()):
            return None
        r_rows, r_cols, r_pos, r_seg = [rows[0]] * p, list(range(p)), list(range(p)), [0] * p
        for k, r in enumerate(rows, start=1):
            n = lengths[r] - p
            r_rows += [r] * n
            r_cols += range(p, lengths[r])
            r_pos += range(p, lengths[r])
            r_seg += [k] * n
        src_row.append(r_rows)
        src_col.append(r_cols)
        positions.append(r_pos)
        segments.append(r_seg)
        record_lengths.append(len(r_rows))
        prompts.append(p)
    width = max(record_lengths)
    packed = torch.full((len(rows_of), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows_of), width), dtype=torch.long)
    segment = torch.full((len(rows_of), width), -1, dtype=torch.long)
    for b, rows in enumerate(rows_of):
        n = record_lengths[b]
        rr, cc = torch.tensor(src_row[b]), torch.tensor(src_col[b])
        packed[b, :n] = ids.cpu()[rr, cc]
        position_ids[b, :n] = torch.tensor(positions[b])
        segment[b, :n] = torch.tensor(segments[b])
        flat, p = b * width + torch.arange(n), prompts[b]
        where[rr[p:], cc[p:]] = flat[p:]
        for r in rows:  # the shared prompt: every row's prompt positions point at the one copy
            where[r, :p] = flat[:p]
    device = ids.device
    return PackedLayout(packed.to(device), position_ids.to(device), segment.to(device), where.to(device))


def packing_supported(model: nn.Module) -> bool:
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", None) in SUPPORTED_ATTENTION


def packed_states(runner: nn.Module, layout: PackedLayout, decoder: bool) -> torch.Tensor:
    """Hidden states (``decoder``: ``runner`` is the decoder stack) or logits of the packed batch, as [B * L, D]."""
    config = runner.config
    additive = config._attn_implementation == "eager"
    mask = layout.attention_mask(next(runner.parameters()).dtype, additive)
    out = runner(input_ids=layout.input_ids, attention_mask=mask, position_ids=layout.position_ids, use_cache=False)
    states = out.last_hidden_state if decoder else out.logits
    return states.reshape(-1, states.shape[-1])


def check_once(model: nn.Module, packed_value: torch.Tensor, unpacked: Callable[[], torch.Tensor]) -> bool:
    """True when packing may be used for ``model``: the first call compares packed with row-by-row log-probs."""
    key = getattr(model, "module", model)
    if key in _VERIFIED:
        return _VERIFIED[key]
    with torch.no_grad():
        reference = unpacked()
    scale = reference.abs().max().clamp(min=1.0)
    ok = bool(((packed_value.detach() - reference).abs().max() <= 1e-3 * scale).item())
    if not ok:
        warnings.warn(f"shared-prompt packing disagrees with row-by-row scoring for {type(key).__name__} "
                      "(a model-specific attention mask?); scoring row by row for this model", stacklevel=3)
    _VERIFIED[key] = ok
    return ok
