"""``recipe: rl``: policy-gradient RLHF — PPO, RLOO, GRPO, REINFORCE with a baseline — as one recipe configured by
``rl.*`` (sampling, the reward source and the held-out evaluation come from ``online.*``, as for ``recipe: online``).

**One loop step is one optimizer update on one mini-batch.** Every ``U = rl.ppo_epochs * rl.num_minibatches`` steps
a *rollout* is made (:class:`RLRollout`, the loop's rollout hook): the iteration's prompts (``num_minibatches x
batch_size x grad_accum`` per process, drawn from the seeded data order by mini-batch number, so a data epoch is
exact) are sampled ``rl.num_samples`` times, scored, and everything the updates need is computed once, without
gradients: the old log-probs (the sampler's own at temperature 1 without truncation, else a forward pass), the
reference log-probs, the values, the rewards and the advantages. The next ``U`` steps hand the loop the rollout's
mini-batches (epoch ``e``, mini-batch ``j``: a seeded shuffle of the rollout's prompts, all K samples of a prompt
kept together), and :class:`RLObjective` computes the clipped loss against that cached rollout. So the loop keeps
doing what it does for every recipe — exact gradient accumulation over micro-batches, global gradient clipping
(``optim.max_grad_norm``, over the policy *and* the value head / critic), the schedule, checkpoints — and resume
restores the cached rollout, the KL controller, the reward normaliser, the running baseline and the value weights
from the checkpoint's objective state, so an interrupted run continues with the very same mini-batches. (With
several processes each holds its own rollout and the checkpoint keeps the main process's, so such runs resume only
at rollout boundaries: make ``save_steps`` a multiple of ``U``.) ``max_steps`` and ``epochs`` count optimizer
updates as for every recipe, so with ``ppo_epochs > 1`` one ``epochs`` unit covers ``1 / ppo_epochs`` of the
prompts: prefer ``max_steps``.

Per rollout (B samples, response mask m; :mod:`alignkit.rl` for every formula):

1. score ``s_i``: the reward source's total, or MaxMin-RLHF / reward-robust combinations of its components
   (``rl.combine``, ``rl.heads``), minus ``online.missing_eos_penalty`` for responses without EOS; PPO-max reward
   normalisation and clipping with running statistics (``rl.reward_norm``);
2. token rewards ``r_t = -beta * kl_t`` (+ ``s_i`` at the last token) when ``rl.kl_in = reward`` (PPO, RLOO), else
   ``s_i`` alone and ``beta * kl_t`` (k3) joins the loss (GRPO); beta fixed or adaptive (``rl.kl_target``);
3. advantages from the registry (``rl.advantage`` with ``rl.advantage_params``: gae with the rollout values; rloo,
   grpo, reinforce_baseline from the sequence return; any estimator registered with
   :func:`~alignkit.rl.advantages.register_advantage`), optionally whitened. The estimator's spec decides the
   defaults: samples per prompt, the fewest samples it accepts, where the KL goes, whitening, and whether a value
   model (value head or ``rl.critic_path``) is built. The older keys ``rl.gamma``, ``rl.lam``, ``rl.grpo_scale``,
   ``rl.rloo_normalize`` and ``rl.baseline`` still set the built-in estimators' parameters (:data:`LEGACY_PARAMS`);
   setting one parameter both ways, or one for another estimator, is an error;
4. loss per update = clipped policy loss (token or sequence ratios) + ``vf_coef`` * clipped value loss
   + [loss KL] - ``entropy_coef`` * entropy + ``ptx_coef`` * NLL of SFT data (PPO-ptx), aggregated per token (or per
   sequence) over the whole optimizer step.

The reference is the initial policy (or ``reference.path``), or SALSA's soup of two SFT models
(``rl.reference_soup``). Every rollout logs proxy reward, gold reward (``online.gold``), KL, response length and
the value function's explained variance; every update logs entropy, clip fraction, approximate KL(pi_old || pi) and
the losses. The :class:`~alignkit.recipes.common.sampling_run.Evaluator` records proxy, gold and KL(pi || pi_init)
on held-out prompts (``online_eval.jsonl``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit.config import ConfigError, RLConfig, TrainConfig
from alignkit.data.collate import Batch, collate
from alignkit.data.formats import load_records
from alignkit.data.prompts import PromptRow
from alignkit.data.records import PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.models.logps import response_distributions, response_logps
from alignkit.models.loading import frozen_copy, load_causal_lm
from alignkit.models.scoring import language_model
from alignkit.rl import (
    AdaptiveKL,
    FixedKL,
    RewardNormalizer,
    RunningMoments,
    aggregate,
    apply_missing_eos_penalty,
    clipped_value_loss,
    explained_variance,
    masked_whiten,
    maxmin_reward,
    ppo_policy_loss,
    ppo_token_rewards,
    reward_robust,
    sequence_kl,
    token_entropy,
    token_kl,
)
from alignkit.sampling.generate import Sample, SamplingConfig, generate
from alignkit.engine.loop import (
    OnLog,
    TrainResult,
    schedule_plan,
    step_records,
    train_loop,
)
from alignkit.models.heads import Critic, ValueHead, align_to_tokens, weight_soup
from alignkit.recipes.base import Recipe, register_recipe
from alignkit.recipes.common.data import tokenize_dataset
from alignkit.recipes.common.sampling_run import Evaluator, SamplingRun, evaluation_hook
from alignkit.recipes.common.sft import sft_view
from alignkit.recipes.common.token_batches import TokenBatches
from alignkit.rewards.model import load_reward_model
from alignkit.rewards.sources import get_reward_source
from alignkit.rl.advantages import ADVANTAGE_SPECS, AdvantageSpec, get_advantage_spec

ReduceSum = Callable[[torch.Tensor], torch.Tensor]

# The older rl.* keys of the built-in estimators' parameters: rl.KEY -> (estimator, parameter). A key is read only
# for its estimator (ignored otherwise, as before) and only when it differs from its field default (null; "group"
# for grpo_scale, which cannot be null since "none" is one of its values); setting it and
# rl.advantage_params.<parameter> is an error.
LEGACY_PARAMS: dict[str, tuple[str, str]] = {
    "gamma": ("gae", "gamma"),
    "lam": ("gae", "lam"),
    "rloo_normalize": ("rloo", "normalize"),
    "grpo_scale": ("grpo", "scale_rewards"),
    "baseline": ("reinforce_baseline", "baseline"),
}

_LEGACY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RLConfig) if f.name in LEGACY_PARAMS}


def advantage_spec(config: TrainConfig) -> AdvantageSpec:
    """The spec of ``rl.advantage``; an unknown name is a ConfigError with a suggestion."""
    name = config.rl.advantage
    try:
        return get_advantage_spec(name)
    except KeyError:
        from alignkit.utils.names import did_you_mean

        raise ConfigError(f"rl.advantage: unknown advantage estimator '{name}'{did_you_mean(name, ADVANTAGE_SPECS)}; "
                          f"available: {', '.join(sorted(ADVANTAGE_SPECS))} (or register one with "
                          f"alignkit.rl.register_advantage)") from None


def advantage_params(config: TrainConfig) -> dict[str, Any]:
    """The estimator's parameters: its defaults, updated with the legacy keys and ``rl.advantage_params``."""
    rl = config.rl
    spec = advantage_spec(config)
    user = dict(rl.advantage_params or {})
    for key, (estimator, param) in LEGACY_PARAMS.items():
        value = getattr(rl, key)
        if value is None or value == _LEGACY_DEFAULTS[key]:
            continue
        if estimator != spec.name:
            raise ConfigError(f"rl.{key}: advantage {spec.name} does not use it (it sets {estimator}'s '{param}'); "
                              f"remove it, or set {spec.name}'s own settings in rl.advantage_params")
        if param in user:
            raise ConfigError(f"rl.{key} and rl.advantage_params.{param} both set {spec.name}'s '{param}'; "
                              f"keep only rl.advantage_params.{param}")
        user[param] = value
    try:
        return spec.params(user)
    except (KeyError, ValueError) as error:
        raise ConfigError(str(error.args[0])) from None


