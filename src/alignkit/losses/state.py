"""Running state a loss keeps across steps (saved in checkpoints, synchronised across processes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Reducer:
    """Sums (and means) a tensor over all training processes; the identity on one process."""

    all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    world_size: int = 1

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.all_sum(t) / self.world_size


LOCAL = Reducer()


@dataclass
class RunningMean:
    """Mean of every value seen so far, over all processes (so every process holds the same mean)."""

    mean: float = 0.0
    count: int = 0

    def update(self, values: torch.Tensor, reducer: Reducer = LOCAL) -> float:
        values = values.detach()
        stats = reducer.all_sum(torch.stack([values.double().sum(),
                                             torch.tensor(float(values.numel()), dtype=torch.float64,
                                                          device=values.device)]))
        total, n = float(stats[0]), int(stats[1])
        if n:
            self.mean = (self.mean * self.count + total) / (self.count + n)
            self.count += n
        return self.mean

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.count = float(state["mean"]), int(state["count"])
