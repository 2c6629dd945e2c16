"""The loss registry: name -> :class:`LossSpec`.

Every loss is a pure function of response log-probs (and rewards, labels, masks) that returns per-example
losses and metrics. Its spec says which data kind it needs, which log-prob reduction it uses (``sum`` or
per-token ``mean`` — the choice that broke other toolkits' IPO and SimPO), whether it needs a reference
model, its hyperparameters with defaults, and the paper they come from. The CLI, the README's methods table
and the tests are all driven by this registry.

Data kinds and the inputs a loss receives:

==========  ======================  ===============================================================
data kind   inputs                  what the recipe accepts
==========  ======================  ===============================================================
pairs       :class:`PairInputs`     pairs
ranked      :class:`RankedInputs`   rankings of K >= 2 responses; pairs are rankings with K = 2
unpaired    :class:`UnpairedInputs` unpaired binary labels; pairs are converted (chosen -> desirable,
                                    rejected -> undesirable) and the conversion is reported
negatives   :class:`NegativesInputs` negatives only (K self-generated reference samples are added)
==========  ======================  ===============================================================

Anything else is an error naming the loss and the data kind.

Every numeric hyperparameter has a declared range: :data:`PARAM_RANGES` by parameter name (``beta > 0`` for every
loss), overridden per loss with ``register_loss(..., param_ranges={...})``. :meth:`LossSpec.params` refuses values
outside it (and NaN or infinities), naming ``loss_params.<name>`` and the loss.

Metric names and TRL's. A loss returns per-example metrics; the loop logs their means (``metrics.jsonl``,
TensorBoard, ``summary.json``; held-out evaluation as ``eval/<name>``). The names are kept as they are (tests,
benchmarks and reports read them); TRL 1.16's ``DPOTrainer`` logs the same quantities as:

========================  ============================  =====================================================
alignkit                  TRL ``DPOTrainer``            note
========================  ============================  =====================================================
``loss``                  ``loss``
``rewards/accuracy``      ``rewards/accuracies``        share of pairs with chosen reward > rejected (strict)
``rewards/margin``        ``rewards/margins``           chosen minus rejected implicit reward
``rewards/chosen``        ``rewards/chosen``            ``beta * (log pi - log pi_ref)`` of the chosen response
``rewards/rejected``      ``rewards/rejected``
``logps/chosen``          ``logps/chosen``              in the loss's reduction: summed (TRL) or per-token mean
``logps/rejected``        ``logps/rejected``            (SimPO, IPO-style ``mean`` losses)
``nll/preferred``         (part of ``loss``)            ``sft_weight`` > 0 (TRL: ``rpo_alpha``)
(none)                    ``logits/chosen``,            not computed (they need the full logits)
                          ``logits/rejected``,
                          ``entropy``,
                          ``mean_token_accuracy``,
                          ``num_tokens``
========================  ============================  =====================================================

Ranking losses log ``rewards/best`` / ``rewards/worst`` (TRL has none). Unpaired losses (KTO, BCO) log
``rewards/desirable`` / ``rewards/undesirable`` and ``kl``: TRL 1.16's ``KTOTrainer`` logs them as
``rewards/chosen`` / ``rewards/rejected`` (means over the desirable / undesirable examples, as ours) and ``kl``;
its ``logps/chosen`` / ``logps/rejected`` are our ``logps/policy`` split by label, and its ``rewards/margins``
is the difference of the two means (ours has no such metric for unpaired losses).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from alignkit.config import Range, checked_like
from alignkit.losses.state import LOCAL, Reducer
from alignkit.utils.names import did_you_mean

Reduction = Literal["sum", "mean"]
DataKind = Literal["pairs", "ranked", "unpaired", "negatives"]


@dataclass
class TokenLogps:
    """Token-level view of a set of sequences (for token-level losses): [B, T] tensors, zero off the response.

    ``kl[t] = sum_v pi_ref(v) * (log pi(v) - log pi_ref(v))`` at each response position (minus the per-token
    KL(pi_ref || pi)); ``weights`` / ``kl_weights`` are per-token mask values for the reward and KL terms.
    """

    policy: torch.Tensor
    reference: torch.Tensor
    mask: torch.Tensor
    kl: torch.Tensor
    weights: torch.Tensor
    kl_weights: torch.Tensor


@dataclass
class PairInputs:
    """Reduced log-probs of chosen (w) and rejected (l) responses, one per example.

    ``policy_*`` carry gradients; ``ref_*`` are None for reference-free losses. ``chosen_nll`` is the
    per-token-mean negative log-likelihood of the chosen response (for SFT terms). ``scores_*`` hold the
    records' per-response scores by name (e.g. other objectives' rewards for MODPO). ``state`` is the loss's
    running state (e.g. BCO's reward shift), owned and checkpointed by the recipe.
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_nll: torch.Tensor | None = None
    scores_chosen: dict[str, torch.Tensor] = field(default_factory=dict)
    scores_rejected: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens_chosen: TokenLogps | None = None
    tokens_rejected: TokenLogps | None = None
    state: Any = None
    reducer: Reducer = LOCAL

    @property
    def chosen_logratios(self) -> torch.Tensor:
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return self.policy_rejected - self.ref_rejected

    @property
    def margin(self) -> torch.Tensor:
        """D = (l(y_w) - l_ref(y_w)) - (l(y_l) - l_ref(y_l))."""
        return self.chosen_logratios - self.rejected_logratios


@dataclass
class RankedInputs:
    """K responses per example, best first, padded to the largest K: ``[B, K]`` tensors with ``valid``."""

    policy: torch.Tensor
    valid: torch.Tensor                      # bool [B, K]
    reference: torch.Tensor | None = None
    scores: torch.Tensor | None = None       # [B, K] rewards / scores, higher is better (None if absent)
    best_nll: torch.Tensor | None = None     # [B] per-token-mean NLL of the best response
    best_nll_sum: torch.Tensor | None = None  # [B] summed NLL of the best response


@dataclass
class UnpairedInputs:
    """One response per example with a desirable (1) / undesirable (0) label.

    ``kl_policy`` / ``kl_reference`` are the log-probs of mismatched (prompt, other response) pairs used by
    KTO's reference point; ``weights`` are optional per-example weights (BCO's distribution matching).
    """

    policy: torch.Tensor
    labels: torch.Tensor
    reference: torch.Tensor | None = None
    kl_policy: torch.Tensor | None = None
    kl_reference: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    state: Any = None
    reducer: Reducer = LOCAL


@dataclass
class NegativesInputs:
    """A human negative y_l and K self-generated samples y_1..y_K (from the reference policy) per example."""

    negative_policy: torch.Tensor            # [B]
    negative_reference: torch.Tensor         # [B]
    samples_policy: torch.Tensor             # [B, K]
    samples_reference: torch.Tensor          # [B, K]
    samples_valid: torch.Tensor              # bool [B, K]


@dataclass
class LossOutput:
    losses: torch.Tensor                                    # [B] per example
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B] per example


