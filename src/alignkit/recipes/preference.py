"""The offline preference recipe: any registered loss, on the data kind it needs.

``prepare_records`` enforces the data-shape rules (and performs the documented conversions);
:class:`PreferenceObjective` computes policy (and reference) log-probs for a batch, builds the loss's input
type (pairs, ranked, unpaired, negatives) and adds the optional SFT term.

Data-shape rules:
- pairwise losses need pairs;
- ranking losses take rankings of K >= 2 responses; pairs are rankings with K = 2;
- unpaired losses (KTO, BCO) take unpaired binary labels; pairs become two records (chosen desirable, rejected
  undesirable) and negatives-only lists become one undesirable record per response — both conversions are
  counted in the run's data report; KTO's reference point pairs each record with the response of a record with
  another prompt (seeded, fixed per dataset: :func:`mismatched_partners`), so the data needs two prompts or more;
- the negatives-only loss (D2O) takes negatives (lists, or unpaired records labelled undesirable), one example per
  negative response; K samples of the reference policy per prompt are added before training;
- anything else is an error naming the loss and the record's data kind.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from alignkit.config import ConfigError, TrainConfig
from alignkit.data.collate import collate
from alignkit.data.jsonio import canonical_json
from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.engine import reference_cache
from alignkit.engine.loop import OnLog, TrainResult, make_reducer
from alignkit.engine.parallel import requested
from alignkit.engine.reference_cache import model_digest
from alignkit.losses import LossSpec, get_loss
from alignkit.models.logps import response_logps
from alignkit.models.lora import is_lora, reference_context
from alignkit.models.token_masks import LearnedTokenMask
from alignkit.recipes.base import Recipe, register_recipe
from alignkit.recipes.common.data import tokenize_dataset
from alignkit.recipes.common.distribution_matching import attach_udm_weights
from alignkit.recipes.common.heldout import HeldOut, heldout_dataset
from alignkit.recipes.common.models import load_reference
from alignkit.recipes.common.offline import run_offline
from alignkit.recipes.common.preference_objective import (
    PreferenceObjective,
    attach_mismatched,
    mismatched_batch,
    one_response,
)
from alignkit.recipes.common.token_batches import TokenBatches
from alignkit.sampling.generate import SamplingConfig, as_response, generate
from alignkit.utils.io import warn, write_json

KIND_HELP = {
    "pairs": "pairs (prompt, chosen, rejected)",
    "ranked": "rankings (prompt, responses, ranking | scores) or pairs",
    "unpaired": "unpaired binary labels (prompt, completion, label), pairs or negatives",
    "negatives": "negatives only (prompt, rejected), or unpaired records labelled false",
}


# --------------------------------------------------------------------------------------------- data rules
def prepare_records(spec: LossSpec, params: dict[str, Any], records: Sequence[PreferenceRecord],
                    report: DataReport) -> list[PreferenceRecord]:
    """Check (and where documented, convert) records for ``spec``'s data kind."""
    out: list[PreferenceRecord] = []
    for record in records:
        kind = record.kind
        if spec.data_kind == "pairs" and kind == "pairs":
            out.append(record)
        elif spec.data_kind == "ranked" and kind in ("pairs", "ranked") and len(record.ranking or []) == len(
                record.responses):
            out.append(record)
        elif spec.data_kind == "unpaired" and kind == "unpaired":
            out.append(record)
        elif spec.data_kind == "unpaired" and kind == "pairs":
            out += [one_response(record, record.ranking[0], True), one_response(record, record.ranking[1], False)]
            report.converted["pairs_to_unpaired"] += 2
        elif spec.data_kind == "unpaired" and kind == "negatives":
            out += [one_response(record, k, False) for k in range(len(record.responses))]
            report.converted["negatives_to_unpaired"] += len(record.responses)
        elif spec.data_kind == "negatives" and (kind == "negatives" or (kind == "unpaired" and not any(
                record.labels or [True]))):
            out += [one_response(record, k, None) for k in range(len(record.responses))]
            if len(record.responses) > 1:
                report.converted["negatives_split"] += len(record.responses)
        else:
            raise DataError(f"loss '{spec.name}' needs {KIND_HELP[spec.data_kind]}; this record is of kind "
                            f"'{kind}'", source=record.source)
    for name in params.get("margins") or {}:
        for record in out:
            if name not in (record.scores or {}):
                raise DataError(f"loss '{spec.name}' uses the score '{name}' (loss_params.margins) but this record "
                                f"has scores {sorted(record.scores or {})}", source=record.source, field="scores")
    if spec.mismatched_pairs and len(out) < 2:
        raise DataError(f"{spec.name} needs at least 2 records to estimate its reference point")
    return out


