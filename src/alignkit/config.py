"""Typed run configuration: YAML file + ``key=value`` command-line overrides, strictly validated.

Every option is a dataclass field with a help text; ``alignkit train --help`` prints them all. Unknown
keys are errors with a suggestion, values are converted to the field's type or rejected with the key named.
Every number has a declared range (``opt(..., ge=0, lt=1)``, shown in its help text) and non-finite floats are
refused. The schema knows no recipe: which settings a recipe reads, and its own rules, are declared by the
recipe (:mod:`alignkit.recipes`), whose runner checks them after this schema's checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""




@dataclass(frozen=True)
class Range:
    """The allowed values of a number: ``gt`` / ``ge`` below, ``lt`` / ``le`` above (None: unbounded)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def contains(self, value: float) -> bool:
        return (math.isfinite(value)
                and (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))

    def describe(self) -> str:
        """``> 0``, ``>= 1``, ``<= 1`` or ``in [0, 1)``."""
        lower = (">", self.gt, "(") if self.gt is not None else (">=", self.ge, "[") if self.ge is not None else None
        upper = ("<", self.lt, ")") if self.lt is not None else ("<=", self.le, "]") if self.le is not None else None
        if lower and upper:
            return f"in {lower[2]}{_number(lower[1])}, {_number(upper[1])}{upper[2]}"
        operator, bound, _ = lower or upper or ("", "any number", "")
        return f"{operator} {_number(bound)}".strip()

    def check(self, value: Any, key: str) -> None:
        """Raise ConfigError naming ``key`` unless ``value`` (a number, or a list of numbers) lies in the range."""
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and not self.contains(item):
                where = key if index is None else f"{key}[{index}]"
                raise ConfigError(f"{where}: must be {self.describe()}, got {item!r}")


def checked_like(value: Any, default: Any, where: str, allowed: Range | None = None,
                 error: type[Exception] = ValueError) -> Any:
    """A registered method's parameter (``loss_params``, ``rl.advantage_params``): ``value`` must have the kind of
    its ``default`` (true/false, a finite number, an integer, a text; a null default takes a mapping or null) and
    lie in ``allowed``. Returns it (an integer given for a number becomes a float); else ``error`` naming ``where``."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise error(f"{where} expects true or false, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{where} expects a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise error(f"{where} expects a finite number, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{where} expects an integer, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise error(f"{where} expects a string, got {value!r}")
    elif default is None and value is not None and not isinstance(value, dict):
        raise error(f"{where} expects a mapping, got {value!r}")
    if allowed is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not allowed.contains(value):
        raise error(f"{where} expects a value {allowed.describe()}, got {value!r}")
    return value


def _number(value: Any) -> str:
    """1 rather than 1.0 in messages and help texts."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def opt(default: Any, help: str, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
        le: float | None = None, length: int | None = None, **kw: Any) -> Any:
    """A config field: its default and help text, the range of its numbers (``gt`` / ``ge`` / ``lt`` / ``le``,
    appended to the help text) and the exact length of a list."""
    bounds = Range(gt, ge, lt, le)
    metadata: dict[str, Any] = {"help": help + _constraint_text(bounds, length)}
    if bounds != Range():
        metadata["range"] = bounds
    if length is not None:
        metadata["length"] = length
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def _constraint_text(bounds: Range, length: int | None) -> str:
    if bounds == Range():
        return f"; {length} values" if length else ""
    return f"; {length} values, each {bounds.describe()}" if length else f"; must be {bounds.describe()}"


@dataclass
class ModelConfig:
    path: str = opt("", "model name or local directory (from_pretrained)")
    tokenizer: str | None = opt(None, "tokenizer name or directory; default: the model's")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = opt(
        "auto", "parameter dtype; auto = float32 on CPU, bfloat16 on GPUs that support it (float64: numerical checks)")
    trust_remote_code: bool = opt(False, "allow model code from the model directory (off: safe by default)")


