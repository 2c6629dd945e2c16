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
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch

from alignkit.data.collate import Batch, collate
from alignkit.data.jsonio import canonical_json
from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.models.logps import response_distributions, response_logps
from alignkit.losses import LossSpec, NegativesInputs, PairInputs, RankedInputs, TokenLogps, UnpairedInputs
from alignkit.losses.state import LOCAL, Reducer, RunningMean
from alignkit.models.token_masks import LearnedTokenMask, activation_mask
from alignkit.sampling.generate import SamplingConfig, as_response, generate
from alignkit.engine.reference_cache import model_digest
from alignkit.utils.io import warn, write_json

KIND_HELP = {
    "pairs": "pairs (prompt, chosen, rejected)",
    "ranked": "rankings (prompt, responses, ranking | scores) or pairs",
    "unpaired": "unpaired binary labels (prompt, completion, label), pairs or negatives",
    "negatives": "negatives only (prompt, rejected), or unpaired records labelled false",
}


# --------------------------------------------------------------------------------------------- data rules
def _split(record: PreferenceRecord, k: int, label: bool | None) -> PreferenceRecord:
    return PreferenceRecord(prompt=record.prompt, responses=[record.responses[k]],
                            labels=None if label is None else [label], annotator=record.annotator,
                            metadata=record.metadata, source=record.source)


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
            out += [_split(record, record.ranking[0], True), _split(record, record.ranking[1], False)]
            report.converted["pairs_to_unpaired"] += 2
        elif spec.data_kind == "unpaired" and kind == "negatives":
            out += [_split(record, k, False) for k in range(len(record.responses))]
            report.converted["negatives_to_unpaired"] += len(record.responses)
        elif spec.data_kind == "negatives" and (kind == "negatives" or (kind == "unpaired" and not any(
                record.labels or [True]))):
            out += [_split(record, k, None) for k in range(len(record.responses))]
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


def mismatched_partners(prompt_keys: Sequence[str], seed: int) -> list[int]:
    """For each record, the record whose response it is paired with in KTO's reference point.

    KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", section 4) estimates
    its reference point z0 = KL(pi(y'|x) || pi_ref(y'|x)) on mismatched pairs: x_i with the response y_j of a
    record with another prompt. The records are shuffled (a generator seeded with ``seed`` alone, so the pairs are
    a pure function of the prompts and the seed: every process and a resumed run see the same ones), then each
    record takes the response of the next record in the shuffled cycle whose prompt differs — never one with its
    own prompt. O(n). Raises ValueError when every record has the same prompt.
    """
    n = len(prompt_keys)
    if len(set(prompt_keys)) < 2:
        raise ValueError("every record has the same prompt")
    order = list(range(n))
    random.Random(f"alignkit/kto-mismatched/{seed}").shuffle(order)
    keys = [prompt_keys[order[p % n]] for p in range(2 * n)]  # the shuffled cycle, twice: no wrap-around
    next_other = [2 * n - 1] * (2 * n)  # position of the next record whose prompt differs
    for p in range(2 * n - 2, -1, -1):
        next_other[p] = p + 1 if keys[p + 1] != keys[p] else next_other[p + 1]
    partners = [0] * n
    for p in range(n):
        partners[order[p]] = order[next_other[p] % n]
    return partners


def attach_mismatched(dataset: Sequence[TokenizedRecord], seed: int = 0) -> None:
    """KTO's reference point uses (prompt_i, response_j) pairs with prompt_j != prompt_i (see
    :func:`mismatched_partners`); fixed per record and seed, so their reference log-probs can be cached."""
    try:
        partners = mismatched_partners([canonical_json(item.record.prompt) for item in dataset], seed)
    except ValueError:
        raise DataError(f"KTO estimates its reference point z0 on mismatched pairs (a prompt with the response to "
                        f"another prompt), but all {len(dataset)} records have this same prompt",
                        source=dataset[0].record.source if dataset else None, field="prompt") from None
    for item, partner in zip(dataset, partners):
        item.extra["mismatched_ids"] = dataset[partner].response_ids[0]


def mismatched_batch(batch_items: Sequence[TokenizedRecord], pad_id: int) -> Batch:
    return collate([TokenizedRecord(i.index, _split(i.record, 0, None), i.prompt_ids, [i.extra["mismatched_ids"]])
                    for i in batch_items], pad_id)


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