def add_reference_samples(records: Sequence[PreferenceRecord], model: torch.nn.Module, tokenizer: Any, k: int, *,
                          max_new_tokens: int, seed: int, cache: Path, progress: bool) -> list[PreferenceRecord]:
    """Append K responses sampled from ``model`` (the reference) to every negatives-only record (D2O, Duan et al.
    2024, "Negating Negatives": the loss averages log pi/pi_ref over K reference samples per prompt).

    Samples are drawn once per distinct prompt, seeded, and kept in ``cache`` (written atomically), keyed by the
    reference's weights (:func:`~alignkit.engine.reference_cache.model_digest`), K, seed, length and prompts and
    stored with a digest of the samples themselves: a resumed run trains on the same samples without sampling
    again, and a file that is stale, truncated or edited is never used (the latter two with a warning)."""
    prompts: dict[str, Any] = {}
    for record in records:
        prompts.setdefault(canonical_json(record.prompt), record.prompt)
    key = hashlib.sha256(json.dumps([model_digest(model), k, seed, max_new_tokens, list(prompts)])
                         .encode()).hexdigest()
    texts = read_reference_samples(cache, key)
    if texts is None:
        samples = generate(model, tokenizer, list(prompts.values()),
                           SamplingConfig(num_samples=k, max_new_tokens=max_new_tokens, seed=seed), progress=progress,
                           desc="sampling the reference")
        texts = {p: [s.text for s in samples[i * k:(i + 1) * k]] for i, p in enumerate(prompts)}
        write_json(cache, {"key": key, "digest": samples_digest(texts), "samples": texts})
    out = []
    for record in records:
        sampled = [as_response(record.prompt, t) for t in texts[canonical_json(record.prompt)]]
        out.append(PreferenceRecord(prompt=record.prompt, responses=[record.responses[0], *sampled],
                                    annotator=record.annotator, metadata=record.metadata, source=record.source))
    return out


def samples_digest(texts: Any) -> str:
    """sha256 of the samples as canonical JSON: stored beside them, so an edited or damaged file is detected."""
    return hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()


def read_reference_samples(cache: Path, key: str) -> dict[str, list[str]] | None:
    """The samples in ``cache`` when it was written for ``key`` and its content matches its digest; else None
    (nothing there, a file for another reference / K / seed / prompts, or — with a one-line warning on stderr — a
    file that cannot be read or parsed, or whose samples were truncated or edited)."""
    if not cache.exists():
        return None
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _discard_samples(cache, f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())})")
    if not isinstance(stored, dict) or not isinstance(stored.get("samples"), dict):
        return _discard_samples(cache, "not a reference samples file")
    if stored.get("key") != key:
        return None  # written for another reference, K, seed, length or prompt set
    if stored.get("digest") != samples_digest(stored["samples"]):
        return _discard_samples(cache, "its samples do not match their digest (truncated or edited)")
    return stored["samples"]


def _discard_samples(cache: Path, reason: str) -> None:
    """Say in one line why ``cache`` is not used (the caller then samples again)."""
    warn(f"{cache}: {reason}; sampling the reference again")


# ------------------------------------------------------------------------------------ reference log-probs
@torch.no_grad()
def precompute_reference(reference: torch.nn.Module, dataset: Sequence[TokenizedRecord], pad_id: int,
                         reduction: str, batch_size: int, device: torch.device,
                         pack: bool = False) -> dict[int, dict[str, torch.Tensor]]:
    """Reference log-probs of every response (and mismatched response, when present), reduced, keyed by
    dataset index, in collate row order. Records are batched in order of length, so little padding is computed."""
    reference.eval()
    cache: dict[int, dict[str, torch.Tensor]] = {}
    by_length = sorted(dataset, key=lambda item: len(item.prompt_ids) + max(map(len, item.response_ids)))
    for start in range(0, len(by_length), batch_size):
        items = by_length[start: start + batch_size]
        values = response_logps(reference, collate(items, pad_id).to(device), pack=pack
                                ).reduce(reduction).cpu()
        mismatched = None
        if "mismatched_ids" in items[0].extra:
            mismatched = response_logps(reference, mismatched_batch(items, pad_id).to(device)).reduce(reduction).cpu()
        row = 0
        for b, item in enumerate(items):
            k = len(item.response_ids)
            cache[item.index] = {"rows": values[row: row + k]}
            if mismatched is not None:
                cache[item.index]["mismatched"] = mismatched[b: b + 1]
            row += k
    return cache


