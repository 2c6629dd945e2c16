"""Packing: a micro-batch scored in few rows, with each record's prompt held once and no padding between records.

A record ``x, y_1 .. y_K`` is laid out as ``[x, y_1, .., y_K]``: each response token attends to the prompt and to
the earlier tokens of its own response (a block mask), and its position ids continue from the end of the prompt,
so it sees exactly what it would see in the row ``[x, y_k]``. Records are then packed first-fit, longest first,
into rows no wider than the longest record, each attending only within itself. The log-probs are those of the
row-per-response batch up to float rounding; the prompt is computed once instead of K times, and little padding
is left (on the sandbox's pairs: 36% of positions were padding, and 29% of the rest were repeated prompts).

Only attention that honours a custom 4D mask can do this (``sdpa`` and ``eager`` in ``transformers``); the first
batch a model scores this way is also scored row by row and compared, and packing is switched off for that
model, with a warning, if they differ (e.g. a sliding window or a model-specific mask the 4D mask overrides).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from alignkit.data.collate import Batch
from alignkit.models.scoring import language_model

SUPPORTED_ATTENTION = ("sdpa", "eager")
_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


@dataclass
class PackedLayout:
    """Where every token of the row-per-response batch sits in the packed batch."""

    input_ids: torch.Tensor      # [R, L] packed tokens (pad where unused)
    position_ids: torch.Tensor   # [R, L] positions restart at every record
    record: torch.Tensor         # [R, L] which record a position holds; -1 padding
    segment: torch.Tensor        # [R, L] 0 the record's prompt, k + 1 its response k
    where: torch.Tensor          # [N, T] flat index (r * L + l) of each row token in the packed batch; -1 padding

    @property
    def lengths(self) -> torch.Tensor:
        return (self.record >= 0).sum(-1)

    def attention_mask(self, dtype: torch.dtype, additive: bool) -> torch.Tensor:
        """[R, 1, L, L]: causal, within a record, and a response sees only the prompt and its own tokens. Padding
        attends to itself only (a fully masked row would give NaN)."""
        rec, seg = self.record, self.segment
        width = rec.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=rec.device).tril()
        same_record = (rec[:, :, None] == rec[:, None, :]) & (rec >= 0)[:, None, :]
        visible = (seg[:, :, None] == seg[:, None, :]) | (seg == 0)[:, None, :]
        padding_self = torch.eye(width, dtype=torch.bool, device=rec.device) & (rec < 0)[:, :, None]
        allowed = ((causal & same_record & visible) | padding_self)[:, None]
        if not additive:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=rec.device).masked_fill(~allowed, torch.finfo(dtype).min)


def first_fit_decreasing(lengths: list[int], width: int) -> list[list[int]]:
    """Bins (lists of item indices) of total length <= ``width``, filled longest item first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(width - lengths[i])
    return bins


