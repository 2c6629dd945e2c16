"""Recipes: what is trained on what. Each builds an :class:`~alignkit.engine.loop.Objective` and hands it to
the one loop.

- ``sft``: next-token NLL on response tokens, averaged per token over the whole optimizer step.
- ``preference``: any loss from the registry (``loss: dpo``, ``kto``, ``plackett_luce``, ``d2o`` ...) on the data
  kind it needs (see :mod:`alignkit.recipes.preference`), with a reference policy that is a frozen copy, log-probs
  precomputed once, or — for LoRA — the adapter-disabled policy, plus an optional SFT term (``sft_weight``, RPO).
- ``reward``: a reward model (scalar heads on the backbone; ``reward.*`` options), see :mod:`alignkit.recipes.reward`.
- ``online``: sample from the policy, label with a reward source, update (online DPO, Nash-MD, XPO, SPPO, RAFT ...),
  see :mod:`alignkit.recipes.online`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from alignkit.config import ConfigError, TrainConfig
from alignkit.data.collate import Batch
from alignkit.data.formats import load_records
from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord, tokenize_records
from alignkit.models.logps import response_logps
from alignkit.losses import get_loss
from alignkit.models.compiled import compile_decoder_layers
from alignkit.models.loading import check_model_paths, frozen_copy, load_causal_lm, load_tokenizer
from alignkit.models.lora import add_lora, is_lora, load_adapter_weights, reference_context
from alignkit.engine import reference_cache
from alignkit.engine.checkpoint import find_resume_checkpoint, remove_orphans
from alignkit.recipes.common.distribution_matching import attach_udm_weights
from alignkit.engine.loop import TrainResult, make_accelerator, make_reducer, train_loop
from alignkit.recipes.preference import (
    PreferenceObjective,
    add_reference_samples,
    attach_mismatched,
    learned_mask_heads,
    precompute_reference,
    prepare_records,
)
from alignkit.utils.io import exclusive_lock, launch_rank


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


# ------------------------------------------------------------------------------------------------ entry
def load_training_records(config: TrainConfig) -> tuple[list[PreferenceRecord], DataReport]:
    """Load the data file and apply the recipe's data-shape rules (and ``data.limit``)."""
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
    return records, report


def tokenize_dataset(config: TrainConfig, tokenizer: Any, records: list[PreferenceRecord],
                     report: DataReport) -> list[TokenizedRecord]:
    dataset = tokenize_records(tokenizer, records, max_length=config.data.max_length,
                               max_prompt_length=config.data.max_prompt_length, overlength=config.data.overlength,
                               report=report, drop_identical=config.data.drop_identical)
    if not dataset:
        raise DataError("no trainable records left", source=config.data.path)
    return dataset


