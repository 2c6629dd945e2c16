"""Collate tokenized records into one padded batch shared by every recipe.

Rows are record-major: the K responses of a record are consecutive, in ranking order (best first) when
the record is ranked, so for pairwise data rows ``0::2`` are chosen and ``1::2`` rejected. ``group``
maps each row back to its record. Padding is on the right; ``response_mask`` marks the scored tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Sequence

import torch

from alignkit.data.tokenize import TokenizedRecord


@dataclass
class Batch:
    input_ids: torch.Tensor        # [N, T]
    attention_mask: torch.Tensor   # [N, T]
    response_mask: torch.Tensor    # [N, T] bool, True on response tokens
    group: torch.Tensor            # [N] row -> position of its record in the batch
    record_index: torch.Tensor     # [B] dataset index of each record
    responses_per_record: list[int]
    labels: torch.Tensor | None = None                 # [N] 1 desirable / 0 undesirable, when all rows have one
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N]

    @property
    def num_records(self) -> int:
        return len(self.responses_per_record)

    def per_record(self, rows: torch.Tensor) -> torch.Tensor:
        """Row values ``[N, ...]`` -> ``[B, K_max, ...]``, zero where a record has fewer responses."""
        out = rows.new_zeros(self.num_records, max(self.responses_per_record), *rows.shape[1:])
        position = torch.cat([torch.arange(n, device=rows.device) for n in self.responses_per_record])
        out[self.group, position] = rows
        return out

    def valid_mask(self) -> torch.Tensor:
        """``[B, K_max]``: True where a record has a response."""
        sizes = torch.tensor(self.responses_per_record, device=self.input_ids.device)
        return torch.arange(int(sizes.max()), device=sizes.device)[None] < sizes[:, None]

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: t.to(device)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.response_mask), move(self.group),
                     move(self.record_index), self.responses_per_record,
                     None if self.labels is None else move(self.labels),
                     {k: move(v) for k, v in self.scores.items()})


def response_order(item: TokenizedRecord) -> list[int]:
    """Ranked responses first in ranking order, then any unranked ones."""
    ranking = item.record.ranking or []
    return list(ranking) + [k for k in range(len(item.response_ids)) if k not in ranking]


def collate(items: Sequence[TokenizedRecord], pad_id: int) -> Batch:
    rows, masks, group, labels, scores = [], [], [], [], {}
    for b, item in enumerate(items):
        rec = item.record
        for k in response_order(item):
            ids, mask = item.sequence(k)
            rows.append(ids)
            masks.append(mask)
            group.append(b)
            labels.append(None if rec.labels is None else float(rec.labels[k]))
            for name, values in (rec.scores or {}).items():
                scores.setdefault(name, []).append(values[k])
    lengths = torch.tensor([len(ids) for ids in rows])
    filled = torch.arange(int(lengths.max()))[None] < lengths[:, None]  # row-major, so the flat tokens fit in order
    input_ids = torch.full(filled.shape, pad_id, dtype=torch.long)
    input_ids[filled] = torch.tensor(list(chain.from_iterable(rows)), dtype=torch.long)
    response = torch.zeros(filled.shape, dtype=torch.bool)
    response[filled] = torch.tensor(list(chain.from_iterable(masks)), dtype=torch.bool)
    attention = filled.long()
    return Batch(
        input_ids=input_ids, attention_mask=attention, response_mask=response, group=torch.tensor(group),
        record_index=torch.tensor([item.index for item in items]),
        responses_per_record=[len(item.response_ids) for item in items],
        labels=None if any(x is None for x in labels) else torch.tensor(labels),
        scores={k: torch.tensor(v, dtype=torch.float) for k, v in scores.items() if len(v) == len(rows)},
    )
