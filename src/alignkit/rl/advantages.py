"""Advantage estimators, in a small registry: ``register_advantage(name)`` / ``get_advantage(name)`` (verl-style).

Every estimator is ``fn(rewards, mask, **params) -> Advantages`` with ``advantages`` and ``returns`` ``[B, T]``, zero
off the response mask. ``rewards`` is either ``[B]`` (one score per sequence) or ``[B, T]`` (per-token rewards, e.g.
:func:`alignkit.rl.rewards.ppo_token_rewards`). Outcome estimators (``rloo``, ``grpo``, ``reinforce_baseline``) use
the sequence return ``R_i`` (the score, or the token rewards summed over the response) and broadcast the sequence
advantage over its response tokens (``Advantages.sequence`` keeps it as ``[B]``); their ``returns`` are ``R_i``
broadcast the same way.

**Groups**: ``B = P * G`` samples laid out prompt-major — rows ``p*G .. p*G + G - 1`` are the G samples of prompt p —
and ``group_size = G`` (the layout TRL's ``rewards.view(-1, num_generations)`` assumes). Group statistics are local
to a process, so each process must hold whole groups.

Estimators:

* ``gae`` (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation"):
  ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, ``returns = A + V``. Only
  response tokens are steps: masked-out positions are skipped (their reward and value are ignored and the recursion
  carries ``V_{next}`` and ``A_{next}`` across them), so tokens after the end contribute nothing and ``V`` after the
  last response token is 0. Skipping also makes masks with holes (e.g. tool-output tokens) work, as verl does.
  PPO-RLHF defaults ``gamma = 1, lam = 0.95``. On right-padded masks this equals TRL 0.11.4's PPOv2 loop (values
  and rewards zeroed after the end; checked once on identical inputs — TRL 1.16 has no PPO).
* ``rloo`` (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
  Feedback in LLMs", arXiv:2402.14740): ``A_i = R_i - mean_{j != i} R_j`` within each group (``G >= 2``), equal to
  ``G / (G - 1) * (R_i - mean_j R_j)``. Matches TRL 1.16 ``RLOOTrainer`` (``(sum - R_i) / (G - 1)`` baseline;
  ``normalize=True`` then applies its batch normalisation ``(A - mean) / (std + 1e-4)``, unbiased std).
* ``grpo`` (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300): ``A_i = (R_i - mean_group) / (std + eps)``.
  Matches TRL 1.16 ``GRPOTrainer._generate_and_score_completions`` (``multi_objective_aggregation =
  "sum_then_normalize"``): the std is **unbiased** (Bessel, TRL's ``nanstd``), ``eps = 1e-4``; ``scale_rewards`` is
  ``"group"`` (group std, TRL's default), ``"batch"`` (the std of all rewards in the batch — the mean subtracted is
  still the group's) or ``"none"`` (Dr. GRPO: no division).
* ``reinforce_baseline``: ``A_i = R_i - b`` with ``b`` the batch mean (ReMax/REINFORCE-style batch baseline) or a
  running mean of past rewards (:class:`~alignkit.rl.normalize.RunningMoments`; the baseline is read *before* the
  batch is folded in, so it does not depend on the sample it is subtracted from; it is 0 with no history).

**Specs**: every estimator is registered with an :class:`AdvantageSpec` that carries what a recipe needs to know:
its paper, its user-settable parameters with defaults (the function's keyword defaults, e.g. ``gamma`` / ``lam``),
their ranges (:data:`PARAM_RANGES`, overridable per estimator) and choices, whether it needs a value model
(``needs_values``), the smallest group of samples per prompt it accepts (``min_group_size``), its default number of
samples per prompt, and whether advantages are whitened / the KL goes into the loss by default. Runtime inputs the
recipe supplies (:data:`RUNTIME_INPUTS`: ``values``, ``group_size``, ``reduce_sum``, ``running``) are not parameters:
an estimator receives those its signature names. ``register_advantage(name, ...)`` is a decorator, so an estimator
registered in a user's module works with ``recipe: rl`` (``rl.advantage: NAME``, ``rl.advantage_params: {...}``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from alignkit.config import Range, checked_like
from alignkit.rl.normalize import ReduceSum, RunningMoments, as_mask, masked_sum
from alignkit.utils.names import did_you_mean


@dataclass
class Advantages:
    advantages: torch.Tensor  # [B, T], 0 off the response
    returns: torch.Tensor     # [B, T], 0 off the response (value targets for GAE; R_i broadcast otherwise)
    sequence: torch.Tensor | None = None  # [B] the per-sequence advantage of outcome estimators (None for gae)


AdvantageFn = Callable[..., Advantages]

RUNTIME_INPUTS = ("values", "group_size", "reduce_sum", "running")
"""Inputs the recipe supplies (not user parameters): ``values`` ``[B, T]`` (from the value model, for estimators with
``needs_values``), ``group_size`` (samples per prompt), ``reduce_sum`` (sum over processes, or None), ``running``
(a :class:`~alignkit.rl.normalize.RunningMoments` the recipe owns and checkpoints)."""

PARAM_RANGES: dict[str, Range] = {
    "gamma": Range(ge=0, le=1),   # GAE discount
    "lam": Range(ge=0, le=1),     # GAE lambda
    "eps": Range(gt=0),           # the std's epsilon of rloo / grpo
}


@dataclass(frozen=True)
class AdvantageSpec:
    """A registered advantage estimator and what a recipe needs to know about it (see the module docstring)."""

    name: str
    fn: AdvantageFn
    paper: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)       # user-settable parameters -> default
    ranges: dict[str, Range] = field(default_factory=dict)       # allowed values of the numeric parameters
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # allowed values of the string parameters
    runtime: tuple[str, ...] = ()             # the RUNTIME_INPUTS the function reads
    needs_values: bool = False                # needs a value model (value head or critic)
    min_group_size: int = 1                   # fewest samples per prompt it accepts
    default_samples: int = 1                  # samples per prompt when rl.num_samples is null
    whiten_by_default: bool = False           # whiten advantages when rl.whiten_advantages is null
    kl_in_loss_by_default: bool = False       # the KL penalty goes into the loss (not the reward) when rl.kl_in is null
    description: str = ""

    @property
    def summary(self) -> str:
        """``description``, else the first line of the function's docstring."""
        return self.description or next(iter((inspect.getdoc(self.fn) or "").splitlines()), "")

    def params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with ``overrides``: unknown names are KeyErrors, wrong types and values outside the
        declared range or choices ValueErrors; each a one-line message naming ``rl.advantage_params.<name>``."""
        merged = dict(self.defaults)
        for key, value in (overrides or {}).items():
            where = f"rl.advantage_params.{key}: advantage '{self.name}'"
            if key not in self.defaults:
                runtime = " (an input the recipe supplies, not a setting)" if key in self.runtime else ""
                raise KeyError(f"{where} has no parameter '{key}'{runtime}{did_you_mean(key, self.defaults)}; "
                               f"its parameters: {sorted(self.defaults) or 'none'}")
            value = checked_like(value, self.defaults[key], where, self.ranges.get(key))
            options = self.choices.get(key)
            if options is not None and value not in options:
                raise ValueError(f"{where} expects one of {', '.join(map(str, options))}, got {value!r}"
                                 f"{did_you_mean(str(value), map(str, options))}")
            merged[key] = value
        return merged

    def inputs(self, **available: Any) -> dict[str, Any]:
        """The runtime inputs this estimator reads, picked from ``available``."""
        return {key: available[key] for key in self.runtime if key in available}

    def __call__(self, rewards: torch.Tensor, mask: torch.Tensor, params: dict[str, Any] | None = None,
                 **runtime: Any) -> Advantages:
        """``fn(rewards, mask, **inputs, **params)`` with validated ``params`` (defaults filled in)."""
        return self.fn(rewards, mask, **self.inputs(**runtime), **self.params(params))


ADVANTAGES: dict[str, AdvantageFn] = {}            # name -> function (kept for callers of the plain functions)
ADVANTAGE_SPECS: dict[str, AdvantageSpec] = {}     # name -> spec


def register_advantage(name: str, *, paper: str = "", needs_values: bool | None = None, min_group_size: int = 1,
                       default_samples: int | None = None, whiten_by_default: bool | None = None,
                       kl_in_loss_by_default: bool = False, param_ranges: dict[str, Range] | None = None,
                       param_choices: dict[str, tuple[str, ...]] | None = None, summary: str = "",
                       ) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register ``fn(rewards, mask, **inputs, **params) -> Advantages`` under ``name``.

    ``fn``'s keyword parameters with defaults (other than :data:`RUNTIME_INPUTS`) become the user-settable
    parameters (``rl.advantage_params``); their ranges come from ``param_ranges`` or else :data:`PARAM_RANGES`.
    ``needs_values`` defaults to whether ``fn`` reads ``values``; ``default_samples`` to ``max(1, min_group_size)``
    (4 when that is >= 2); ``whiten_by_default`` to ``needs_values``. Returns ``fn`` unchanged.
    """

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES:
            raise ValueError(f"advantage estimator '{name}' is registered twice")
        parameters = list(inspect.signature(fn).parameters.values())[2:]  # after rewards, mask
        runtime = tuple(p.name for p in parameters if p.name in RUNTIME_INPUTS)
        defaults: dict[str, Any] = {}
        for p in parameters:
            if p.name in RUNTIME_INPUTS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.default is inspect.Parameter.empty:
                raise ValueError(f"advantage estimator '{name}': parameter '{p.name}' needs a default (or is one of "
                                 f"the runtime inputs {', '.join(RUNTIME_INPUTS)})")
            defaults[p.name] = p.default
        values = "values" in runtime if needs_values is None else needs_values
        if values and "values" not in runtime:
            raise ValueError(f"advantage estimator '{name}': needs_values=True but it takes no 'values' argument")
        if min_group_size < 1:
            raise ValueError(f"advantage estimator '{name}': min_group_size must be >= 1")
        samples = default_samples if default_samples is not None else (4 if min_group_size >= 2 else 1)
        if samples < min_group_size:
            raise ValueError(f"advantage estimator '{name}': default_samples {samples} < min_group_size "
                             f"{min_group_size}")
        ranges = {key: (param_ranges or {}).get(key, PARAM_RANGES.get(key)) for key in defaults}
        ADVANTAGES[name] = fn
        ADVANTAGE_SPECS[name] = AdvantageSpec(
            name, fn, paper, defaults, {k: r for k, r in ranges.items() if r is not None},
            {k: tuple(v) for k, v in (param_choices or {}).items() if k in defaults}, runtime, values,
            min_group_size, samples, values if whiten_by_default is None else whiten_by_default,
            kl_in_loss_by_default, summary)
        return fn

    return wrap