@dataclass
class DataConfig:
    path: str = opt("", "training data: .jsonl, .json, .parquet or a saved datasets directory")
    eval_path: str | None = opt(None, "held-out data in the same formats: sft, preference and reward evaluate the "
                                      "loss and its metrics on it every eval_steps and at the end (eval/* in "
                                      "metrics.jsonl); online and rl sample its prompts")
    split: str = opt("train", "split to use when the path is a DatasetDict")
    max_length: int = opt(512, "maximum prompt + response tokens", ge=2)
    max_prompt_length: int = opt(256, "prompt tokens kept (from the right) when truncating; below max_length", ge=1)
    overlength: Literal["truncate", "drop", "error"] = opt("truncate", "what to do with over-length examples")
    drop_identical: bool = opt(True, "drop pairs whose chosen and rejected responses are identical (counted)")
    limit: int | None = opt(None, "use only the first N records (after validation); null: all", ge=1)
    on_invalid: Literal["error", "skip"] = opt("error", "an invalid row: error (stop, naming file:line) or skip "
                                                        "(leave it out, counted by reason with its first lines)")


@dataclass
class ReferenceConfig:
    mode: Literal["copy", "precompute", "none"] = opt(
        "precompute", "copy: frozen copy in memory; precompute: reference log-probs computed once before training")
    path: str | None = opt(None, "reference model directory; default: the initial policy")
    cache: bool = opt(True, "precompute: keep the log-probs on disk, keyed by reference weights, tokenized data "
                            "and reduction, and reuse them when all three match")
    cache_dir: str | None = opt(None, "where cached reference log-probs go (default: <output_dir>/reference_logps; "
                                      "point several runs at one directory to share them)")


@dataclass
class LoraConfig:
    enabled: bool = opt(False, "train LoRA adapters (PEFT) instead of all weights; the reference is the model "
                               "with its adapter disabled (no second copy)")
    r: int = opt(16, "adapter rank", ge=1)
    alpha: float = opt(32.0, "adapter scaling numerator (lora_alpha)", gt=0)
    dropout: float = opt(0.0, "dropout on the adapter input", ge=0, lt=1)
    target_modules: list[str] | None = opt(None, "module names to adapt; default: PEFT's choice for the architecture")
    merge: bool = opt(True, "save the final model with the adapter merged (the adapter is saved too)")


@dataclass
class RewardConfig:
    loss: Literal["bt", "pl", "regression"] = opt(
        "bt", "bt: Bradley-Terry on pairs (every implied pair of a ranking); pl: Plackett-Luce on rankings; "
              "regression: MSE on per-response scores (see alignkit.rewards.objectives)")
    margin: str | None = opt(None, "BT margin per pair: null (none), scores (score_key of chosen minus rejected), "
                                   "or a metadata key such as margin (TRL's column)")
    center_coef: float = opt(0.0, "reward centring: add coef * (r_c + r_r)^2 (Eisenstein et al. 2023 use 0.01)",
                             ge=0)
    score_key: str = opt("score", "which record score regression fits and margin: scores reads")
    ensemble: int = opt(1, "heads on one backbone (their mean is the reward, their std its uncertainty)", ge=1)
    bootstrap: bool = opt(False, "weight each record per head by a seeded Poisson(1) draw (bootstrap ensemble)")
    group_by: str | None = opt(None, "annotator-aware model: one head set per group, from `annotator` or a "
                                     "metadata key (e.g. gold_group); null: one model for all")


