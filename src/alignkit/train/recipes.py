"""Recipes: what is trained on what. Each builds an :class:`~alignkit.train.loop.Objective` and hands it to
the one loop.

- ``sft``: next-token NLL on response tokens, averaged per token over the whole optimizer step.
- ``preference``: any pairwise loss from the registry (``loss: dpo`` ...), with a reference policy that is a
  frozen copy or whose log-probs are precomputed once, plus an optional SFT term (``sft_weight``, RPO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from alignkit.config import TrainConfig
from alignkit.data.collate import Batch
from alignkit.data.formats import load_records
from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord, tokenize_records
from alignkit.logps import response_logps
from alignkit.losses import get_loss
from alignkit.models.loading import frozen_copy, load_causal_lm, load_tokenizer
from alignkit.train.checkpoint import find_resume_checkpoint
from alignkit.train.loop import TrainResult, make_accelerator, make_reducer, train_loop
from alignkit.train.preference import PreferenceObjective, attach_mismatched, prepare_records, precompute_reference


# ------------------------------------------------------------------------------------------------ SFT
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

    def count(self, batch: Batch) -> int:
        return int(batch.response_mask[:, 1:].sum())

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps = response_logps(model, batch)
        sums = logps.sum()
        per_record = sums.new_zeros(batch.num_records).index_add_(0, batch.group, sums.detach())
        tokens = sums.new_zeros(batch.num_records).index_add_(0, batch.group, logps.lengths.to(sums.dtype))
        return -sums.sum(), {"nll_per_token": -per_record / tokens.clamp(min=1)}


# ------------------------------------------------------------------------------------------------ entry
def load_dataset(config: TrainConfig, tokenizer: Any) -> tuple[list[TokenizedRecord], DataReport]:
    records, report = load_records(config.data.path, split=config.data.split,
                                   drop_identical=config.data.drop_identical)
    if config.recipe == "sft":
        views = [sft_view(r) for r in records]
        for record, view in zip(records, views):
            if view is None:
                report.drop("nothing_to_imitate", record.source)
        records = [v for v in views if v is not None]
    else:
        spec = get_loss(config.loss)
        records = prepare_records(spec, spec.params(config.loss_params), records, report)
    if config.data.limit is not None:
        records = records[: config.data.limit]
    dataset = tokenize_records(tokenizer, records, max_length=config.data.max_length,
                               max_prompt_length=config.data.max_prompt_length, overlength=config.data.overlength,
                               report=report)
    if not dataset:
        raise DataError("no trainable records left", source=config.data.path)
    if config.recipe == "preference" and get_loss(config.loss).name == "kto":
        attach_mismatched(dataset)
    return dataset, report


def train(config: TrainConfig, on_step: Callable[[int, torch.nn.Module], None] | None = None) -> TrainResult:
    """Run the recipe in ``config``: load data and models, build the objective, train, save.

    ``on_step(step, model)`` is called after every optimizer step (e.g. for custom evaluation)."""
    accelerator = make_accelerator()
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path, config.model.trust_remote_code)
    dataset, report = load_dataset(config, tokenizer)
    if accelerator.is_main_process and config.progress:
        print(f"[alignkit] data {config.data.path}: {report.summary()}; {len(dataset)} records train")
    resume = find_resume_checkpoint(config.output_dir, config.resume)
    device = accelerator.device
    policy = load_causal_lm(str(resume / "model") if resume else config.model.path, config.model.dtype,
                            config.model.trust_remote_code, device)
    if config.recipe == "sft":
        objective: Any = SFTObjective()
    else:
        spec = get_loss(config.loss)
        objective = PreferenceObjective(spec, spec.params(config.loss_params), tokenizer.pad_token_id, dataset,
                                        config.sft_weight, reducer=make_reducer(accelerator))
        if spec.needs_reference and config.reference.mode != "none":
            ref_path = config.reference.path or config.model.path
            reference = frozen_copy(load_causal_lm(ref_path, config.model.dtype, config.model.trust_remote_code,
                                                   device))
            if config.reference.mode == "precompute":
                objective.reference_cache = precompute_reference(reference, dataset, tokenizer.pad_token_id,
                                                                 spec.reduction, config.batch_size * 4, device)
                del reference
            else:
                objective.reference = reference
        elif spec.needs_reference:
            raise DataError(f"loss '{spec.name}' needs a reference model; set reference.mode to copy or precompute")
    return train_loop(config, model=policy, tokenizer=tokenizer, dataset=dataset, objective=objective,
                      accelerator=accelerator, resume_from=resume, summary={"data": report.as_dict()},
                      on_step=on_step)

