"""The ``reward`` recipe: train a reward model with the one training loop (``recipe: reward``).

Config section ``reward`` (:class:`alignkit.config.RewardConfig`): ``loss`` (bt | pl | regression), ``margin``,
``center_coef``, ``score_key``, ``ensemble`` (heads on one backbone), ``bootstrap``, ``group_by`` (annotator
groups). Independently seeded ensembles: :func:`train_seeded_ensemble`.

Data-shape rules (anything else is an error naming the record):
- ``bt`` and ``pl`` need a ranking of >= 2 responses (pairs, rankings, or listwise scores that imply one);
- ``regression`` needs per-response scores under ``score_key`` (``score_chosen``/``score_rejected`` of pairs and
  a listwise ``scores`` list are stored as ``score``);
- ``margin`` applies to pairs (K = 2) and needs its source on every record; ``group_by`` needs a group on every
  record.

The loss is a sum of per-record losses (mean over ensemble heads, each weighted by its bootstrap draw); the loop
divides it by the records (bt, pl) or the responses (regression) of the optimizer step.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from alignkit.config import ConfigError, RewardConfig, TrainConfig
from alignkit.data.collate import Batch, response_order
from alignkit.data.records import DataError, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.engine.checkpoint import find_resume_checkpoint
from alignkit.engine.loop import OnLog, TrainResult, make_accelerator, train_loop
from alignkit.models.loading import load_tokenizer
from alignkit.recipes.base import Recipe, register_recipe
from alignkit.recipes.common.data import load_training_records, tokenize_dataset
from alignkit.recipes.common.heldout import HeldOut, heldout_dataset
from alignkit.recipes.common.models import enable_gradient_checkpointing
from alignkit.recipes.common.token_batches import TokenBatches
from alignkit.rewards.model import LENGTHS_KEY, HeadLayout, head_rewards, load_reward_model
from alignkit.rewards.objectives import bradley_terry_loss, plackett_luce_loss, regression_loss


# ------------------------------------------------------------------------------------------------ data rules
def record_group(record: PreferenceRecord, group_by: str) -> str:
    """The annotator group of ``record``: its ``annotator``, or the metadata value under ``group_by``."""
    value = record.group_value(group_by)
    if value is None:
        raise DataError(f"reward.group_by is '{group_by}' but this record has no such value", source=record.source,
                        field=group_by)
    return value


def record_margin(record: PreferenceRecord, settings: RewardConfig) -> float:
    """The pair's BT margin: the chosen-minus-rejected ``score_key`` scores, or a metadata number."""
    if len(record.responses) != 2:
        raise DataError(f"reward.margin applies to pairs; this record has {len(record.responses)} responses",
                        source=record.source, field="ranking")
    if settings.margin == "scores":
        values = (record.scores or {}).get(settings.score_key)
        if values is None:
            raise DataError(f"reward.margin is 'scores' but the record has no '{settings.score_key}' scores",
                            source=record.source, field=settings.score_key)
        return values[record.ranking[0]] - values[record.ranking[1]]
    value = record.metadata.get(settings.margin)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"reward.margin reads '{settings.margin}', which must be a finite number, got {value!r}",
                        source=record.source, field=settings.margin)
    return float(value)


def check_reward_records(settings: RewardConfig, records: Sequence[PreferenceRecord]) -> None:
    """Raise :class:`DataError` for the first record the loss cannot use (see the module's data-shape rules)."""
    for record in records:
        if settings.loss in ("bt", "pl") and len(record.ranking or []) < 2:
            raise DataError(f"reward.loss '{settings.loss}' needs a ranking of at least 2 responses (pairs or "
                            f"rankings); this record is of kind '{record.kind}'", source=record.source,
                            field="ranking")
        if settings.loss == "regression" and settings.score_key not in (record.scores or {}):
            raise DataError(f"reward.loss 'regression' fits the '{settings.score_key}' scores (reward.score_key); "
                            f"this record has {sorted(record.scores or {}) or 'none'}", source=record.source,
                            field=settings.score_key)


def reward_records(settings: RewardConfig) -> Callable[[list[PreferenceRecord], Any], list[PreferenceRecord]]:
    """The data-shape rules of ``settings.loss`` as the shared loader takes them (records pass through unchanged)."""
    def shape(records: list[PreferenceRecord], report: Any) -> list[PreferenceRecord]:
        check_reward_records(settings, records)
        return records

    return shape


