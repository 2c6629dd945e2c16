"""Objectives over tokenized records, as the loop sees them (the :class:`~alignkit.engine.loop.Objective`
protocol): a micro-batch is the records' padded token batch, and the objective is named for the progress bar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from alignkit.data.collate import Batch, collate
from alignkit.data.tokenize import TokenizedRecord


@dataclass
class TokenBatches:
    """``objective`` (count, loss and optionally parameters / state) on padded batches of tokenized records."""

    objective: Any
    pad_id: int
    name: str

    def collate(self, items: Sequence[TokenizedRecord]) -> Batch:
        return collate(items, self.pad_id)

    def count(self, batch: Batch) -> int:
        return self.objective.count(batch)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective.loss(model, batch)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.objective.parameters()) if hasattr(self.objective, "parameters") else []

    def state_dict(self) -> dict[str, Any]:
        return self.objective.state_dict() if hasattr(self.objective, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state)