@dataclass
class OnlineConfig:
    method: str = opt("online_dpo", "online method (see `alignkit methods --family online`): online_dpo, "
                                    "online_ipo, "
                                    "iterative_dpo, apo, nash_md, ipo_md, xpo, selm, sppo, rso, raft, superhf")
    reward: str | dict[str, float] = opt(
        "", "reward source that labels samples: sandbox-gold, rm:PATH, llm:PATH, verify:..., pairwise:llm:PATH, or a "
            "weighted mapping {source: weight} (see alignkit.rewards.sources)")
    loss: str | None = opt(None, "preference loss of pairwise/ranked methods (null: the method's own, e.g. dpo for "
                                 "online_dpo, hinge for rso); its hyperparameters go in loss_params")
    num_samples: int | None = opt(None, "responses sampled per prompt (null: the method's default)", ge=1)
    max_new_tokens: int = opt(64, "tokens sampled per response at most", ge=1)
    temperature: float = opt(1.0, "sampling temperature (0: greedy)", ge=0)
    top_p: float = opt(1.0, "nucleus sampling threshold (1: off)", gt=0, le=1)
    top_k: int = opt(0, "top-k sampling (0: off)", ge=0)
    generation_batch_size: int = opt(64, "sequences generated together", ge=1)
    rounds: int = opt(1, "iterations: the steps split into this many rounds; iterative methods move the reference to "
                         "the policy at the start of each round", ge=1)
    reference_update: bool | None = opt(None, "move the reference to the policy every round (null: the method's "
                                              "default)")
    mixture_coef: float = opt(0.5, "Nash-MD / IPO-MD: weight of the reference in the geometric mixture", ge=0, le=1)
    kl_coef: float = opt(0.1, "Nash-MD: KL(pi || pi_ref) coefficient; SuperHF: KL(prior || pi) coefficient", ge=0)
    preference_scale: float = opt(1.0, "win probabilities from pointwise rewards: sigmoid((r_i - r_j) / scale)", gt=0)
    rso_beta: float = opt(0.5, "RSO: temperature of the target pi_sft * exp(r / beta)", gt=0)
    rso_accept: int = opt(4, "RSO: samples accepted per prompt (paired consecutively)", ge=2)
    keep: float | None = opt(None, "RAFT: keep the best response of every prompt (null) or the top share of the "
                                   "step's samples (at most 1); SuperHF: responses kept per prompt (a whole number, "
                                   "default 1)", gt=0)
    extrapolation: float = opt(0.3, "APO: momentum alpha in theta <- theta_hat + alpha * (theta_hat - theta_hat_prev)",
                               ge=0)
    missing_eos_penalty: float | None = opt(None, "subtract this from the reward of responses that did not end with "
                                                  "EOS", ge=0)
    eval_every: int = opt(0, "every N steps (and at the end) sample held-out prompts at temperature 1 and record "
                             "proxy reward, gold reward and KL to the initial policy (0: only at the end)", ge=0)
    eval_prompts: int = opt(64, "held-out prompts for those evaluations (from data.eval_path, else the last prompts "
                                "of data.path, which are then not trained on; 0: no evaluation)", ge=0)
    eval_samples: int = opt(1, "responses sampled per held-out prompt in those evaluations (a prompt's reward is "
                               "their mean: more samples, a tighter gain estimate)", ge=1)
    gold: str | None = opt(None, "an independent reward source for evaluation (e.g. sandbox-gold)")