def load_reference(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    path = config.reference.path or config.model.path
    return frozen_copy(load_causal_lm(path, config.model.dtype, config.model.trust_remote_code, device))


def preference_objective(config: TrainConfig, tokenizer: Any, records: list[PreferenceRecord], report: DataReport,
                         accelerator: Any, policy: torch.nn.Module) -> tuple[PreferenceObjective, list[TokenizedRecord]]:
    """Reference handling, data additions (reference samples, mismatched pairs) and the objective.

    The reference is a frozen copy (``reference.path``, or the initial policy), or — for a LoRA policy without
    ``reference.path`` — the policy itself with its adapter disabled."""
    spec = get_loss(config.loss)
    params = spec.params(config.loss_params)
    device = accelerator.device
    reference, as_reference = None, contextlib.nullcontext
    if spec.needs_reference:
        if config.reference.mode == "none":
            raise DataError(f"loss '{spec.name}' needs a reference model; set reference.mode to copy or precompute")
        if is_lora(policy) and config.reference.path is None:
            reference, as_reference = policy, reference_context(policy)
        else:
            reference = load_reference(config, device)
    with as_reference():
        if spec.data_kind == "negatives":
            records = add_reference_samples(records, reference, tokenizer, params["num_samples"],
                                            max_new_tokens=config.data.max_length - config.data.max_prompt_length,
                                            seed=config.seed, cache=Path(config.output_dir) / "reference_samples.json",
                                            progress=config.progress and accelerator.is_main_process)
            report.converted["reference_samples"] = sum(len(r.responses) - 1 for r in records)
        dataset = tokenize_dataset(config, tokenizer, records, report)
        if spec.mismatched_pairs:
            attach_mismatched(dataset, seed=config.seed)
        if params.get("udm"):
            attach_udm_weights(reference, dataset, tokenizer.pad_token_id)
        objective = PreferenceObjective(spec, params, tokenizer.pad_token_id, dataset, config.sft_weight,
                                        reducer=make_reducer(accelerator), reference_context=as_reference,
                                        rows_per_forward=config.rows_per_forward,
                                        pack=config.pack)
        if spec.token_level and params.get("mask") == "learned":
            objective.mask_heads = learned_mask_heads(reference, params.get("independent", False))
        if reference is not None and config.reference.mode == "precompute" and not spec.token_level:
            objective.reference_cache = reference_logps(config, reference, dataset, tokenizer.pad_token_id,
                                                        spec.reduction, device, accelerator.is_main_process)
        else:  # token-level losses need the reference's full distributions and activations: a live reference
            objective.reference = reference
    if reference is policy:
        policy.train()
    return objective, dataset


def reference_logps(config: TrainConfig, reference: torch.nn.Module, dataset: list[TokenizedRecord], pad_id: int,
                    reduction: str, device: torch.device, main_process: bool) -> reference_cache.Cache:
    """Precomputed reference log-probs, read from the on-disk cache when its key matches (see
    :mod:`alignkit.engine.reference_cache`), else computed and (by the main process) written there."""
    if not config.reference.cache:
        return precompute_reference(reference, dataset, pad_id, reduction, config.batch_size * 4, device, config.pack)
    key = reference_cache.cache_key(reference, dataset, reduction)
    path = Path(config.reference.cache_dir or Path(config.output_dir) / "reference_logps") / f"{key}.safetensors"
    return reference_cache.cached_or_computed(
        path, key, dataset,
        lambda: precompute_reference(reference, dataset, pad_id, reduction, config.batch_size * 4, device, config.pack),
        writer=main_process, announce=main_process and config.progress)


def load_policy(config: TrainConfig, resume: Path | None, device: torch.device) -> torch.nn.Module:
    """The policy to train: from the checkpoint when resuming, with LoRA adapters when configured."""
    lora = config.lora
    if not lora.enabled:
        return load_causal_lm(str(resume / "model") if resume else config.model.path, config.model.dtype,
                              config.model.trust_remote_code, device)
    base = load_causal_lm(config.model.path, config.model.dtype, config.model.trust_remote_code, device)
    torch.manual_seed(config.seed)  # the adapters' random initialisation
    policy = add_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    if resume:
        load_adapter_weights(policy, resume / "model")
    return policy


def check_parallel_support(config: TrainConfig) -> None:
    """distributed=fsdp and distributed=deepspeed (also when an Accelerate config file asks for them) cover the sft
    and preference recipes on full weights with sequence-level losses. DeepSpeed also needs a ZeRO stage of 1-3,
    no offloading or DeepSpeed config file of its own (alignkit builds the DeepSpeed config) and, under ZeRO-3 (where
    every module call is a collective), the same number of forward calls on every process, which
    ``rows_per_forward`` does not guarantee."""
    import os

    from alignkit.engine.parallel import requested

    kind, stage = requested(config.distributed, config.zero_stage)
    if kind == "ddp":
        return
    unsupported = ("LoRA (lora.enabled)" if config.lora.enabled else
                   "the reward recipe" if config.recipe == "reward" else
                   f"the token-level loss '{config.loss}'" if config.recipe == "preference"
                   and get_loss(config.loss).token_level else None)
    if unsupported:
        raise ConfigError(f"distributed={kind} does not support {unsupported} yet; use distributed=ddp")
    if kind != "deepspeed":
        return
    if stage not in (1, 2, 3):
        raise ConfigError(f"zero_stage must be 1, 2 or 3, not {stage}")
    if config.recipe in ("online", "rl"):
        raise ConfigError(f"distributed=deepspeed does not support recipe: {config.recipe} (it samples from the "
                          "model and varies the micro-batches per step); use distributed=ddp")
    if stage == 3 and config.rows_per_forward:
        raise ConfigError("distributed=deepspeed with zero_stage=3 does not support rows_per_forward (processes "
                          "could make different numbers of forward calls, each a collective); unset rows_per_forward "
                          "or use zero_stage=2")
    offload = {name: os.environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{name}_DEVICE", "none").lower()
               for name in ("OPTIMIZER", "PARAM")}
    if any(device != "none" for device in offload.values()):
        raise ConfigError("DeepSpeed offloading (offload_optimizer_device / offload_param_device in the Accelerate "
                          "config) is not supported; set them to none")
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") != "none":
        raise ConfigError("a DeepSpeed config file (deepspeed_config_file in the Accelerate config) is not read: "
                          "alignkit builds the DeepSpeed config from its own; remove it and set "
                          "deepspeed_config.zero_stage")


def check_compile_support(config: TrainConfig) -> None:
    """compile=true covers the sft and preference recipes with replicated weights (also when an Accelerate config
    file asks for FSDP or DeepSpeed, it is refused)."""
    from alignkit.engine.parallel import requested

    kind, _ = requested(config.distributed, config.zero_stage)
    if config.compile and (config.recipe not in ("sft", "preference") or kind != "ddp"):
        raise ConfigError(f"compile=true covers the sft and preference recipes with distributed=ddp, not recipe="
                          f"{config.recipe} with distributed={kind}; set compile=false")


def train(config: TrainConfig, on_step: Callable[[int, torch.nn.Module], None] | None = None) -> TrainResult:
    """Run the recipe in ``config``: load data and models, build the objective, train, save.

    The main process holds an exclusive lock on ``output_dir`` for the whole run (a second run there fails at once,
    naming the holder) and first removes what a killed save left there. ``on_step(step, model)`` is called after
    every optimizer step (e.g. for custom evaluation)."""
    check_model_paths(config)  # a wrong model path is named (by its key) before any data or model loads
    check_parallel_support(config)
    check_compile_support(config)
    with output_dir_claimed(config.output_dir):
        return run_recipe(config, on_step)


@contextlib.contextmanager
def output_dir_claimed(output_dir: str) -> Iterator[None]:
    """Main process (launch rank 0): lock ``output_dir`` for the ``with`` block and clean up orphaned temporary
    files in it. Other processes write there only after the main process has started (collectives order them)."""
    if launch_rank() != 0:
        yield
        return
    with exclusive_lock(output_dir):
        remove_orphans(output_dir)
        yield


def run_recipe(config: TrainConfig, on_step: Callable[[int, torch.nn.Module], None] | None) -> TrainResult:
    """Dispatch to the recipe's trainer (see :func:`train`)."""
    if config.recipe == "reward":  # reward models: alignkit.recipes.reward
        from alignkit.recipes.reward import train_reward_model

        return train_reward_model(config, on_step)
    if config.recipe == "online":  # sample, label, update: alignkit.recipes.online
        from alignkit.recipes.online import train_online

        return train_online(config, on_step)
    if config.recipe == "rl":  # policy-gradient RLHF: alignkit.recipes.rl
        from alignkit.recipes.rl import train_rl

        return train_rl(config, on_step)
    accelerator = make_accelerator()
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path, config.model.trust_remote_code)
    records, report = load_training_records(config)
    resume = find_resume_checkpoint(config.output_dir, config.resume)
    policy = load_policy(config, resume, accelerator.device)
    if config.compile:
        compile_decoder_layers(policy)
    if config.recipe == "sft":
        dataset = tokenize_dataset(config, tokenizer, records, report)
        objective = SFTObjective(config.rows_per_forward, config.pack)
    else:
        objective, dataset = preference_objective(config, tokenizer, records, report, accelerator, policy)
    if accelerator.is_main_process and config.progress:
        print(f"[alignkit] data {config.data.path}: {report.summary()}; {len(dataset)} records train")
    return train_loop(config, model=policy, tokenizer=tokenizer, dataset=dataset, objective=objective,
                      accelerator=accelerator, resume_from=resume, summary={"data": report.as_dict()},
                      on_step=on_step)