def packed_layout(batch: Batch, pad_id: int = 0) -> PackedLayout | None:
    """The packed layout of ``batch``, or None when a record's rows do not share their prompt (then nothing is
    packed). Rows without a prompt are records of their own."""
    ids, response = batch.input_ids, batch.response_mask
    lengths = batch.attention_mask.sum(-1).tolist()
    prompt_lengths = response.int().argmax(-1).tolist()
    rows_of: list[list[int]] = [[] for _ in range(batch.num_records)]
    for row, b in enumerate(batch.group.tolist()):
        rows_of[b].append(row)
    units = []  # (rows, prompt length): rows scored together behind one shared prompt
    for rows in rows_of:
        p = prompt_lengths[rows[0]]
        if any(prompt_lengths[r] != p for r in rows):
            return None
        if len(rows) > 1 and p and not bool((ids[rows, :p] == ids[rows[0], :p]).all()):
            return None
        units += [(rows, p)] if p else [([r], 0) for r in rows]
    sizes = [p + sum(lengths[r] - p for r in rows) for rows, p in units]
    width = max(sizes)
    bins = first_fit_decreasing(sizes, width)
    # one segment per row: the prompt's positions (first row of a unit only), then the row's response tokens
    seg_row, seg_start, seg_dst, seg_unit, seg_k, seg_p = [], [], [], [], [], []
    for b, members in enumerate(bins):
        offset = b * width
        for u in members:
            rows, p = units[u]
            for k, r in enumerate(rows):
                start = 0 if k == 0 else p
                seg_row.append(r), seg_start.append(start), seg_dst.append(offset), seg_unit.append(u)
                seg_k.append(k), seg_p.append(p)
                offset += lengths[r] - start
    seg = {name: torch.tensor(v) for name, v in dict(row=seg_row, start=seg_start, dst=seg_dst, unit=seg_unit,
                                                      k=seg_k, p=seg_p).items()}
    seg_len = torch.tensor(lengths)[seg["row"]] - seg["start"]
    token_seg = torch.repeat_interleave(torch.arange(len(seg_row)), seg_len)  # every token's segment
    within = torch.arange(len(token_seg)) - torch.repeat_interleave(seg_len.cumsum(0) - seg_len, seg_len)
    src_row = seg["row"][token_seg]
    src_col = seg["start"][token_seg] + within
    dst = seg["dst"][token_seg] + within
    segment = torch.where(src_col < seg["p"][token_seg], 0, seg["k"][token_seg] + 1)  # 0 prompt, k + 1 response k
    shape = (len(bins), width)
    packed = torch.full(shape, pad_id, dtype=torch.long).view(-1)
    packed[dst] = ids.cpu()[src_row, src_col]
    where = torch.full(ids.shape, -1, dtype=torch.long)
    where[src_row, src_col] = dst
    for rows, p in units:  # the shared prompt: every row's prompt positions point at the one copy
        if len(rows) > 1 and p:
            where[rows[1:], :p] = where[rows[0], :p]
    layout = [packed.view(shape)] + [_filled(shape, dst, values, fill)
                                     for values, fill in ((src_col, 0), (seg["unit"][token_seg], -1), (segment, 0))]
    return PackedLayout(*(t.to(ids.device) for t in layout), where.to(ids.device))


def _filled(shape: tuple[int, int], index: torch.Tensor, values: torch.Tensor, fill: int) -> torch.Tensor:
    out = torch.full(shape, fill, dtype=torch.long).view(-1)
    out[index] = values
    return out.view(shape)


def packing_supported(model: nn.Module) -> bool:
    config = getattr(language_model(model), "config", None)
    return getattr(config, "_attn_implementation", None) in SUPPORTED_ATTENTION


def every_process(model: nn.Module, flag: bool) -> bool:
    """``flag`` on every process, for a model sharded with FSDP or DeepSpeed (``collective_forward``: forwards
    are collectives, so all processes must take the same path); ``flag`` itself otherwise."""
    from torch.distributed.fsdp import FSDPModule

    collective = isinstance(model, FSDPModule) or getattr(model, "collective_forward", False)
    if not (collective and torch.distributed.is_initialized()):
        return flag
    agreed = torch.tensor(int(flag), device=next(model.parameters()).device)
    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
    return bool(agreed.item())


def check_once(model: nn.Module, packed_value: torch.Tensor, unpacked: Callable[[], torch.Tensor]) -> bool:
    """True when packing may be used for ``model``: the first call compares packed with row-by-row log-probs."""
    key = language_model(model)
    if key in _VERIFIED:
        return _VERIFIED[key]
    with torch.no_grad():
        reference = unpacked()
    scale = reference.abs().max().clamp(min=1.0)
    param = next(key.parameters())
    tolerance = 1e-3 if param.dtype in (torch.float32, torch.float64) else 5e-2  # half precision rounds coarsely
    ok = every_process(model, bool(((packed_value.detach() - reference).abs().max() <= tolerance * scale).item()))
    if not ok:
        warnings.warn(f"packing disagrees with row-by-row scoring for {type(key).__name__} "
                      "(a model-specific attention mask?); scoring row by row for this model", stacklevel=3)
    _VERIFIED[key] = ok
    return ok