@dataclass
class RLConfig:
    advantage: str = opt(
        "gae", "advantage estimator (see `alignkit methods`): gae (PPO with a value head or critic), rloo, grpo, "
               "reinforce_baseline, or any registered with alignkit.rl.register_advantage")
    advantage_params: dict[str, Any] = opt({}, "the estimator's own settings, e.g. {gamma: 0.99, lam: 0.95}; defaults "
                                               "from the paper, each within its declared range")
    num_samples: int | None = opt(None, "responses sampled per prompt (null: the estimator's default, 1 for gae / "
                                        "reinforce_baseline, 4 for rloo / grpo)", ge=1)
    ppo_epochs: int = opt(1, "passes over each rollout (each pass is num_minibatches optimizer steps)", ge=1)
    num_minibatches: int = opt(1, "optimizer steps per pass over a rollout; a rollout holds num_minibatches x "
                                  "batch_size x grad_accum prompts per process", ge=1)
    clip_eps: float = opt(0.2, "PPO ratio clip (lower side, and upper side unless clip_eps_high is set)", gt=0)
    clip_eps_high: float | None = opt(None, "upper ratio clip (null: clip_eps)", gt=0)
    ratio_level: Literal["token", "sequence"] = opt("token", "importance ratio per token, or per sequence "
                                                             "(exp of the mean token log-ratio, GSPO)")
    loss_aggregation: Literal["token_mean", "sequence_mean"] = opt(
        "token_mean", "loss over the optimizer step: mean over response tokens, or mean over responses of their "
                      "token mean (GRPO paper)")
    kl_coef: float = opt(0.05, "KL(pi || pi_ref) coefficient (initial value with kl_target)", ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] | None = opt(None, "per-token KL estimator (null: k1 in the reward, k3 "
                                                               "in the loss)")
    kl_in: Literal["reward", "loss"] | None = opt(
        None, "where the KL penalty goes: the per-token reward (PPO, RLOO) or the loss (GRPO); null: loss for grpo, "
              "reward otherwise")
    kl_target: float | None = opt(None, "adaptive KL controller (Ziegler et al. 2019): steer the sequence KL to this "
                                        "value (null: fixed kl_coef)", gt=0)
    kl_horizon: float = opt(10000.0, "adaptive KL controller horizon (samples)", gt=0)
    gamma: float | None = opt(None, "GAE discount (= rl.advantage_params.gamma; null: 1)", ge=0, le=1)
    lam: float | None = opt(None, "GAE lambda (= rl.advantage_params.lam; null: 0.95)", ge=0, le=1)
    vf_coef: float = opt(0.1, "value-loss weight (gae)", ge=0)
    value_clip: float | None = opt(0.2, "value-loss clip around the rollout values (null: plain squared error)", gt=0)
    critic_path: str | None = opt(None, "gae: a separate critic initialised from this reward-model directory "
                                        "(null: a linear value head on the policy's last hidden state)")
    reward_norm: bool = opt(False, "PPO-max: normalise rewards with running mean/std, then clip to +-reward_clip")
    reward_clip: float = opt(10.0, "clip of normalised rewards", gt=0)
    whiten_advantages: bool | None = opt(None, "whiten advantages over the rollout (null: on for gae, off otherwise)")
    grpo_scale: Literal["group", "batch", "none"] = opt(
        "group", "grpo: divide by the group std, the batch std, or nothing (Dr. GRPO) (= rl.advantage_params."
                 "scale_rewards)")
    rloo_normalize: bool | None = opt(None, "rloo: normalise advantages over the batch (TRL's normalize_advantages) "
                                            "(= rl.advantage_params.normalize; null: false)")
    baseline: Literal["batch", "running"] | None = opt(
        None, "reinforce_baseline: batch mean or running mean of rewards (= rl.advantage_params.baseline; null: "
              "batch)")
    entropy_coef: float = opt(0.0, "entropy bonus weight", ge=0)
    ptx_path: str | None = opt(None, "PPO-ptx: an SFT data file whose NLL is mixed into the loss")
    ptx_coef: float = opt(0.0, "PPO-ptx: weight of that per-token NLL", ge=0)
    combine: Literal["none", "maxmin", "robust"] = opt(
        "none", "several reward heads: maxmin (MaxMin-RLHF, maximise the worst group), robust (reward-robust "
                "RLHF, lam * mean + (1 - lam) * min); none: the source's total")
    heads: list[str] | None = opt(None, "the reward components combined (e.g. [group:warm, group:terse] of an "
                                        "rm:PATH, or the members of a weighted source); null: every head:* component")
    maxmin_mode: Literal["batch", "sample"] = opt("batch", "maxmin: the group worst on the batch mean, or each "
                                                           "sample's minimum")
    robust_lam: float = opt(0.5, "reward-robust RLHF: weight of the nominal (mean) reward", ge=0, le=1)
    reference_soup: list[str] | None = opt(None, "SALSA: the reference is the weight average of these SFT models")
    soup_weight: float = opt(0.5, "SALSA: weight of the first soup model", ge=0, le=1)
    old_logps: Literal["auto", "sampler", "forward"] = opt(
        "auto", "rollout log-probs for the ratios: the sampler's (exact at temperature 1 without top-p/top-k; auto "
                "uses them then) or a no-grad forward pass")