# --------------------------------------------------------------------------------------------- objective
@dataclass
class PreferenceObjective:
    """A registered loss on policy (and reference) log-probs; optional SFT term on the preferred response."""

    spec: LossSpec
    params: dict[str, Any]
    pad_id: int
    items: Sequence[TokenizedRecord]
    sft_weight: float = 0.0
    reference: torch.nn.Module | None = None
    reference_cache: dict[int, dict[str, torch.Tensor]] | None = None
    reducer: Reducer = LOCAL
    state: RunningMean | None = field(default=None)
    mask_heads: torch.nn.ModuleDict | None = None   # SparsePO's learned token masks ("reward", maybe "kl")
    reference_context: Callable[[], ContextManager] = contextlib.nullcontext  # LoRA: adapter disabled
    rows_per_forward: int | None = None  # length-sorted row groups per forward (less padding)
    pack: bool = False  # a record's responses in one sequence with the prompt once

    def __post_init__(self) -> None:
        if self.spec.stateful and self.state is None:
            self.state = RunningMean()
        self.items_by_index = {item.index: item for item in self.items}

    # trainable modules and state the loss owns, optimised with the policy and saved in checkpoints
    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.mask_heads.parameters()) if self.mask_heads is not None else []

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.state is not None:
            state["running_mean"] = self.state.state_dict()
        if self.mask_heads is not None:
            state["mask_heads"] = self.mask_heads.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.state is not None and "running_mean" in state:
            self.state.load_state_dict(state["running_mean"])
        if self.mask_heads is not None and "mask_heads" in state:
            self.mask_heads.load_state_dict(state["mask_heads"])

    def count(self, batch: Batch) -> int:
        return batch.num_records

    def reference_values(self, batch: Batch, key: str = "rows") -> torch.Tensor | None:
        if not self.spec.needs_reference:
            return None
        if self.reference_cache is not None:
            return torch.cat([self.reference_cache[int(i)][key] for i in batch.record_index]).to(batch.input_ids.device)
        target = batch if key == "rows" else self._mismatched(batch)
        with torch.no_grad(), self.reference_context():
            return response_logps(self.reference, target, rows_per_forward=self.rows_per_forward,
                                  pack=self.pack).reduce(self.spec.reduction)

    def _mismatched(self, batch: Batch) -> Batch:
        chosen = [self.items_by_index[int(i)] for i in batch.record_index]
        return mismatched_batch(chosen, self.pad_id).to(batch.input_ids.device)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps = response_logps(model, batch, rows_per_forward=self.rows_per_forward, pack=self.pack)
        policy = logps.reduce(self.spec.reduction)
        reference = self.reference_values(batch)
        nll = -logps.mean()
        build = getattr(self, f"_inputs_{self.spec.data_kind}")
        inputs, preferred_nll = build(model, batch, policy, reference, nll, logps)
        out = self.spec.fn(inputs, **self.params)
        losses, metrics = out.losses, dict(out.metrics)
        if self.sft_weight:
            losses = losses + self.sft_weight * preferred_nll
            metrics["nll/preferred"] = preferred_nll.detach()
        return losses.sum(), metrics

    # one builder per data kind: (inputs for the loss, NLL of the preferred response per example)
    def _inputs_pairs(self, model, batch, policy, reference, nll, logps):
        scores = batch.scores
        inputs = PairInputs(policy[0::2], policy[1::2], None if reference is None else reference[0::2],
                            None if reference is None else reference[1::2], nll[0::2],
                            {k: v[0::2] for k, v in scores.items()}, {k: v[1::2] for k, v in scores.items()},
                            state=self.state, reducer=self.reducer)
        if self.spec.token_level:
            tokens = self.token_inputs(model, batch)
            inputs.tokens_chosen, inputs.tokens_rejected = tokens[0], tokens[1]
        return inputs, nll[0::2]

    def token_inputs(self, model: torch.nn.Module, batch: Batch) -> tuple[TokenLogps, TokenLogps]:
        """Per-token log-probs, the per-token KL term and token masks for chosen (rows 0::2) and rejected rows."""
        policy = response_distributions(model, batch)
        with torch.no_grad(), self.reference_context():
            reference = response_distributions(self.reference, batch, hidden_states=True)
        kl = policy.scatter((reference.full.exp() * (policy.full - reference.full)).sum(-1))
        mask = policy.logps.mask
        if self.mask_heads is None:
            weights = kl_weights = activation_mask(reference.hidden_states, mask).to(kl.dtype)
        else:
            weights = self.mask_heads["reward"](reference.hidden_states, mask)
            kl_weights = self.mask_heads["kl"](reference.hidden_states, mask) if "kl" in self.mask_heads else weights
        rows = lambda t, start: t[start::2]  # noqa: E731
        return tuple(TokenLogps(rows(policy.logps.token_logps, i), rows(reference.logps.token_logps, i),
                                rows(mask, i), rows(kl, i), rows(weights, i), rows(kl_weights, i))
                     for i in (0, 1))  # type: ignore[return-value]

    def _inputs_ranked(self, model, batch, policy, reference, nll, logps):
        score = batch.scores.get("score")
        inputs = RankedInputs(batch.per_record(policy), batch.valid_mask(),
                              None if reference is None else batch.per_record(reference),
                              None if score is None else batch.per_record(score), batch.per_record(nll)[:, 0],
                              -batch.per_record(logps.sum())[:, 0])
        return inputs, inputs.best_nll

    def _inputs_unpaired(self, model, batch, policy, reference, nll, logps):
        kl_policy = kl_reference = None
        if self.spec.mismatched_pairs:
            with torch.no_grad():
                kl_policy = response_logps(model, self._mismatched(batch)).reduce(self.spec.reduction)
            kl_reference = self.reference_values(batch, "mismatched")
        labels = batch.labels.to(policy.dtype)
        weights = None
        if "udm_weight" in self.items[0].extra:
            weights = torch.tensor([self.items_by_index[int(i)].extra["udm_weight"] for i in batch.record_index],
                                   dtype=policy.dtype, device=policy.device)
        inputs = UnpairedInputs(policy, labels, reference, kl_policy, kl_reference, weights, self.state, self.reducer)
        return inputs, nll * labels

    def _inputs_negatives(self, model, batch, policy, reference, nll, logps):
        table_policy, table_ref, valid = batch.per_record(policy), batch.per_record(reference), batch.valid_mask()
        inputs = NegativesInputs(table_policy[:, 0], table_ref[:, 0], table_policy[:, 1:], table_ref[:, 1:],
                                 valid[:, 1:])
        return inputs, torch.zeros_like(inputs.negative_policy)