PARAM_RANGES: dict[str, Range] = {
    "beta": Range(gt=0),                        # the inverse temperature of every implicit-reward loss
    "label_smoothing": Range(ge=0, lt=0.5),     # 0.5 makes cDPO constant and divides robust DPO by zero
    "alpha": Range(ge=0),                       # CPO's NLL weight, D2O's negative weight, XPO / SELM exploration
    "num_samples": Range(ge=1),                 # D2O's K reference samples
    "tau": Range(gt=0),                         # DiscoPOP's modulation temperature
    "epsilon": Range(gt=0, lt=1),               # EXO's label smoothing
    "desirable_weight": Range(ge=0),
    "undesirable_weight": Range(ge=0),
    "lam": Range(ge=0),                         # ORPO's odds-ratio weight, SLiC's regulariser
    "delta": Range(ge=0),                       # SLiC's hinge margin
    "gamma": Range(ge=0),                       # SimPO's target reward margin
    "sft_weight": Range(ge=0),                  # PRO's SFT term
    "weight": Range(gt=0, le=1),                # MODPO's weight of the preference objective
    "l1": Range(ge=0),                          # SparsePO's mask sparsity penalty
}


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[..., LossOutput]
    data_kind: DataKind
    reduction: Reduction
    needs_reference: bool
    paper: str
    defaults: dict[str, Any]
    aliases: tuple[str, ...] = ()
    batch_coupled: bool = False   # per-example losses depend on the rest of the batch (e.g. AOT's sorting)
    stateful: bool = False        # keeps running state across steps (e.g. BCO's reward shift)
    token_level: bool = False     # needs token-level inputs from a live reference model (e.g. SparsePO)
    mismatched_pairs: bool = False  # needs log-probs of (prompt, another record's response) pairs (KTO's z0)
    ranges: dict[str, Range] = field(default_factory=dict)  # allowed values of the numeric parameters

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.fn) or "").splitlines()[0]

    def params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with ``overrides``; unknown names are errors with a suggestion."""
        merged = dict(self.defaults)
        for key, value in (overrides or {}).items():
            where = f"loss_params.{key}: loss '{self.name}'"
            if key not in self.defaults:
                raise KeyError(f"{where} has no parameter '{key}'{did_you_mean(key, self.defaults)}; "
                               f"its parameters: {sorted(self.defaults) or 'none'}")
            value = checked_like(value, self.defaults[key], where, self.ranges.get(key), error=KeyError)
            merged[key] = value
        return merged

    def __call__(self, inputs: Any, **overrides: Any) -> LossOutput:
        return self.fn(inputs, **self.params(overrides))


LOSSES: dict[str, LossSpec] = {}
ALIASES: dict[str, str] = {}


def register_loss(name: str, *, data_kind: DataKind, reduction: Reduction, needs_reference: bool, paper: str,
                  aliases: tuple[str, ...] = (), batch_coupled: bool = False, stateful: bool = False,
                  token_level: bool = False, mismatched_pairs: bool = False,
                  param_ranges: dict[str, Range] | None = None,
                  ) -> Callable[[Callable[..., LossOutput]], Callable[..., LossOutput]]:
    """Register ``fn(inputs, **params)``; its keyword defaults become the spec's documented defaults, and each
    numeric parameter's range comes from ``param_ranges`` or else :data:`PARAM_RANGES`."""

    def wrap(fn: Callable[..., LossOutput]) -> Callable[..., LossOutput]:
        for key in (name, *aliases):
            if key in LOSSES or key in ALIASES:
                raise ValueError(f"loss '{key}' is registered twice")
        defaults = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                    if p.default is not inspect.Parameter.empty}
        ranges = {key: (param_ranges or {}).get(key, PARAM_RANGES.get(key)) for key in defaults}
        LOSSES[name] = LossSpec(name, fn, data_kind, reduction, needs_reference, paper, defaults, aliases,
                                batch_coupled, stateful, token_level, mismatched_pairs,
                                {key: bounds for key, bounds in ranges.items() if bounds is not None})
        ALIASES.update({alias: name for alias in aliases})
        return fn

    return wrap


def get_loss(name: str) -> LossSpec:
    name = ALIASES.get(name, name)
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'{did_you_mean(name, [*LOSSES, *ALIASES])}; "
                       f"available: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]