@dataclass
class OptimConfig:
    lr: float = opt(5e-6, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0)
    betas: list[float] = opt([0.9, 0.999], "AdamW betas", ge=0, lt=1, length=2)
    eps: float = opt(1e-8, "AdamW epsilon", gt=0)
    schedule: Literal["linear", "cosine", "constant"] = opt("linear", "learning-rate schedule after warm-up")
    warmup_ratio: float = opt(0.1, "share of steps spent warming up linearly", ge=0, le=1)
    max_grad_norm: float | None = opt(1.0, "clip the global gradient norm (null: no clipping)", gt=0)


@dataclass
class TrainConfig:
    recipe: str = opt(
        "preference", "what to train, e.g. sft, preference (offline, with `loss`), reward (a reward model, see "
                      "`reward.*`), online (sample, label, update: see `online.*`), rl (policy gradients: see "
                      "`rl.*`); `alignkit methods` lists them all")
    loss: str = opt("dpo", "preference loss name (see `alignkit methods`); recipe preference (online: online.loss)")
    loss_params: dict[str, Any] = opt({}, "loss hyperparameters, e.g. {beta: 0.1}; defaults from the paper, each "
                                          "within its declared range (beta > 0)")
    sft_weight: float = opt(0.0, "add sft_weight * NLL(chosen) to any preference loss (RPO)", ge=0)
    model: ModelConfig = opt(None, "the policy to train", init=True)
    data: DataConfig = opt(None, "training data")
    reference: ReferenceConfig = opt(None, "the reference policy")
    optim: OptimConfig = opt(None, "optimizer and schedule")
    lora: LoraConfig = opt(None, "low-rank adapters")
    reward: RewardConfig = opt(None, "reward-model training (recipe: reward)")
    online: OnlineConfig = opt(None, "online alignment (recipe: online)")
    rl: RLConfig = opt(None, "policy-gradient RLHF (recipe: rl; sampling, reward and evaluation from `online.*`)")
    output_dir: str = opt("runs/alignkit", "where checkpoints, metrics and the final model go (a directory)")
    batch_size: int = opt(8, "records per micro-batch per process (a pair counts once)", ge=1)
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step", ge=1)
    epochs: float = opt(1.0, "passes over the data (ignored when max_steps is set)", gt=0)
    max_steps: int | None = opt(None, "optimizer steps to run (null: from epochs)", ge=1)
    rows_per_forward: int | None = opt(None, "run each micro-batch's rows in length-sorted groups of this many rows "
                                             "(less padding computed; same result)", ge=1)
    distributed: Literal["ddp", "fsdp", "deepspeed"] = opt(
        "ddp", "with several processes: ddp (replicated weights, gradients all-reduced), fsdp (weights, gradients "
               "and optimizer state sharded with fully_shard; checkpoints saved whole) or deepspeed (ZeRO, see "
               "zero_stage; needs alignkit[deepspeed])")
    zero_stage: int = opt(2, "distributed=deepspeed: ZeRO stage 1 (optimizer state partitioned), 2 (+ gradients) or 3 "
                             "(+ parameters); an Accelerate config's deepspeed_config.zero_stage takes precedence")
    pack: bool = opt(True, "pack micro-batches: each record's prompt computed once for all its responses, short "
                           "records sharing a row (block attention mask; sdpa/eager attention; same result, "
                           "checked on the first batch)")
    compile: bool = opt(False, "sft and preference recipes, ddp: torch.compile the policy's decoder layers (dynamic "
                               "shapes): fewer, fused kernels per step once compiled; the first steps pay the "
                               "compilation")
    gradient_checkpointing: bool = opt(
        False, "sft, preference and reward recipes: recompute each decoder layer's activations in the backward "
               "pass instead of keeping them (transformers' non-reentrant checkpointing; TRL's name): less memory, "
               "about one more forward per step, same gradients")
    seed: int = opt(0, "seed for initialisation, data order and sampling", ge=0, le=2**32 - 1)
    log_steps: int = opt(10, "log metrics every N steps", ge=1)
    report_to: list[str] = opt([], "where logged metrics go besides metrics.jsonl: any of tensorboard, wandb, mlflow "
                                   "(Accelerate's trackers; each needs its package, e.g. alignkit[tensorboard]); "
                                   "[] or [none]: nowhere else")
    eval_steps: int | None = opt(None, "held-out evaluation every N optimizer steps and at the end, when the recipe "
                                       "has held-out data (data.eval_path); null: only at the end", ge=1)
    save_steps: int | None = opt(None, "checkpoint every N steps (the final step is always saved; 0 or null: only "
                                       "the final step)", ge=0)
    save_total_limit: int = opt(2, "checkpoints kept (the newest ones)", ge=1)
    resume: str = opt("auto", "auto (latest checkpoint in output_dir), never, or a checkpoint directory")
    progress: bool = opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("reference", ReferenceConfig),
                          ("optim", OptimConfig), ("lora", LoraConfig),
                          ("reward", RewardConfig), ("online", OnlineConfig), ("rl", RLConfig)):
            if getattr(self, name) is None:
                setattr(self, name, cls())


