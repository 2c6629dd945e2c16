"""Supervised fine-tuning parts the recipes share: which responses are worth imitating, and the NLL objective
(recipe sft; the online recipe's RAFT-style methods; the rl recipe's pre-training mix, ``rl.ptx_path``)."""

from __future__ import annotations

import torch

from alignkit.data.collate import Batch
from alignkit.data.records import PreferenceRecord
from alignkit.models.logps import response_logps


def sft_view(record: PreferenceRecord) -> PreferenceRecord | None:
    """The response(s) worth imitating: the best of a ranking, the desirable ones of labelled data, or the
    single response of SFT data. Records with nothing to imitate give None (counted by the caller)."""
    if record.ranking:
        keep = [record.ranking[0]]
    elif record.labels is not None:
        keep = [k for k, good in enumerate(record.labels) if good]
    else:
        keep = list(range(len(record.responses)))
    if not keep:
        return None
    return PreferenceRecord(prompt=record.prompt, responses=[record.responses[k] for k in keep],
                            annotator=record.annotator, metadata=record.metadata, source=record.source)


class SFTObjective:
    """Negative log-likelihood of the response tokens, per-token mean over the optimizer step."""

    def __init__(self, rows_per_forward: int | None = None, pack: bool = False):
        self.rows_per_forward = rows_per_forward
        self.pack = pack

    def count(self, batch: Batch) -> int:
        return int(batch.response_mask[:, 1:].sum())

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps = response_logps(model, batch, rows_per_forward=self.rows_per_forward, pack=self.pack)
        sums = logps.sum()
        per_record = sums.new_zeros(batch.num_records).index_add_(0, batch.group, sums.detach())
        tokens = sums.new_zeros(batch.num_records).index_add_(0, batch.group, logps.lengths.to(sums.dtype))
        return -sums.sum(), {"nll_per_token": -per_record / tokens.clamp(min=1)}
