"""What the preference and online recipes share: the objective that applies a registered preference loss to
policy (and reference) log-probs, and KTO's mismatched pairs (its reference point).

:class:`PreferenceObjective` computes policy (and reference) log-probs for a batch, builds the loss's input type
(pairs, ranked, unpaired, negatives) and adds the optional SFT term (``sft_weight``, RPO).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import torch

from alignkit.data.collate import Batch, collate
from alignkit.data.jsonio import canonical_json
from alignkit.data.records import DataError, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.losses import LossSpec, NegativesInputs, PairInputs, RankedInputs, TokenLogps, UnpairedInputs
from alignkit.losses.state import LOCAL, Reducer, RunningMean
from alignkit.models.logps import response_distributions, response_logps
from alignkit.models.token_masks import activation_mask


def one_response(record: PreferenceRecord, k: int, label: bool | None) -> PreferenceRecord:
    return PreferenceRecord(prompt=record.prompt, responses=[record.responses[k]],
                            labels=None if label is None else [label], annotator=record.annotator,
                            metadata=record.metadata, source=record.source)




# ------------------------------------------------------------------------------------- KTO's mismatched pairs
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
    return collate([TokenizedRecord(i.index, one_response(i.record, 0, None), i.prompt_ids, [i.extra["mismatched_ids"]])
                    for i in batch_items], pad_id)


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