def learned_mask_heads(reference: torch.nn.Module, independent: bool) -> torch.nn.ModuleDict:
    """SparsePO's learned masks on the reference's hidden states: one head shared by reward and KL, or two."""
    config = reference.config
    make = lambda: LearnedTokenMask(config.hidden_size, config.num_hidden_layers)  # noqa: E731
    heads = {"reward": make()}
    if independent:
        heads["kl"] = make()
    anchor = next(reference.parameters())
    return torch.nn.ModuleDict(heads).to(device=anchor.device, dtype=anchor.dtype)


# --------------------------------------------------------------------------------------------- the recipe
def preference_objective(config: TrainConfig, tokenizer: Any, records: list[PreferenceRecord], report: DataReport,
                         accelerator: Any, policy: torch.nn.Module
                         ) -> tuple[PreferenceObjective, list[TokenizedRecord], HeldOut | None]:
    """Reference handling, data additions (reference samples, mismatched pairs), the objective and, with
    ``data.eval_path``, its held-out evaluation (:func:`heldout_evaluation`).

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
        evaluate = heldout_evaluation(config, tokenizer, objective, reference, accelerator)
    if reference is policy:
        policy.train()
    return objective, dataset, evaluate


def heldout_evaluation(config: TrainConfig, tokenizer: Any, objective: PreferenceObjective,
                       reference: torch.nn.Module | None, accelerator: Any) -> HeldOut | None:
    """The loss and its metrics over ``data.eval_path`` (None when unset), prepared as the training data is: the
    loss's data-shape rules, KTO's mismatched pairs, UDM weights, and reference log-probs computed once (and cached
    on disk, keyed by the held-out tokens) when the training's are precomputed. Each evaluation uses a copy of the
    objective over the held-out records, with a copy of the loss's running state (read, never updated)."""
    spec, pad_id = objective.spec, tokenizer.pad_token_id
    heldout = heldout_dataset(config, tokenizer, loss_records(config),
                              announce=accelerator.is_main_process)
    if heldout is None:
        return None
    if spec.mismatched_pairs:
        attach_mismatched(heldout, seed=config.seed)
    if objective.params.get("udm"):
        attach_udm_weights(reference, heldout, pad_id)
    cache = None
    if objective.reference_cache is not None:
        cache = reference_logps(config, reference, heldout, pad_id, spec.reduction, accelerator.device,
                                accelerator.is_main_process)

    def held_out_objective() -> TokenBatches:
        return TokenBatches(dataclasses.replace(objective, items=heldout, reference_cache=cache,
                                                state=copy.deepcopy(objective.state)), pad_id, "held-out")

    return HeldOut(heldout, held_out_objective, config.batch_size, accelerator)


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


def loss_records(config: TrainConfig) -> Callable[[list[PreferenceRecord], DataReport], list[PreferenceRecord]]:
    """The data-shape rules of ``config.loss`` (see :func:`prepare_records`)."""
    spec = get_loss(config.loss)
    return lambda records, report: prepare_records(spec, spec.params(config.loss_params), records, report)


def check_preference(config: TrainConfig) -> None:
    """The loss and its parameters (names and declared ranges); token-level losses need distributed=ddp."""
    try:
        spec = get_loss(config.loss)
    except KeyError as exc:
        raise ConfigError(f"loss: {exc.args[0]}") from None
    try:
        spec.params(config.loss_params)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    if config.data.eval_path and spec.data_kind == "negatives":
        raise ConfigError(f"data.eval_path: held-out evaluation of '{spec.name}' would need reference samples for "
                          "every held-out prompt, which is not supported yet; remove data.eval_path")
    kind, _ = requested(config.distributed, config.zero_stage)
    if kind != "ddp" and spec.token_level:
        raise ConfigError(f"distributed={kind} does not support the token-level loss '{config.loss}' yet; use "
                          "distributed=ddp")


def train_preference(config: TrainConfig,
                     on_step: Callable[[int, torch.nn.Module], None] | None = None,
                     on_log: OnLog | None = None) -> TrainResult:
    return run_offline(config, on_step, loss_records(config), preference_objective, name=f"preference:{config.loss}",
                       on_log=on_log)


register_recipe(Recipe(
    "preference", "offline preference optimisation with any registered loss (`loss`, `loss_params`)",
    train_preference, check=check_preference,
    reads=("loss", "loss_params", "sft_weight", "reference.mode", "reference.path", "reference.cache",
           "reference.cache_dir", "rows_per_forward", "pack", "gradient_checkpointing", "data.eval_path"),
    distributed=("ddp", "fsdp", "deepspeed"), compiles=True, outputs=("reference_samples.json",)))
