"""Typed run configuration: YAML file + ``key=value`` command-line overrides, strictly validated.

Every option is a dataclass field with a help text; ``alignkit train --help`` prints them all. Unknown
keys are errors with a suggestion, values are converted to the field's type or rejected with the key named.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


def opt(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


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
    eval_path: str | None = opt(None, "optional held-out data in the same formats")
    split: str = opt("train", "split to use when the path is a DatasetDict")
    max_length: int = opt(512, "maximum prompt + response tokens")
    max_prompt_length: int = opt(256, "prompt tokens kept (from the right) when truncating")
    overlength: Literal["truncate", "drop", "error"] = opt("truncate", "what to do with over-length examples")
    drop_identical: bool = opt(True, "drop pairs whose chosen and rejected responses are identical (counted)")
    limit: int | None = opt(None, "use only the first N records (after validation)")


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
    r: int = opt(16, "adapter rank")
    alpha: float = opt(32.0, "adapter scaling numerator (lora_alpha)")
    dropout: float = opt(0.0, "dropout on the adapter input")
    target_modules: list[str] | None = opt(None, "module names to adapt; default: PEFT's choice for the architecture")
    merge: bool = opt(True, "save the final model with the adapter merged (the adapter is saved too)")


@dataclass
class RewardConfig:
    loss: Literal["bt", "pl", "regression"] = opt(
        "bt", "bt: Bradley-Terry on pairs (every implied pair of a ranking); pl: Plackett-Luce on rankings; "
              "regression: MSE on per-response scores (see alignkit.rewards.objectives)")
    margin: str | None = opt(None, "BT margin per pair: null (none), scores (score_key of chosen minus rejected), "
                                   "or a metadata key such as margin (TRL's column)")
    center_coef: float = opt(0.0, "reward centring: add coef * (r_c + r_r)^2 (Eisenstein et al. 2023 use 0.01)")
    score_key: str = opt("score", "which record score regression fits and margin: scores reads")
    ensemble: int = opt(1, "heads on one backbone (their mean is the reward, their std its uncertainty)")
    bootstrap: bool = opt(False, "weight each record per head by a seeded Poisson(1) draw (bootstrap ensemble)")
    group_by: str | None = opt(None, "annotator-aware model: one head set per group, from `annotator` or a "
                                     "metadata key (e.g. gold_group); null: one model for all")


@dataclass
class OnlineConfig:
    method: str = opt("online_dpo", "online method (see `alignkit methods --online`): online_dpo, online_ipo, "
                                    "iterative_dpo, apo, nash_md, ipo_md, xpo, selm, sppo, rso, raft, superhf")
    reward: str | dict[str, float] = opt(
        "", "reward source that labels samples: sandbox-gold, rm:PATH, llm:PATH, verify:..., pairwise:llm:PATH, or a "
            "weighted mapping {source: weight} (see alignkit.rewards.sources)")
    loss: str | None = opt(None, "preference loss of pairwise/ranked methods (null: the method's own, e.g. dpo for "
                                 "online_dpo, hinge for rso); its hyperparameters go in loss_params")
    num_samples: int | None = opt(None, "responses sampled per prompt (null: the method's default)")
    max_new_tokens: int = opt(64, "tokens sampled per response at most")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    top_k: int = opt(0, "top-k sampling (0: off)")
    generation_batch_size: int = opt(64, "sequences generated together")
    rounds: int = opt(1, "iterations: the steps split into this many rounds; iterative methods move the reference to "
                         "the policy at the start of each round")
    reference_update: bool | None = opt(None, "move the reference to the policy every round (null: the method's "
                                              "default)")
    mixture_coef: float = opt(0.5, "Nash-MD / IPO-MD: weight of the reference in the geometric mixture")
    kl_coef: float = opt(0.1, "Nash-MD: KL(pi || pi_ref) coefficient; SuperHF: KL(prior || pi) coefficient")
    preference_scale: float = opt(1.0, "win probabilities from pointwise rewards: sigmoid((r_i - r_j) / scale)")
    rso_beta: float = opt(0.5, "RSO: temperature of the target pi_sft * exp(r / beta)")
    rso_accept: int = opt(4, "RSO: samples accepted per prompt (paired consecutively)")
    keep: float | None = opt(None, "RAFT: keep the best response of every prompt (null) or the top share of the "
                                   "step's samples; SuperHF: responses kept per prompt (default 1)")
    extrapolation: float = opt(0.3, "APO: momentum alpha in theta <- theta_hat + alpha * (theta_hat - theta_hat_prev)")
    missing_eos_penalty: float | None = opt(None, "subtract this from the reward of responses that did not end with EOS")
    eval_every: int = opt(0, "every N steps (and at the end) sample held-out prompts at temperature 1 and record "
                             "proxy reward, gold reward and KL to the initial policy (0: only at the end)")
    eval_prompts: int = opt(64, "held-out prompts for those evaluations (from data.eval_path, else the last prompts "
                                "of data.path, which are then not trained on)")
    gold: str | None = opt(None, "an independent reward source for evaluation (e.g. sandbox-gold)")


@dataclass
class RLConfig:
    advantage: Literal["gae", "rloo", "grpo", "reinforce_baseline"] = opt(
        "gae", "advantage estimator: gae (PPO with a value head or critic), rloo, grpo, reinforce_baseline")
    num_samples: int | None = opt(None, "responses sampled per prompt (null: 1 for gae / reinforce_baseline, 4 for "
                                        "rloo / grpo)")
    ppo_epochs: int = opt(1, "passes over each rollout (each pass is num_minibatches optimizer steps)")
    num_minibatches: int = opt(1, "optimizer steps per pass over a rollout; a rollout holds num_minibatches x "
                                  "batch_size x grad_accum prompts per process")
    clip_eps: float = opt(0.2, "PPO ratio clip (lower side, and upper side unless clip_eps_high is set)")
    clip_eps_high: float | None = opt(None, "upper ratio clip (null: clip_eps)")
    ratio_level: Literal["token", "sequence"] = opt("token", "importance ratio per token, or per sequence "
                                                             "(exp of the mean token log-ratio, GSPO)")
    loss_aggregation: Literal["token_mean", "sequence_mean"] = opt(
        "token_mean", "loss over the optimizer step: mean over response tokens, or mean over responses of their "
                      "token mean (GRPO paper)")
    kl_coef: float = opt(0.05, "KL(pi || pi_ref) coefficient (initial value with kl_target)")
    kl_estimator: Literal["k1", "k2", "k3"] | None = opt(None, "per-token KL estimator (null: k1 in the reward, k3 "
                                                               "in the loss)")
    kl_in: Literal["reward", "loss"] | None = opt(
        None, "where the KL penalty goes: the per-token reward (PPO, RLOO) or the loss (GRPO); null: loss for grpo, "
              "reward otherwise")
    kl_target: float | None = opt(None, "adaptive KL controller (Ziegler et al. 2019): steer the sequence KL to this "
                                        "value (null: fixed kl_coef)")
    kl_horizon: float = opt(10000.0, "adaptive KL controller horizon (samples)")
    gamma: float = opt(1.0, "GAE discount")
    lam: float = opt(0.95, "GAE lambda")
    vf_coef: float = opt(0.1, "value-loss weight (gae)")
    value_clip: float | None = opt(0.2, "value-loss clip around the rollout values (null: plain squared error)")
    critic_path: str | None = opt(None, "gae: a separate critic initialised from this reward-model directory "
                                        "(null: a linear value head on the policy's last hidden state)")
    reward_norm: bool = opt(False, "PPO-max: normalise rewards with running mean/std, then clip to +-reward_clip")
    reward_clip: float = opt(10.0, "clip of normalised rewards")
    whiten_advantages: bool | None = opt(None, "whiten advantages over the rollout (null: on for gae, off otherwise)")
    grpo_scale: Literal["group", "batch", "none"] = opt("group", "grpo: divide by the group std, the batch std, or "
                                                                 "nothing (Dr. GRPO)")
    rloo_normalize: bool = opt(False, "rloo: normalise advantages over the batch (TRL's normalize_advantages)")
    baseline: Literal["batch", "running"] = opt("batch", "reinforce_baseline: batch mean or running mean of rewards")
    entropy_coef: float = opt(0.0, "entropy bonus weight")
    ptx_path: str | None = opt(None, "PPO-ptx: an SFT data file whose NLL is mixed into the loss")
    ptx_coef: float = opt(0.0, "PPO-ptx: weight of that per-token NLL")
    combine: Literal["none", "maxmin", "robust"] = opt(
        "none", "several reward heads: maxmin (MaxMin-RLHF, maximise the worst group), robust (reward-robust "
                "RLHF, lam * mean + (1 - lam) * min); none: the source's total")
    heads: list[str] | None = opt(None, "the reward components combined (e.g. [group:warm, group:terse] of an "
                                        "rm:PATH, or the members of a weighted source); null: every head:* component")
    maxmin_mode: Literal["batch", "sample"] = opt("batch", "maxmin: the group worst on the batch mean, or each "
                                                           "sample's minimum")
    robust_lam: float = opt(0.5, "reward-robust RLHF: weight of the nominal (mean) reward")
    reference_soup: list[str] | None = opt(None, "SALSA: the reference is the weight average of these SFT models")
    soup_weight: float = opt(0.5, "SALSA: weight of the first soup model")
    old_logps: Literal["auto", "sampler", "forward"] = opt(
        "auto", "rollout log-probs for the ratios: the sampler's (exact at temperature 1 without top-p/top-k; auto "
                "uses them then) or a no-grad forward pass")


@dataclass
class OptimConfig:
    lr: float = opt(5e-6, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    betas: list[float] = opt([0.9, 0.999], "AdamW betas")
    eps: float = opt(1e-8, "AdamW epsilon")
    schedule: Literal["linear", "cosine", "constant"] = opt("linear", "learning-rate schedule after warm-up")
    warmup_ratio: float = opt(0.1, "share of steps spent warming up linearly")
    max_grad_norm: float | None = opt(1.0, "clip the global gradient norm (null: no clipping)")


@dataclass
class TrainConfig:
    recipe: Literal["sft", "preference", "reward", "online", "rl"] = opt(
        "preference", "sft, preference (offline, with `loss`), reward (a reward model, see `reward.*`), online "
                      "(sample, label, update: see `online.*`), or rl (policy gradients: see `rl.*`)")
    loss: str = opt("dpo", "preference loss name (see `alignkit methods`)")
    loss_params: dict[str, Any] = opt({}, "loss hyperparameters, e.g. {beta: 0.1}; defaults from the paper")
    sft_weight: float = opt(0.0, "add sft_weight * NLL(chosen) to any preference loss (RPO)")
    model: ModelConfig = opt(None, "the policy to train", init=True)
    data: DataConfig = opt(None, "training data")
    reference: ReferenceConfig = opt(None, "the reference policy")
    optim: OptimConfig = opt(None, "optimizer and schedule")
    lora: LoraConfig = opt(None, "low-rank adapters")
    reward: RewardConfig = opt(None, "reward-model training (recipe: reward)")
    online: OnlineConfig = opt(None, "online alignment (recipe: online)")
    rl: RLConfig = opt(None, "policy-gradient RLHF (recipe: rl; sampling, reward and evaluation from `online.*`)")
    output_dir: str = opt("runs/alignkit", "where checkpoints, metrics and the final model go")
    batch_size: int = opt(8, "records per micro-batch per process (a pair counts once)")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    epochs: float = opt(1.0, "passes over the data (ignored when max_steps is set)")
    max_steps: int | None = opt(None, "optimizer steps to run")
    rows_per_forward: int | None = opt(None, "run each micro-batch's rows in length-sorted groups of this many rows "
                                             "(less padding computed; same result)")
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
    seed: int = opt(0, "seed for initialisation, data order and sampling")
    log_steps: int = opt(10, "log metrics every N steps")
    save_steps: int | None = opt(None, "checkpoint every N steps (the final step is always saved)")
    save_total_limit: int = opt(2, "checkpoints kept")
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
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
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
            return float(value)
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
    return ConfigError(f"unknown config key '{key}'{hint}; see `alignkit train --help`")


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
    """Command-line loss parameters arrive as strings: read them as YAML scalars (and 1e-4 as a number)."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return yaml.safe_load(value)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **values: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML file, keyword values and ``key=value`` overrides."""
    config = TrainConfig()
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        _apply(config, data)
    _apply(config, values)
    overrides_dict = parse_overrides(overrides or [])
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
    if not config.model.path:
        raise ConfigError("model.path is required")
    if not config.data.path:
        raise ConfigError("data.path is required")
    for key in ("batch_size", "grad_accum", "log_steps"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1")
    if config.data.max_prompt_length >= config.data.max_length:
        raise ConfigError("data.max_prompt_length must be smaller than data.max_length")
    if config.recipe == "online":
        from alignkit.train.online import check_online_config

        check_online_config(config)
    if config.recipe == "rl":
        from alignkit.train.rl import check_rl_config

        check_rl_config(config)
    if config.recipe == "preference":
        from alignkit.losses import get_loss

        try:
            spec = get_loss(config.loss)
        except KeyError as exc:
            raise ConfigError(f"loss: {exc.args[0]}") from None
        try:
            spec.params(config.loss_params)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None


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
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
            hint = hints[f.name]
            plain = isinstance(hint, type) and not typing.get_args(hint)
            kind = hint.__name__ if plain else str(hint).replace("typing.", "")
            lines.append(f"  {prefix}{f.name} = {default!r}  [{kind}]\n      {f.metadata.get('help', '')}")

    walk(TrainConfig, "")
    for name, cls in SECTIONS.items():
        walk(cls, name + ".")
    return "\n".join(lines)