def get_advantage(name: str) -> AdvantageFn:
    """The estimator function registered under ``name`` (:func:`get_advantage_spec` for its spec)."""
    return get_advantage_spec(name).fn


def get_advantage_spec(name: str) -> AdvantageSpec:
    if name not in ADVANTAGE_SPECS:
        raise KeyError(f"unknown advantage estimator '{name}'{did_you_mean(name, ADVANTAGE_SPECS)}; "
                       f"available: {', '.join(sorted(ADVANTAGE_SPECS))}")
    return ADVANTAGE_SPECS[name]


def _default_text(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def advantage_rows() -> list[dict[str, str]]:
    """One row per registered estimator for ``alignkit methods``: name, summary, paper, params (``k=default``)."""
    return [{"name": spec.name, "summary": spec.summary, "paper": spec.paper,
             "params": ", ".join(f"{k}={_default_text(v)}" for k, v in spec.defaults.items()) or "-"}
            for spec in sorted(ADVANTAGE_SPECS.values(), key=lambda spec: spec.name)]


# ------------------------------------------------------------------------------------------------------------ helpers


def sequence_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``R_i`` ``[B]``: ``rewards`` itself if ``[B]``, else the token rewards summed over the response."""
    if rewards.dim() == 1:
        return rewards
    if rewards.dim() == 2:
        return masked_sum(rewards, mask, dim=-1)
    raise ValueError(f"rewards must be [B] or [B, T], got shape {tuple(rewards.shape)}")


def broadcast_to_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A per-sequence ``[B]`` tensor spread over the response tokens of ``mask`` ``[B, T]`` (0 elsewhere)."""
    m = mask if mask.dtype == torch.bool else mask != 0
    return torch.where(m, values.unsqueeze(-1), torch.zeros((), dtype=values.dtype, device=values.device))


def _groups(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1 or returns.shape[0] % group_size:
        raise ValueError(f"batch of {returns.shape[0]} samples is not a whole number of groups of {group_size} "
                         f"(layout: prompt-major, rows p*G .. p*G+G-1 belong to prompt p)")
    return returns.view(-1, group_size)


def _outcome(adv: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> Advantages:
    return Advantages(broadcast_to_tokens(adv, mask), broadcast_to_tokens(returns, mask), adv)


# --------------------------------------------------------------------------------------------------------- estimators


@register_advantage(
    "gae", paper="Schulman et al. 2016, High-Dimensional Continuous Control Using Generalized Advantage Estimation "
                 "(arXiv:1506.02438)", needs_values=True, whiten_by_default=True)
def gae(rewards: torch.Tensor, mask: torch.Tensor, *, values: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> Advantages:
    """Generalized advantage estimation over response tokens (masked-out positions are skipped)."""
    if rewards.dim() != 2 or values.shape != rewards.shape:
        raise ValueError(f"gae needs token rewards and values of the same [B, T] shape, got {tuple(rewards.shape)} "
                         f"and {tuple(values.shape)}")
    m = as_mask(mask, rewards)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(m, rewards, zero)
    v = torch.where(m, values.to(rewards.dtype), zero)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    advantages = torch.zeros_like(r)
    for t in range(r.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv_t = delta + gamma * lam * next_adv
        on = m[:, t]
        advantages[:, t] = torch.where(on, adv_t, zero)
        next_adv = torch.where(on, adv_t, next_adv)
        next_value = torch.where(on, v[:, t], next_value)
    returns = torch.where(m, advantages + v, zero)
    return Advantages(advantages, returns)


@register_advantage(
    "rloo", paper="Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization for Learning from "
                  "Human Feedback in LLMs (arXiv:2402.14740)", min_group_size=2, default_samples=4)
def rloo(rewards: torch.Tensor, mask: torch.Tensor, *, group_size: int, normalize: bool = False,
         eps: float = 1e-4) -> Advantages:
    """RLOO: ``A_i = R_i - mean_{j != i} R_j`` within each group of ``group_size >= 2`` samples."""
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2 (the leave-one-out baseline of a single sample is undefined)")
    returns = sequence_returns(rewards, mask)
    grouped = _groups(returns, group_size)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    adv = (grouped - baseline).reshape(-1)
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + eps)
    return _outcome(adv, returns, mask)


@register_advantage(
    "grpo", paper="Shao et al. 2024, DeepSeekMath (arXiv:2402.03300)", min_group_size=2, default_samples=4,
    kl_in_loss_by_default=True, param_choices={"scale_rewards": ("group", "batch", "none")})
def grpo(rewards: torch.Tensor, mask: torch.Tensor, *, group_size: int,
         scale_rewards: Literal["group", "batch", "none"] = "group", eps: float = 1e-4,
         reduce_sum: ReduceSum | None = None) -> Advantages:
    """GRPO: ``A_i = (R_i - mean_group) / (std + eps)``, std unbiased, per ``scale_rewards`` (TRL 1.16's rule).

    ``reduce_sum`` only matters for ``scale_rewards="batch"`` (the std of all processes' rewards).
    """
    returns = sequence_returns(rewards, mask)
    grouped = _groups(returns, group_size)
    centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale_rewards == "none":
        return _outcome(centred, returns, mask)
    if scale_rewards == "group":
        std = grouped.std(1, keepdim=True).expand_as(grouped).reshape(-1) if group_size > 1 \
            else torch.zeros_like(returns)
    elif scale_rewards == "batch":
        std = _batch_std(returns, reduce_sum).expand_as(returns)
    else:
        raise ValueError(f"grpo: scale_rewards must be 'group', 'batch' or 'none', got '{scale_rewards}'")
    return _outcome(centred / (std + eps), returns, mask)


def _batch_std(x: torch.Tensor, reduce_sum: ReduceSum | None) -> torch.Tensor:
    """Unbiased std of ``x`` over all processes (0 for a single value)."""
    stats = torch.stack([x.sum(), torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device)])
    if reduce_sum is not None:
        stats = reduce_sum(stats)
    total, n = stats.unbind()
    if float(n) < 2:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    sq = ((x - total / n) ** 2).sum()
    if reduce_sum is not None:
        sq = reduce_sum(sq)
    return (sq / (n - 1)).sqrt()


@register_advantage(
    "reinforce_baseline", paper="Williams 1992, REINFORCE; Li et al. 2023, ReMax (arXiv:2310.10505)",
    param_choices={"baseline": ("batch", "running")})
def reinforce_baseline(rewards: torch.Tensor, mask: torch.Tensor, *,
                       baseline: Literal["batch", "running"] = "batch", running: RunningMoments | None = None,
                       reduce_sum: ReduceSum | None = None) -> Advantages:
    """REINFORCE with a baseline: ``A_i = R_i - b``; ``b`` = the (global) batch mean, or ``running``'s mean so far.

    With ``baseline="running"`` the caller owns ``running`` (and checkpoints it); it is updated with this batch after
    the baseline is read. Its own ``reduce_sum`` makes it global.
    """
    returns = sequence_returns(rewards, mask)
    if baseline == "batch":
        stats = torch.stack([returns.sum(), torch.tensor(float(returns.numel()), dtype=returns.dtype,
                                                         device=returns.device)])
        if reduce_sum is not None:
            stats = reduce_sum(stats)
        b = stats[0] / stats[1]
    elif baseline == "running":
        if running is None:
            raise ValueError("reinforce_baseline: baseline='running' needs running=RunningMoments()")
        b = torch.tensor(running.mean, dtype=returns.dtype, device=returns.device)
        running.update(returns)
    else:
        raise ValueError(f"reinforce_baseline: baseline must be 'batch' or 'running', got '{baseline}'")
    return _outcome(returns - b, returns, mask)