def check_settings(config: TrainConfig) -> None:
    settings = config.reward
    if settings.ensemble < 1:
        raise ConfigError("reward.ensemble must be >= 1")
    if settings.center_coef < 0:
        raise ConfigError("reward.center_coef must be >= 0")
    if settings.margin is not None and settings.loss != "bt":
        raise ConfigError(f"reward.margin applies to reward.loss bt, not {settings.loss}")
    if config.lora.enabled:
        raise ConfigError("recipe reward does not support LoRA yet; set lora.enabled=false")


# ------------------------------------------------------------------------------------------------ objective
class RewardObjective:
    """Rewards of every row from the heads of its record's group, then the configured loss per ensemble head."""

    def __init__(self, settings: RewardConfig, dataset: Sequence[TokenizedRecord], layout: HeadLayout, seed: int):
        self.settings, self.layout = settings, layout
        if [item.index for item in dataset] != list(range(len(dataset))):  # the tensors below are indexed by it
            raise ValueError("dataset indices must be 0..n-1 in order")
        records = [item.record for item in dataset]
        self.ranked = torch.tensor([len(r.ranking or []) for r in records])
        self.groups = torch.tensor([layout.group_index(record_group(r, settings.group_by)) if settings.group_by
                                    else 0 for r in records])
        self.margins = (torch.tensor([record_margin(r, settings) for r in records])
                        if settings.margin is not None else None)
        generator = torch.Generator().manual_seed(seed)
        self.weights = (torch.poisson(torch.ones(len(records), layout.ensemble), generator=generator)
                        if settings.bootstrap else torch.ones(len(records), layout.ensemble))
        self.target_rows = ([[item.record.scores[settings.score_key][k] for k in response_order(item)]
                             for item in dataset] if settings.loss == "regression" else None)

    def count(self, batch: Batch) -> int:
        return batch.input_ids.shape[0] if self.settings.loss == "regression" else batch.num_records

    def targets(self, batch: Batch) -> torch.Tensor:
        """Regression targets of every row, in collate order ``[N]``."""
        values = [v for i in batch.record_index.tolist() for v in self.target_rows[i]]
        return torch.tensor(values, dtype=torch.float, device=batch.input_ids.device)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device, index = batch.input_ids.device, batch.record_index.cpu()
        heads = head_rewards(model, batch)                                     # [N, G, E]
        row_group = self.groups[index].to(device)[batch.group]
        rewards = heads[torch.arange(heads.shape[0], device=device), row_group]  # [N, E]
        padded, valid = batch.per_record(rewards), batch.valid_mask()        # [B, K, E], [B, K]
        b, k, e = padded.shape
        flat = padded.permute(0, 2, 1).reshape(b * e, k)                     # one row per (record, head)
        flat_valid = valid.repeat_interleave(e, 0)
        ranked = self.ranked[index].to(device).repeat_interleave(e)
        s = self.settings
        if s.loss == "bt":
            margin = None if self.margins is None else self.margins[index].to(device).repeat_interleave(e)
            losses = bradley_terry_loss(flat, flat_valid, ranked, margin, s.center_coef)
        elif s.loss == "pl":
            losses = plackett_luce_loss(flat, flat_valid, ranked, s.center_coef)
        else:
            targets = batch.per_record(self.targets(batch))
            losses = regression_loss(flat, targets.repeat_interleave(e, 0), flat_valid)
        per_record = (losses.view(b, e) * self.weights[index].to(device)).mean(-1)
        return per_record.sum(), self.metrics(padded.detach(), valid, batch)

    def metrics(self, padded: torch.Tensor, valid: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        mean = padded.mean(-1)                                                # [B, K] ensemble mean
        out = {"reward_mean": (mean * valid).sum(-1) / valid.sum(-1)}
        if self.settings.loss != "regression":
            last = valid.sum(-1) - 1
            margin = mean[:, 0] - mean.gather(1, last[:, None]).squeeze(1)  # best minus worst
            out.update(accuracy=(margin > 0).float(), reward_margin=margin)
        else:
            targets = batch.per_record(self.targets(batch))
            out["mse"] = (((mean - targets) ** 2) * valid).sum(-1) / valid.sum(-1)
        if padded.shape[-1] > 1:
            out["ensemble_std"] = (padded.std(-1, correction=0) * valid).sum(-1) / valid.sum(-1)
        return out


def reward_heldout(config: TrainConfig, tokenizer: Any, layout: HeadLayout, accelerator: Any) -> HeldOut | None:
    """Held-out evaluation over ``data.eval_path`` (None when unset): the loss and the metrics training logs
    (``accuracy``, ``reward_margin``, ...; ``mse`` for regression), with the training data's rules; no bootstrap
    weights (every held-out record counts once). A held-out record of an annotator group the model has no heads for
    is an error naming the record."""
    settings = config.reward

    def shape(records: list[PreferenceRecord], report: Any) -> list[PreferenceRecord]:
        records = reward_records(settings)(records, report)
        for record in records if settings.group_by else ():
            if record_group(record, settings.group_by) not in layout.groups:
                raise DataError(f"held-out group '{record_group(record, settings.group_by)}' has no reward heads "
                                f"(the training data's groups: {', '.join(layout.groups)})", source=record.source,
                                field=settings.group_by)
        return records

    heldout = heldout_dataset(config, tokenizer, shape, announce=accelerator.is_main_process)
    if heldout is None:
        return None
    objective = TokenBatches(RewardObjective(dataclasses.replace(settings, bootstrap=False), heldout, layout,
                                             config.seed), tokenizer.pad_token_id, "held-out")
    return HeldOut(heldout, lambda: objective, config.batch_size, accelerator)


# ------------------------------------------------------------------------------------------------ entry
def train_reward_model(config: TrainConfig,
                       on_step: Callable[[int, torch.nn.Module], None] | None = None,
                       on_log: OnLog | None = None) -> TrainResult:
    """Load data, build the reward model and its objective, train with the one loop, save (``model/``)."""
    settings = config.reward
    accelerator = make_accelerator()
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path, config.model.trust_remote_code)
    records, report = load_training_records(config, reward_records(settings))
    groups = tuple(sorted({record_group(r, settings.group_by) for r in records})) if settings.group_by else ()
    layout = HeadLayout(groups, settings.ensemble)
    resume = find_resume_checkpoint(config.output_dir, config.resume)
    torch.manual_seed(config.seed)  # the heads' random initialisation (ensemble heads differ by it)
    model = enable_gradient_checkpointing(load_reward_model(
        str(resume / "model") if resume else config.model.path, tokenizer, layout, config.model.dtype,
        config.model.trust_remote_code, accelerator.device), config)
    # the lengths it learns at, saved in model/config.json for `alignkit eval rm`
    setattr(model.config, LENGTHS_KEY, {"max_length": config.data.max_length,
                                        "max_prompt_length": config.data.max_prompt_length})
    dataset = tokenize_dataset(config, tokenizer, records, report)
    dataset = [dataclasses.replace(item, index=j) for j, item in enumerate(dataset)]  # after any dropped records
    objective = RewardObjective(settings, dataset, layout, config.seed)
    if accelerator.is_main_process:  # progress=false hides the bar, never the data summary
        print(f"[alignkit] data {config.data.path}: {report.summary()}; {len(dataset)} records train; reward "
              f"model: {settings.loss} loss, {layout.num_labels} head(s) {layout.as_dict()}")
    return train_loop(config, model=model, processor=tokenizer, dataset=dataset,
                      objective=TokenBatches(objective, tokenizer.pad_token_id, f"reward:{settings.loss}"),
                      accelerator=accelerator, resume_from=resume,
                      summary={"data": report.as_dict(), "reward_heads": layout.as_dict()}, on_step=on_step,
                      on_log=on_log, evaluate=reward_heldout(config, tokenizer, layout, accelerator))


def train_seeded_ensemble(config: TrainConfig, seeds: Sequence[int]) -> list[TrainResult]:
    """Independently seeded reward models (head initialisation and data order), one run per seed under
    ``output_dir/seed-N``; score them together with :func:`alignkit.rewards.ensemble.score_ensemble`."""
    check_settings(config)
    return [train_reward_model(dataclasses.replace(config, seed=seed,
                                                   output_dir=str(Path(config.output_dir) / f"seed-{seed}")))
            for seed in seeds]


register_recipe(Recipe("reward", "a reward model: scalar heads on a causal LM backbone (`reward.*`: Bradley-Terry, "
                                 "Plackett-Luce, regression, ensembles, annotator groups)",
                       train_reward_model, check=check_settings,
                       reads=("reward.*", "gradient_checkpointing", "data.eval_path")))