def num_samples(config: TrainConfig) -> int:
    return config.rl.num_samples or advantage_spec(config).default_samples


def kl_placement(config: TrainConfig) -> tuple[str, str]:
    """(where the KL goes, its estimator): the estimator's default (``loss``/k3 for grpo, ``reward``/k1 otherwise)
    unless ``rl.kl_in`` / ``rl.kl_estimator`` say otherwise."""
    rl = config.rl
    where = rl.kl_in or ("loss" if advantage_spec(config).kl_in_loss_by_default else "reward")
    return where, rl.kl_estimator or ("k3" if where == "loss" else "k1")


def exact_sampler_logprobs(config: TrainConfig) -> bool:
    """Whether the sampler's log-probs are the policy's own (temperature 1, no top-p / top-k truncation)."""
    online = config.online
    return online.temperature == 1.0 and online.top_p >= 1.0 and online.top_k == 0


# ------------------------------------------------------------------------------------------------ configuration
def check_rl_config(config: TrainConfig) -> None:
    """Named errors for inconsistent ``rl.*`` settings, before any model loads."""
    rl, online = config.rl, config.online
    if not online.reward:
        raise ConfigError("online.reward is required: the reward source of recipe rl (e.g. sandbox-gold, rm:PATH, "
                          "{sandbox-gold-warm: 0.5, sandbox-gold-terse: 0.5})")
    if isinstance(online.reward, str) and online.reward.startswith("pairwise:"):
        raise ConfigError(f"online.reward '{online.reward}' only compares pairs; recipe rl needs pointwise rewards")
    if online.num_samples is not None:
        raise ConfigError("online.num_samples: recipe rl takes rl.num_samples")
    spec = advantage_spec(config)
    advantage_params(config)
    k = num_samples(config)
    if k < 1:
        raise ConfigError("rl.num_samples must be >= 1")
    if k < spec.min_group_size:
        raise ConfigError(f"rl.num_samples: {rl.advantage} compares the samples of a prompt; it needs at least "
                          f"{spec.min_group_size}")
    for key in ("ppo_epochs", "num_minibatches"):
        if getattr(rl, key) < 1:
            raise ConfigError(f"rl.{key} must be >= 1")
    if rl.clip_eps <= 0 or (rl.clip_eps_high is not None and rl.clip_eps_high <= 0):
        raise ConfigError("rl.clip_eps and rl.clip_eps_high must be positive")
    if rl.kl_coef < 0 or (rl.kl_target is not None and rl.kl_target <= 0) or rl.kl_horizon <= 0:
        raise ConfigError("rl.kl_coef must be >= 0, rl.kl_target and rl.kl_horizon > 0")
    if rl.critic_path is not None and not spec.needs_values:
        users = ", ".join(sorted(name for name, s in ADVANTAGE_SPECS.items() if s.needs_values)) or "none"
        raise ConfigError(f"rl.critic_path: advantage {rl.advantage} uses no value function (only {users} does)")
    if rl.ptx_coef < 0 or (rl.ptx_coef > 0) != (rl.ptx_path is not None):
        raise ConfigError("PPO-ptx needs both rl.ptx_path (an SFT data file) and rl.ptx_coef > 0")
    if rl.combine == "none" and rl.heads is not None:
        raise ConfigError("rl.heads names reward components to combine; set rl.combine to maxmin or robust")
    if rl.heads is not None and len(rl.heads) < 2:
        raise ConfigError("rl.heads: combining needs at least two reward components")
    if not 0.0 <= rl.robust_lam <= 1.0 or not 0.0 <= rl.soup_weight <= 1.0:
        raise ConfigError("rl.robust_lam and rl.soup_weight must be in [0, 1]")
    if rl.reference_soup is not None:
        if len(rl.reference_soup) != 2:
            raise ConfigError("rl.reference_soup: SALSA averages two SFT models, give two paths")
        if config.reference.path is not None:
            raise ConfigError("rl.reference_soup replaces reference.path; set only one of them")
    if rl.old_logps == "sampler" and not exact_sampler_logprobs(config):
        raise ConfigError("rl.old_logps=sampler: the sampler's log-probs are the policy's only at temperature 1 "
                          "without top_p / top_k; use forward (or auto)")
    if rl.reward_clip <= 0:
        raise ConfigError("rl.reward_clip must be positive")
    if config.lora.enabled:
        raise ConfigError("recipe: rl does not support LoRA yet (it needs separate reference weights)")


