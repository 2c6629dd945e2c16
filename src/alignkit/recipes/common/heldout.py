"""Held-out evaluation for the offline recipes (sft, preference, reward): ``data.eval_path``.

The held-out file goes through the training data's path: the same loading, the recipe's own data-shape rules
and the same tokenization (:func:`heldout_dataset`). :class:`HeldOut` is the loop's ``evaluate(step, model)``
(:data:`alignkit.engine.loop.Evaluate`, called every ``eval_steps`` and at the end): it runs the recipe's own
objective over the held-out records under ``torch.no_grad`` in eval mode and reports what training reports,
normalised the same way, averaged over the whole held-out set — ``loss`` (the loss sum over the objective's
count: per example for preference losses and reward models, per response token for SFT) and the mean of every
per-record metric the objective returns (``rewards/accuracy``, ``rewards/margin``, ``logps/chosen``, ... ;
``accuracy`` for reward models), plus derived values (SFT's ``perplexity``).

With several processes each evaluates a share (every P-th record) and the sums and counts are added over the
processes (``accelerator.reduce``), so 2 processes report what 1 does. Every process runs the same number of
micro-batches (a short share is topped up with batches whose results are discarded): sharded models (FSDP,
ZeRO-3) need every process in every forward.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch

from alignkit.config import TrainConfig
from alignkit.data.tokenize import TokenizedRecord
from alignkit.engine.loop import add_metrics, reduce_logged
from alignkit.recipes.common.data import ShapeRules, load_training_records, tokenize_dataset


def heldout_dataset(config: TrainConfig, tokenizer: Any, shape: ShapeRules,
                    announce: bool = False) -> list[TokenizedRecord] | None:
    """``data.eval_path`` loaded, shaped (``shape``: the recipe's data rules) and tokenized exactly like the
    training data (``data.limit`` applies to training only), indexed 0..n-1; None when no held-out file is set.
    Errors name the held-out file. With ``announce``, one line says what was loaded and dropped (nothing is
    dropped silently)."""
    if not config.data.eval_path:
        return None
    held = dataclasses.replace(config, data=dataclasses.replace(config.data, path=config.data.eval_path, limit=None))
    records, report = load_training_records(held, shape)
    dataset = tokenize_dataset(held, tokenizer, records, report)
    if announce:
        print(f"[alignkit] held-out data {config.data.eval_path}: {report.summary()}; {len(dataset)} records "
              "evaluated")
    return [dataclasses.replace(item, index=j) for j, item in enumerate(dataset)]


def perplexity(values: dict[str, float]) -> dict[str, float]:
    """SFT: exp of the per-token NLL over all held-out response tokens (the loss)."""
    return {"perplexity": math.exp(values["loss"])}


@dataclasses.dataclass
class HeldOut:
    """The loop's ``evaluate(step, model)`` over ``items``.

    ``objective()`` gives the objective to evaluate with (``collate``, ``count``, ``loss``: the recipe's
    :class:`~alignkit.recipes.common.token_batches.TokenBatches`), built afresh for every evaluation so that running
    state a loss keeps (BCO's reward shift) is read, never updated. ``derived(values)`` adds values computed from
    the averages (SFT's perplexity)."""

    items: Sequence[TokenizedRecord]
    objective: Callable[[], Any]
    batch_size: int
    accelerator: Any
    derived: Callable[[dict[str, float]], dict[str, float]] | None = None

    def chunks(self) -> list[tuple[list[TokenizedRecord], bool]]:
        """This process's micro-batches, each with whether it counts; every process gets as many as the largest
        share needs (the extra ones repeat the first record and are discarded)."""
        processes, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = list(self.items[rank::processes])
        needed = math.ceil(math.ceil(len(self.items) / processes) / self.batch_size)
        real = [(mine[i: i + self.batch_size], True) for i in range(0, len(mine), self.batch_size)]
        return real + [([self.items[0]], False)] * (needed - len(real))

    @torch.no_grad()
    def __call__(self, step: int, model: torch.nn.Module) -> dict[str, float]:
        objective = self.objective()
        model.eval()  # the loop restores train mode afterwards
        loss, count, sums, counts = 0.0, 0.0, {}, {}
        for chunk, counted in self.chunks():
            batch = objective.collate(chunk).to(self.accelerator.device)
            loss_sum, metrics = objective.loss(model, batch)
            if counted:
                loss += loss_sum.item()
                count += objective.count(batch)
                add_metrics(sums, counts, metrics)
        if self.accelerator.num_processes > 1:
            loss, sums, counts = reduce_logged(loss, sums, counts, self.accelerator)
            count = self.accelerator.reduce(torch.tensor(float(count), dtype=torch.float64,
                                                         device=self.accelerator.device), reduction="sum").item()
        values = {"loss": loss / max(count, 1.0), **{k: v / counts[k] for k, v in sums.items() if counts[k]}}
        if self.derived is not None:
            values.update(self.derived(values))
        return values