SECTIONS = {"model": ModelConfig, "data": DataConfig, "reference": ReferenceConfig, "optim": OptimConfig,
            "lora": LoraConfig, "reward": RewardConfig, "online": OnlineConfig,
            "rl": RLConfig}


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _finite(value: float, key: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    return value


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to ``annotation`` or raise ConfigError."""
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("null", "none"))):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if isinstance(value, str) and hint is float:
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        return _finite(number, key)
    if isinstance(value, str) and hint is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse {value!r}: {exc}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(float(value), key)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    else:
        return value
    raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _unknown(key: str, options: Any) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], list(options), n=1)
    hint = f" (did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?)" if close else ""
    alias = trl_aliases().get(key.split(".")[-1])
    if alias is not None:  # a TRL name in a section (optim.learning_rate): say where it goes
        hint = f" (TRL's {key.split('.')[-1]} is '{alias.key}' here; the TRL name works at the top level)"
    return ConfigError(f"unknown config key '{key}'{hint}; see `alignkit train --help`")


@dataclass(frozen=True)
class Alias:
    """A TRL option name (TrainingArguments, DPOConfig, ...) for one of our settings, so that a TRL user's config
    works as written. ``key``: our dotted key. ``values``: TRL value -> ours where they differ (``closed``: a value
    not listed is refused, naming those that are; open: unlisted values pass unchanged). ``switch``: a TRL flag
    (bf16) that sets ``key`` to ``values[True]`` when true and leaves it alone when false."""

    key: str
    values: dict[Any, Any] | None = None
    closed: bool = True
    switch: bool = False

    def translate(self, name: str, value: Any) -> Any:
        """Our value for TRL's ``value`` (``_KEEP``: a false switch, nothing to set), or ConfigError naming ``name``."""
        if self.values is None:
            return value
        given = _scalar(value)
        if self.switch:
            if not isinstance(given, bool):
                raise ConfigError(f"{name}: expected true or false, got {value!r}")
            return self.values[True] if given else _KEEP
        if given in self.values:
            return self.values[given]
        if self.closed:
            raise ConfigError(f"{name}: {value!r} has no equivalent here (TRL's {name} maps to {self.key}); use "
                              f"one of {', '.join(map(str, self.values))}")
        return value


_KEEP = object()
_TRL_NAMES = {
    "learning_rate": Alias("optim.lr"),
    "per_device_train_batch_size": Alias("batch_size"),
    "gradient_accumulation_steps": Alias("grad_accum"),
    "num_train_epochs": Alias("epochs"),
    "beta": Alias("loss_params.beta"),
    "max_length": Alias("data.max_length"),
    "max_prompt_length": Alias("data.max_prompt_length"),
    "warmup_ratio": Alias("optim.warmup_ratio"),
    "lr_scheduler_type": Alias("optim.schedule", {"linear": "linear", "cosine": "cosine", "constant": "constant",
                                                  "constant_with_warmup": "constant"}),
    "weight_decay": Alias("optim.weight_decay"),
    "max_grad_norm": Alias("optim.max_grad_norm"),
    "adam_epsilon": Alias("optim.eps"),
    "logging_steps": Alias("log_steps"),
    "disable_tqdm": Alias("progress", {True: False, False: True}),
    "bf16": Alias("model.dtype", {True: "bfloat16"}, switch=True),
    "fp16": Alias("model.dtype", {True: "float16"}, switch=True),
    "model_name_or_path": Alias("model.path"),
    "trust_remote_code": Alias("model.trust_remote_code"),
    "dataset_name": Alias("data.path"),
    "loss_type": Alias("loss", {"sigmoid": "dpo"}, closed=False),
    "rpo_alpha": Alias("sft_weight"),
    "use_peft": Alias("lora.enabled"),
    "lora_r": Alias("lora.r"),
    "lora_alpha": Alias("lora.alpha"),
    "lora_dropout": Alias("lora.dropout"),
    "lora_target_modules": Alias("lora.target_modules"),
}


def _exists(key: str) -> bool:
    """Whether ``key`` (dotted) is a setting of :class:`TrainConfig` (``loss_params.*`` are the loss's own)."""
    head, _, leaf = key.partition(".")
    if head == "loss_params":
        return True
    if not leaf:
        return head in _fields(TrainConfig) and head not in SECTIONS
    return head in SECTIONS and leaf in _fields(SECTIONS[head])


def trl_aliases() -> dict[str, Alias]:
    """TRL's names whose target exists here and is not itself spelled like TRL (then no alias is needed)."""
    return {name: alias for name, alias in _TRL_NAMES.items() if _exists(alias.key) and not _exists(name)}


_NOTED: set[str] = set()


def resolve_aliases(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (one YAML file's top level, or one set of overrides) with TRL's names rewritten to ours
    (``learning_rate: 1e-5`` -> ``optim: {lr: 1e-5}``), noting each name on stderr the first time it is used. A TRL
    name and our key (or two TRL names) setting one value differently is an error: which one should win is unclear."""
    import os
    import sys

    aliases = trl_aliases()
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items() if k not in aliases}
    set_by: dict[str, str] = {}
    for name, value in values.items():
        if name not in aliases:
            continue
        alias = aliases[name]
        ours = alias.translate(name, value)
        shown = alias.key if ours is _KEEP or alias.values is None else f"{alias.key}={ours}"
        if name not in _NOTED and os.environ.get("RANK", "0") == "0":
            _NOTED.add(name)
            print(f"[alignkit] {name} is TRL's name for {shown}" + (" (false: left as set)" if ours is _KEEP else ""),
                  file=sys.stderr)
        if ours is _KEEP:
            continue
        *sections, leaf = alias.key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{section}: expected a mapping (TRL's {name} sets {alias.key})")
        if leaf in node and _scalar(node[leaf]) != _scalar(ours):
            other = set_by.get(alias.key, f"{alias.key}={node[leaf]}")
            raise ConfigError(f"{name}={value} (TRL's name for {alias.key}) and {other} disagree; set only one of "
                              f"them")
        node[leaf] = ours
        set_by[alias.key] = f"{name}={value}"
    return out


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    fields = _fields(type(obj))
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        full = prefix + key
        if key not in fields:
            raise _unknown(full, fields)
        if key in SECTIONS and type(obj) is TrainConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {', '.join(_fields(SECTIONS[key]))}")
            _apply(getattr(obj, key), value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", "loss_params.beta=0.2"]`` -> nested dict (values stay strings until coerced)."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=1e-5)")
        key, value = item.split("=", 1)
        parts = key.lstrip("-").split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"override '{item}' conflicts with earlier overrides inside '{parts[-1]}'")
        node[parts[-1]] = value
    return nested


def _scalar(value: Any) -> Any:
    """Command-line loss parameters arrive as strings: read them as YAML scalars (11 as an integer, 1e-4 as a
    number)."""
    if not isinstance(value, str):
        return value
    for number in (int, float):
        try:
            return number(value)
        except ValueError:
            pass
    return yaml.safe_load(value)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping, TRL names rewritten to ours."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return resolve_aliases(data)


def given_settings(path: str | Path | None, overrides: list[str]) -> dict[str, Any]:
    """The settings a config file and overrides set explicitly, as dotted key -> value (TRL names resolved; the
    overrides win): what a shortcut such as ``alignkit dpo`` checks its own settings against."""
    flat: dict[str, Any] = {}

    def walk(values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and key in SECTIONS and not prefix:
                walk(value, key + ".")
            else:
                flat[prefix + key] = value

    walk(_read_yaml(path) if path is not None else {}, "")
    walk(resolve_aliases(parse_overrides(overrides)), "")
    return flat


def read_config(path: str | Path | None = None, overrides: list[str] | None = None, **values: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML file, keyword values and ``key=value`` overrides."""
    config = TrainConfig()
    if path is not None:
        _apply(config, _read_yaml(path))
    _apply(config, resolve_aliases(values))
    overrides_dict = resolve_aliases(parse_overrides(overrides or []))
    if "loss_params" in overrides_dict:  # loss_params.beta=0.2 merges into the file's loss_params
        given = overrides_dict.pop("loss_params")
        if isinstance(given, str):
            try:
                given = yaml.safe_load(given)
            except yaml.YAMLError as exc:
                raise ConfigError(f"loss_params: cannot parse {given!r}: {exc}") from None
        if not isinstance(given, dict):
            raise ConfigError(f"loss_params: expected a mapping such as {{beta: 0.1}}, got {given!r}")
        overrides_dict["loss_params"] = {**config.loss_params, **given}
    _apply(config, overrides_dict)
    config.loss_params = {k: _scalar(v) for k, v in config.loss_params.items()}
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Everything the schema can check without loading a model or the data: required keys, every declared range
    and list length, and output_dir. (The recipe's own rules are checked by :mod:`alignkit.recipes.runner`.)"""
    if not config.model.path:
        raise ConfigError("model.path is required")
    if not config.data.path:
        raise ConfigError("data.path is required")
    check_declared(config)
    if config.data.max_prompt_length >= config.data.max_length:
        raise ConfigError("data.max_prompt_length must be smaller than data.max_length")
    check_output_dir(config.output_dir)


def settings(config: TrainConfig) -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """Every leaf setting as (dotted key, field, value)."""
    for outer in dataclasses.fields(TrainConfig):
        value = getattr(config, outer.name)
        if outer.name not in SECTIONS:
            yield outer.name, outer, value
            continue
        for inner in dataclasses.fields(SECTIONS[outer.name]):
            yield f"{outer.name}.{inner.name}", inner, getattr(value, inner.name)


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def changed_settings(config: TrainConfig) -> typing.Iterator[str]:
    """The dotted keys of every setting not at its default."""
    for key, f, value in settings(config):
        if value != default_of(f):
            yield key


def check_declared(config: TrainConfig) -> None:
    """The declared ranges (``opt(..., gt=, ge=, lt=, le=)``) and list lengths (``length=``) of every setting;
    also refuses NaN and infinities set after loading."""
    for key, f, value in settings(config):
        if value is None:
            continue
        length = f.metadata.get("length")
        if length is not None and len(value) != length:
            raise ConfigError(f"{key}: expected {length} values, got {value!r}")
        if "range" in f.metadata:
            f.metadata["range"].check(value, key)


def check_output_dir(output_dir: str) -> None:
    """``output_dir`` (or a folder above it) must not be a file."""
    path = Path(output_dir).expanduser()
    for where in (path, *path.parents):
        if where.exists() and not where.is_dir():
            detail = "" if where == path else f" ({where} is a file)"
            raise ConfigError(f"output_dir: {output_dir} is not a directory{detail}")
        if where.exists():
            return


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def options_help() -> str:
    """Every option with its type, default and help text (for ``--help``)."""
    lines = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS and cls is TrainConfig:
                continue
            default = default_of(f)
            hint = hints[f.name]
            plain = isinstance(hint, type) and not typing.get_args(hint)
            kind = hint.__name__ if plain else str(hint).replace("typing.", "")
            lines.append(f"  {prefix}{f.name} = {default!r}  [{kind}]\n      {f.metadata.get('help', '')}")

    walk(TrainConfig, "")
    for name, cls in SECTIONS.items():
        walk(cls, name + ".")
    return "\n".join(lines)