# ------------------------------------------------------------------------------------------------ rewards
class RLReward:
    """The training reward: the source's total, or MaxMin-RLHF / reward-robust combinations of its components, minus
    the missing-EOS penalty. Also what :class:`~alignkit.recipes.common.sampling_run.Evaluator` scores as the proxy
    reward."""

    pointwise = True

    def __init__(self, config: TrainConfig, device: Any = None):
        from alignkit.rewards.sources import get_reward_source

        self.rl = config.rl
        self.penalty = config.online.missing_eos_penalty
        self.source = get_reward_source(config.online.reward, device=device)

    def score(self, prompts: Sequence[Any], samples: Sequence[Sample], metadata: Sequence[dict],
              reduce_sum: ReduceSum | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scores ``[N]`` float64, NaN where unscored; the combined components ``{name: [N]}``)."""
        result = self.source.rewards(prompts, [s.as_response(p) for p, s in zip(prompts, samples)], metadata)
        heads: dict[str, torch.Tensor] = {}
        total = torch.from_numpy(result.total.copy())
        if self.rl.combine != "none":
            names = self.rl.heads or sorted(k for k in result.components if k.startswith("head:"))
            missing = [n for n in names if n not in result.components]
            if missing or len(names) < 2:
                raise ValueError(f"rl.heads: the reward source {self.source.name!r} has no component(s) {missing}; "
                                 f"its components: {sorted(result.components) or 'none'}")
            heads = {n: torch.from_numpy(result.components[n].copy()) for n in names}
            stacked = torch.stack(list(heads.values()), 1)
            total = (maxmin_reward(stacked, self.rl.maxmin_mode, reduce_sum) if self.rl.combine == "maxmin"
                     else reward_robust(stacked, self.rl.robust_lam))
        finished = torch.tensor([s.finished for s in samples])
        return apply_missing_eos_penalty(total, finished, self.penalty), heads

    def rewards(self, prompts: Sequence[Any], samples: Sequence[Sample], metadata: Sequence[dict]) -> np.ndarray:
        """The Evaluator's view: scores of held-out samples (this process's batch only)."""
        return self.score(prompts, samples, metadata)[0].numpy()


# ------------------------------------------------------------------------------------------------ rollout data
@dataclass
class RolloutData:
    """One iteration's samples (this process), prompt-major: rows ``p*K .. p*K+K-1`` are prompt p's. Token tensors
    are response-aligned ``[N, L]`` (column j = response token j; ``mask`` marks real tokens)."""

    iteration: int
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    tokens: dict[str, torch.Tensor]   # old_logps, ref_logps, advantages, returns, values (gae)
    valid: torch.Tensor               # [N] bool: scored (a NaN reward masks the sample out of the loss)

    @property
    def num_samples(self) -> int:
        return len(self.response_ids) // len(self.prompt_ids)

    @cached_property
    def mask(self) -> torch.Tensor:
        lengths = torch.tensor([len(r) for r in self.response_ids])
        return torch.arange(int(lengths.max()))[None] < lengths[:, None]

    def record(self, p: int) -> TokenizedRecord:
        k = self.num_samples
        return TokenizedRecord(p, PreferenceRecord(prompt="", responses=["-"] * k), self.prompt_ids[p],
                               self.response_ids[p * k:(p + 1) * k])

    def rows(self, batch: Batch) -> torch.Tensor:
        """Rollout row of every batch row (record-major, responses in order), ``-1`` for PPO-ptx rows."""
        k = self.num_samples
        out = []
        for record, n in zip(batch.record_index.tolist(), batch.responses_per_record):
            out += [record * k + j for j in range(k)] if record >= 0 else [-1] * n
        return torch.tensor(out, device=batch.input_ids.device)

    def gather(self, name: str, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
        """Token tensor ``name`` in the layout of ``batch`` (``[N, T]``, 0 off RL response tokens)."""
        on = rows >= 0
        source = self.tokens[name][rows[on].cpu()]
        out = torch.zeros(batch.response_mask.shape, dtype=source.dtype)
        out[on.cpu()] = _scatter_rows(source[self.mask[rows[on].cpu()]], batch.response_mask[on].cpu())
        return out.to(batch.input_ids.device)

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "prompt_ids": self.prompt_ids, "response_ids": self.response_ids,
                "tokens": self.tokens, "valid": self.valid}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RolloutData:
        return cls(state["iteration"], state["prompt_ids"], state["response_ids"], state["tokens"], state["valid"])


def _scatter_rows(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-major values onto the set positions of ``mask`` (zeros elsewhere)."""
    out = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
    out[mask] = flat
    return out


