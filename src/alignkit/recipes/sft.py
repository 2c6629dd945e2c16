"""``recipe: sft``: supervised fine-tuning, next-token NLL on the response tokens, averaged per token over the
whole optimizer step. Trains on SFT data, and on the preferred response of preference data (the best of a
ranking, the desirable responses of labelled data): see :func:`~alignkit.recipes.common.sft.sft_view`."""

from __future__ import annotations

from typing import Any, Callable

import torch

from alignkit.config import TrainConfig
from alignkit.data.records import DataReport, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.engine.loop import OnLog, TrainResult
from alignkit.recipes.base import Recipe, register_recipe
from alignkit.recipes.common.data import tokenize_dataset
from alignkit.recipes.common.heldout import HeldOut, heldout_dataset, perplexity
from alignkit.recipes.common.offline import run_offline
from alignkit.recipes.common.sft import SFTObjective, sft_view
from alignkit.recipes.common.token_batches import TokenBatches


def imitation_records(records: list[PreferenceRecord], report: DataReport) -> list[PreferenceRecord]:
    """Each record's responses worth imitating; records with none are dropped and counted."""
    views = [sft_view(r) for r in records]
    for record, view in zip(records, views):
        if view is None:
            report.drop("nothing_to_imitate", record.source)
    return [v for v in views if v is not None]


def sft_objective(config: TrainConfig, tokenizer: Any, records: list[PreferenceRecord], report: DataReport,
                  accelerator: Any, policy: torch.nn.Module
                  ) -> tuple[SFTObjective, list[TokenizedRecord], HeldOut | None]:
    """The NLL objective, the tokenized records and, with ``data.eval_path``, the held-out evaluation: the
    per-token NLL over all held-out response tokens (``loss``) and its ``perplexity``."""
    objective = SFTObjective(config.rows_per_forward, config.pack)
    dataset = tokenize_dataset(config, tokenizer, records, report)
    heldout = heldout_dataset(config, tokenizer, imitation_records,
                              announce=accelerator.is_main_process)
    evaluate = None if heldout is None else HeldOut(
        heldout, lambda: TokenBatches(objective, tokenizer.pad_token_id, "sft:nll"), config.batch_size,
        accelerator, derived=perplexity)
    return objective, dataset, evaluate


def train_sft(config: TrainConfig, on_step: Callable[[int, torch.nn.Module], None] | None = None,
              on_log: OnLog | None = None) -> TrainResult:
    return run_offline(config, on_step, imitation_records, sft_objective, name="sft:nll", on_log=on_log)


register_recipe(Recipe("sft", "supervised fine-tuning: next-token NLL on the responses", train_sft,
                       reads=("rows_per_forward", "pack", "gradient_checkpointing", "data.eval_path"),
                       distributed=("ddp", "fsdp", "deepspeed"), compiles=True))