def _response_aligned(values: torch.Tensor, batch: Batch, aligned_mask: torch.Tensor) -> torch.Tensor:
    """Batch layout ``[N, T]`` -> response-aligned ``[N, L]``."""
    return _scatter_rows(values[batch.response_mask].detach().float().cpu(), aligned_mask)


# ------------------------------------------------------------------------------------------------ state
class RLState:
    """What lives across steps and is checkpointed: KL controller, reward normaliser, running baseline, value
    function, the current rollout."""

    def __init__(self, config: TrainConfig, value: torch.nn.Module | None, reduce_sum: ReduceSum | None,
                 num_processes: int):
        rl = config.rl
        self.kl = AdaptiveKL(rl.kl_coef, rl.kl_target, rl.kl_horizon) if rl.kl_target else FixedKL(rl.kl_coef)
        self.normalizer = RewardNormalizer(rl.reward_clip, reduce_sum=reduce_sum) if rl.reward_norm else None
        # running reward statistics for estimators that read them (reinforce_baseline's baseline=running)
        self.baseline = RunningMoments(reduce_sum) if "running" in advantage_spec(config).runtime else None
        self.value = value
        self.rollout: RolloutData | None = None
        self.ptx_scale = 0.0
        self.num_processes = num_processes

    def state_dict(self) -> dict[str, Any]:
        return {"kl": self.kl.state_dict(), "rollout": self.rollout.state_dict() if self.rollout else None,
                "normalizer": self.normalizer.state_dict() if self.normalizer else None,
                "baseline": self.baseline.state_dict() if self.baseline else None,
                "value": self.value.state_dict() if self.value is not None else None,
                "num_processes": self.num_processes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl.load_state_dict(state["kl"])
        for part, key in ((self.normalizer, "normalizer"), (self.baseline, "baseline"), (self.value, "value")):
            if part is not None and (key != "baseline" or state.get(key) is not None):  # older: no batch baseline
                part.load_state_dict(state[key])
        # each process holds its own rollout; the checkpoint has the main process's, so only one process resumes it
        single = state.get("num_processes", 1) == 1 and self.num_processes == 1
        self.rollout = RolloutData.from_state(state["rollout"]) if state["rollout"] and single else None


# ------------------------------------------------------------------------------------------------ objective
class RLObjective:
    """The clipped policy-gradient loss of one micro-batch against the cached rollout (see the module docstring)."""

    def __init__(self, config: TrainConfig, state: RLState):
        self.config, self.rl, self.state = config, config.rl, state
        self.kl_in, self.estimator = kl_placement(config)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [] if self.state.value is None else list(self.state.value.parameters())

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state.load_state_dict(state)

    def forward(self, model: torch.nn.Module, batch: Batch, entropy: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(per-token log-probs, entropies, values) ``[N, T]`` of the batch's response tokens under ``model``."""
        head = self.state.value if isinstance(self.state.value, ValueHead) else None
        dist = response_distributions(model, batch, hidden_states=head is not None)
        ent = dist.scatter(token_entropy(dist.full)) if entropy else None
        values = None
        if head is not None:
            values = align_to_tokens(head(dist.hidden_states[-1]).float())
        elif isinstance(self.state.value, Critic):
            values = self.state.value(batch)
        return dist.logps.token_logps, ent, values

    def _masks(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        rollout = self.state.rollout
        rows = rollout.rows(batch)
        valid = torch.zeros_like(rows, dtype=torch.bool)
        valid[rows >= 0] = rollout.valid.to(rows.device)[rows[rows >= 0]]
        return rows, batch.response_mask & valid[:, None]

    def count(self, batch: Batch) -> int:
        _, mask = self._masks(batch)
        return int(mask.sum()) if self.rl.loss_aggregation == "token_mean" else int(mask.any(-1).sum())

    def _sum(self, per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum over the micro-batch of the step's aggregation (token sums, or per-sequence token means)."""
        if self.rl.loss_aggregation == "token_mean":
            return aggregate(per_token, mask, "token_mean", normalizer=1.0)
        return aggregate(per_token, mask, "sequence_mean") * per_token.shape[0]

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rl, rollout = self.rl, self.state.rollout
        rows, mask = self._masks(batch)
        logp, entropy, values = self.forward(model, batch)
        old, adv = rollout.gather("old_logps", batch, rows), rollout.gather("advantages", batch, rows)
        token_mean = rl.loss_aggregation == "token_mean"
        n = 1 if token_mean else logp.shape[0]  # token sums, or per-sequence means summed over the micro-batch
        out = ppo_policy_loss(logp, old, adv, mask, rl.clip_eps, rl.clip_eps_high, rl.ratio_level,
                              aggregation=rl.loss_aggregation, normalizer=1.0 if token_mean else None)
        total = out.loss * n
        count = max(1, self.count(batch))
        metrics = {f"rl/{k}": v.reshape(1) for k, v in out.metrics.items()}
        metrics["rl/policy_loss"] = total.detach().reshape(1) / count
        metrics["rl/entropy"] = aggregate(entropy.detach(), mask).reshape(1)
        if rl.entropy_coef:
            total = total - rl.entropy_coef * self._sum(entropy, mask)
        if values is not None:
            vl = clipped_value_loss(values, rollout.gather("values", batch, rows), rollout.gather("returns", batch, rows),
                                    mask, rl.value_clip, aggregation=rl.loss_aggregation,
                                    normalizer=1.0 if token_mean else None)
            total = total + rl.vf_coef * vl.loss * n
            metrics["rl/value_loss"] = (vl.loss * n).detach().reshape(1) / count
            metrics["rl/value_clip_fraction"] = vl.metrics["value_clip_fraction"].reshape(1)
        if self.kl_in == "loss" and self.state.kl.value:
            kl = token_kl(logp, rollout.gather("ref_logps", batch, rows), self.estimator)
            total = total + self.state.kl.value * self._sum(kl, mask)
            metrics["rl/kl_loss"] = aggregate(kl.detach(), mask).reshape(1)
        if not mask.any():  # only PPO-ptx rows (or unscored samples) here: the same keys, "not applicable"
            metrics = {k: torch.full_like(v, float("nan")) for k, v in metrics.items()}
        ptx = (rows < 0)[:, None] & batch.response_mask
        ptx[:, 0] = False
        if ptx.any():
            nll = -torch.where(ptx, logp, torch.zeros((), dtype=logp.dtype, device=logp.device)).sum()
            total = total + rl.ptx_coef * self.state.ptx_scale * nll
            metrics["rl/ptx_nll"] = (nll.detach() / ptx.sum()).reshape(1)
        return total, metrics


# ------------------------------------------------------------------------------------------------ rollout hook
class RLRollout:
    """The loop's rollout hook: a fresh rollout every ``U`` steps, then its mini-batches (see the module docstring)."""

    def __init__(self, config: TrainConfig, tokenizer: Any, reward: RLReward, reference: torch.nn.Module,
                 state: RLState, objective: RLObjective, prompts: Sequence[PromptRow], ptx: list[TokenizedRecord],
                 accelerator: Any, gold: Any = None):
        self.config, self.rl, self.tokenizer, self.reward = config, config.rl, tokenizer, reward
        self.reference, self.state, self.objective, self.prompts, self.ptx = reference, state, objective, prompts, ptx
        self.process_index, self.num_processes = accelerator.process_index, accelerator.num_processes
        self.reduce_sum: ReduceSum | None = None
        if accelerator.num_processes > 1:
            self.reduce_sum = lambda t: accelerator.reduce(t, reduction="sum")
        self.gold = gold
        self.k = num_samples(config)
        self.updates = self.rl.ppo_epochs * self.rl.num_minibatches
        self.per_step = config.batch_size * config.grad_accum * accelerator.num_processes
        self.unscored = 0

    def iteration_prompts(self, iteration: int) -> list[PromptRow]:
        """This process's prompts of rollout ``iteration``: the data order's mini-batches ``iteration * n ..``."""
        n = self.rl.num_minibatches
        out = []
        for j in range(n):
            indices = step_records(iteration * n + j, len(self.prompts), self.per_step, self.config.seed)
            out += [self.prompts[i] for i in indices[self.process_index:: self.num_processes]]
        return out

    def __call__(self, step: int, rows: Sequence[Any], model: torch.nn.Module
                 ) -> tuple[list[TokenizedRecord], dict[str, torch.Tensor]]:
        iteration, position = divmod(step, self.updates)
        epoch, minibatch = divmod(position, self.rl.num_minibatches)
        metrics: dict[str, torch.Tensor] = {}
        if self.state.rollout is None or self.state.rollout.iteration != iteration:
            if position:
                raise RuntimeError(
                    f"step {step + 1} is update {position + 1} of rollout {iteration}, whose samples are not in the "
                    "checkpoint (a run with several processes resumes only at rollout boundaries: make save_steps a "
                    f"multiple of rl.ppo_epochs x rl.num_minibatches = {self.updates})")
            metrics = self.make(iteration, model)
        rollout = self.state.rollout
        prompts = len(rollout.prompt_ids)
        order = torch.randperm(prompts, generator=torch.Generator().manual_seed(
            (self.config.seed * 1_000_003 + iteration) * 101 + epoch)).tolist()
        n = self.rl.num_minibatches
        chosen = order[minibatch * prompts // n:(minibatch + 1) * prompts // n]
        records = [rollout.record(p) for p in chosen]
        if self.ptx:
            records += self.ptx_records(step, chosen)
        return records, metrics

    def ptx_records(self, step: int, chosen: list[int]) -> list[TokenizedRecord]:
        """PPO-ptx: SFT records for this step (as many as its prompts); sets the scale that turns their summed NLL
        into ``ptx_coef`` x their per-token mean once the loop divides by the step's RL normaliser."""
        indices = step_records(step, len(self.ptx), len(chosen) * self.num_processes, self.config.seed + 1)
        records = [TokenizedRecord(-1 - i, self.ptx[i].record, self.ptx[i].prompt_ids, self.ptx[i].response_ids[:1])
                   for i in indices[self.process_index:: self.num_processes]]
        rollout = self.state.rollout
        rl_rows = [p * self.k + j for p in chosen for j in range(self.k)]
        valid = rollout.valid[rl_rows]
        lengths = torch.tensor([float(len(rollout.response_ids[r])) for r in rl_rows], dtype=torch.float64)
        rl_count = lengths[valid].sum() if self.rl.loss_aggregation == "token_mean" else valid.double().sum()
        counts = torch.stack([rl_count, torch.tensor(float(sum(len(r.response_ids[0]) for r in records)),
                                                     dtype=torch.float64)])
        if self.reduce_sum is not None:
            counts = self.reduce_sum(counts)
        self.state.ptx_scale = float(counts[0].clamp(min=1) / counts[1].clamp(min=1))
        return records

    # --- one rollout
    @torch.no_grad()
    def make(self, iteration: int, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        rl, k = self.rl, self.k
        rows = self.iteration_prompts(iteration)
        prompts = [r.prompt for r in rows]
        policy = language_model(model)
        online = self.config.online
        sampling = SamplingConfig(num_samples=k, max_new_tokens=online.max_new_tokens, temperature=online.temperature,
                                  top_p=online.top_p, top_k=online.top_k, batch_size=online.generation_batch_size,
                                  seed=((self.config.seed * 1_000_003 + iteration) * 101 + self.process_index) * 7)
        samples = generate(policy, self.tokenizer, prompts, sampling)
        policy.train()
        if any(not s.prompt_ids for s in samples):
            raise ValueError("recipe rl: a prompt rendered to no tokens")
        flat_prompts = [prompts[i // k] for i in range(len(samples))]
        metadata = [rows[i // k].metadata for i in range(len(samples))]
        scores, heads = self.reward.score(flat_prompts, samples, metadata, self.reduce_sum)
        rollout = RolloutData(iteration, [list(samples[p * k].prompt_ids) for p in range(len(prompts))],
                              [list(s.response_ids) for s in samples], {}, ~scores.isnan())
        mask = rollout.mask
        device = next(policy.parameters()).device
        tokens = {"ref_logps": [], "old_logps": [], "values": []}
        use_sampler = rl.old_logps == "sampler" or (
            rl.old_logps == "auto" and exact_sampler_logprobs(self.config) and not isinstance(self.state.value,
                                                                                                ValueHead))
        need_forward = not use_sampler or self.state.value is not None
        per_batch = self.config.batch_size
        for start in range(0, len(prompts), per_batch):
            records = [rollout.record(p) for p in range(start, min(len(prompts), start + per_batch))]
            batch = collate(records, self.tokenizer.pad_token_id).to(device)
            part = mask[start * k:(start + len(records)) * k]
            part = part[:, : int(part.sum(-1).max())]
            ref = response_logps(self.reference, batch, pack=self.config.pack).token_logps
            tokens["ref_logps"].append(_response_aligned(ref, batch, part))
            if need_forward:
                logp, _, values = self.objective.forward(model, batch, entropy=False)
                tokens["old_logps"].append(_response_aligned(logp, batch, part))
                if values is not None:
                    tokens["values"].append(_response_aligned(values, batch, part))
        width = mask.shape[1]
        pad = lambda parts: torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in parts])
        ref = pad(tokens["ref_logps"])
        if use_sampler:
            old = _scatter_rows(torch.tensor([x for s in samples for x in s.logprobs], dtype=torch.float32), mask)
        else:
            old = pad(tokens["old_logps"])
        values = pad(tokens["values"]) if tokens["values"] else None
        advantages, returns, stats = self.advantages(scores, old, ref, values, mask, rollout.valid)
        rollout.tokens = {"old_logps": old, "ref_logps": ref, "advantages": advantages, "returns": returns}
        if values is not None:
            rollout.tokens["values"] = values
        self.state.rollout = rollout
        return self.rollout_metrics(flat_prompts, samples, metadata, scores, heads, stats, rollout)

    def advantages(self, scores: torch.Tensor, old: torch.Tensor, ref: torch.Tensor, values: torch.Tensor | None,
                   mask: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Rewards -> (advantages, returns) ``[N, L]`` and rollout statistics; updates the KL controller."""
        rl = self.rl
        kl_in, estimator = self.objective.kl_in, self.objective.estimator
        scores = scores.float()
        fill = scores[valid].mean() if valid.any() else torch.zeros(())
        scores = torch.where(valid, scores, fill)  # unscored samples: out of the loss, neutral in group statistics
        if self.state.normalizer is not None:
            scores = self.state.normalizer(scores)
        coef = self.state.kl.value
        token_rewards = ppo_token_rewards(scores, old, ref, mask, coef if kl_in == "reward" else 0.0, estimator)
        spec = advantage_spec(self.config)
        result = spec(token_rewards.rewards, mask, advantage_params(self.config), values=values, group_size=self.k,
                      reduce_sum=self.reduce_sum, running=self.state.baseline)
        advantages = result.advantages
        whiten = rl.whiten_advantages if rl.whiten_advantages is not None else spec.whiten_by_default
        if whiten:
            advantages = masked_whiten(advantages, mask & valid[:, None], reduce_sum=self.reduce_sum)
        seq_kl = sequence_kl(old, ref, mask, "k1")
        stats = torch.stack([seq_kl[valid].sum().double(), valid.sum().double()])
        if self.reduce_sum is not None:
            stats = self.reduce_sum(stats)
        self.state.kl.update(float(stats[0] / stats[1].clamp(min=1)), int(stats[1]))
        out = {"kl": seq_kl, "kl_coef": coef}
        if values is not None:
            out["explained_variance"] = explained_variance(values, result.returns, mask & valid[:, None])
        return advantages, result.returns, out

    def rollout_metrics(self, prompts: list[Any], samples: list[Sample], metadata: list[dict], scores: torch.Tensor,
                        heads: dict[str, torch.Tensor], stats: dict[str, Any], rollout: RolloutData
                        ) -> dict[str, torch.Tensor]:
        """Per-sample values (averaged by the loop): proxy and gold reward, KL, length; rollout-level scalars."""
        out = {"rl/proxy": scores.float(), "rl/kl": stats["kl"].float(),
               "rl/length": torch.tensor([float(len(s.response_ids)) for s in samples]),
               "rl/finished": torch.tensor([float(s.finished) for s in samples]),
               "rl/kl_coef": torch.tensor([stats["kl_coef"]]),
               "rl/unscored": torch.tensor([float((~rollout.valid).sum())])}
        out.update({f"rl/reward/{name}": values.float() for name, values in heads.items()})
        if "explained_variance" in stats:
            out["rl/explained_variance"] = stats["explained_variance"].reshape(1).float()
        if self.gold is not None:
            responses = [s.as_response(p) for p, s in zip(prompts, samples)]
            out["rl/gold"] = torch.from_numpy(self.gold.rewards(prompts, responses, metadata).total).float()
        return out


# ------------------------------------------------------------------------------------------------ entry
def load_critic(path: str, tokenizer: object, dtype: str = "auto", trust_remote_code: bool = False,
                device: torch.device | str | None = None) -> Critic:
    """A :class:`Critic` from a reward-model directory saved by alignkit (or any sequence-classification model whose
    score head is a linear map called ``score``)."""
    model = load_reward_model(path, tokenizer, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"rl.critic_path: {path} has no linear 'score' head to start the critic from")
    critic = Critic(getattr(model, model.base_model_prefix), head)
    critic.train()
    return critic



def load_reference(config: TrainConfig, initial: torch.nn.Module, device: Any) -> torch.nn.Module:
    """The KL reference: SALSA's soup of two SFT models, ``reference.path``, or the initial policy itself."""
    rl, model = config.rl, config.model
    if rl.reference_soup:
        members = [load_causal_lm(p, model.dtype, model.trust_remote_code, device) for p in rl.reference_soup]
        return frozen_copy(weight_soup(members, [rl.soup_weight, 1.0 - rl.soup_weight]))
    if config.reference.path:
        return frozen_copy(load_causal_lm(config.reference.path, model.dtype, model.trust_remote_code, device))
    return initial


def load_ptx(config: TrainConfig, tokenizer: Any) -> list[TokenizedRecord]:
    """PPO-ptx data: the SFT view of ``rl.ptx_path`` (best / desirable / only responses), tokenized."""
    if not config.rl.ptx_path:
        return []
    records, report = load_records(config.rl.ptx_path, on_invalid=config.data.on_invalid)
    views = [v for v in map(sft_view, records) if v is not None]
    report.converted["ptx_without_response"] = len(records) - len(views)
    ptx_config = dataclasses.replace(config, data=dataclasses.replace(config.data, path=config.rl.ptx_path))
    return tokenize_dataset(ptx_config, tokenizer, views, report)


def train_rl(config: TrainConfig, on_step: Callable[[int, torch.nn.Module], None] | None = None,
             on_log: OnLog | None = None) -> TrainResult:
    """Run ``recipe: rl`` (see the module docstring)."""
    run = SamplingRun.load(config)
    accelerator, tokenizer, policy, initial = run.accelerator, run.tokenizer, run.policy, run.initial
    train_rows, eval_rows, resume, start = run.train_rows, run.eval_rows, run.resume, run.start
    device, model = accelerator.device, config.model
    reference = load_reference(config, initial, device)
    value: torch.nn.Module | None = None
    if advantage_spec(config).needs_values:
        value = (load_critic(config.rl.critic_path, tokenizer, model.dtype, model.trust_remote_code, device)
                 if config.rl.critic_path else ValueHead(policy.config.hidden_size).to(device))
    reduce_sum = (lambda t: accelerator.reduce(t, reduction="sum")) if accelerator.num_processes > 1 else None
    state = RLState(config, value, reduce_sum, accelerator.num_processes)
    objective = RLObjective(config, state)
    reward = RLReward(config, device)
    gold = get_reward_source(config.online.gold, device=device) if config.online.gold else None
    rollout = RLRollout(config, tokenizer, reward, reference, state, objective, train_rows,
                        load_ptx(config, tokenizer), accelerator, gold)
    _, total_steps = schedule_plan(config, len(train_rows), accelerator.num_processes)
    evaluator = Evaluator(config, tokenizer, eval_rows, reward, initial, Path(config.output_dir) / "online_eval.jsonl",
                          start, accelerator.is_main_process)
    after_step = evaluation_hook(evaluator, total_steps, start, policy, on_step)
    if accelerator.is_main_process:  # progress=false hides the bar, never the run's summary line
        print(f"[alignkit] rl {config.rl.advantage}: {len(train_rows)} prompts, {len(eval_rows)} held out; "
              f"{rollout.k} samples per prompt, {rollout.updates} updates per rollout; reward {config.online.reward}")
    where, estimator = kl_placement(config)
    result = train_loop(config, model=policy, processor=tokenizer, dataset=train_rows,
                        objective=TokenBatches(objective, tokenizer.pad_token_id, f"rl:{config.rl.advantage}"),
                        accelerator=accelerator, resume_from=resume, on_step=after_step, rollout=rollout,
                        on_log=on_log,
                        summary={"rl": {"advantage": config.rl.advantage, "num_samples": rollout.k,
                                        "updates_per_rollout": rollout.updates, "kl_in": where,
                                        "kl_estimator": estimator, "combine": config.rl.combine,
                                        "reference": "soup" if config.rl.reference_soup else "initial"}})
    run.add_evaluation_to_summary(config, evaluator)
    return result


def rl_model_paths(config: TrainConfig) -> list[tuple[str, str]]:
    """The local model directories recipe rl loads besides the policy and reference: (path, config key)."""
    paths = [(config.rl.critic_path, "rl.critic_path")] if config.rl.critic_path is not None else []
    return paths + [(path, f"rl.reference_soup[{i}]") for i, path in enumerate(config.rl.reference_soup or [])]


register_recipe(Recipe(
    "rl", "policy-gradient RLHF: PPO, RLOO, GRPO, REINFORCE (`rl.*`; sampling, reward and evaluation from "
          "`online.*`)",
    train_rl, check=check_rl_config,
    reads=("data.eval_path", "reference.path", "online.reward", "online.max_new_tokens", "online.temperature",
           "online.top_p", "online.top_k", "online.generation_batch_size", "online.missing_eos_penalty",
           "online.eval_every", "online.eval_prompts", "online.eval_samples", "online.gold", "rl.*", "pack"),
    distributed=("ddp",), model_paths=rl_model_paths, outputs=("online_eval.jsonl",)))
