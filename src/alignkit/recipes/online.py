"""``recipe: online``: sample, label, update — one recipe for every online method.

Each optimizer step takes the step's prompts and

1. samples responses (the method's sampler: policy, reference, or the geometric mixture of the two),
2. labels them with the reward source (``online.reward``: sandbox gold, a reward model, verifiers, a weighted
   mix, or a pairwise judge), subtracting ``missing_eos_penalty`` from responses cut off before EOS,
3. turns them into records (pairs, rankings, kept responses, win probabilities; see
   :mod:`alignkit.recipes.common.online_methods`) tokenized from the sampled ids themselves (no re-tokenization),
4. hands them to the same loop, objectives and losses as offline training.

Rounds (``online.rounds``) split the steps; methods that iterate move the reference to the policy at the start
of every round (APO first extrapolates the weights). The reference of each round is saved under
``<output_dir>/rounds`` so an interrupted run resumes with it; sampling is seeded by the run seed, the step and
the process, so a resumed run samples what the uninterrupted run did.

Evaluation (held-out proxy, gold and KL with paired gains over step 0): see
:mod:`alignkit.recipes.common.sampling_run`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from alignkit.config import ConfigError, OnlineConfig, TrainConfig, default_of
from alignkit.data.collate import Batch
from alignkit.data.prompts import PromptRow
from alignkit.data.records import PreferenceRecord, Text
from alignkit.data.tokenize import TokenizedRecord
from alignkit.engine.loop import OnLog, TrainResult, make_reducer, schedule_plan, train_loop
from alignkit.losses import get_loss
from alignkit.models.loading import frozen_copy
from alignkit.models.logps import response_distributions, response_logps
from alignkit.models.scoring import language_model
from alignkit.recipes.base import Recipe, register_recipe
from alignkit.recipes.common.online_methods import OnlineMethod, get_online_method
from alignkit.recipes.common.preference_objective import PreferenceObjective
from alignkit.recipes.common.sampling_run import Evaluator, SamplingRun, evaluation_hook
from alignkit.recipes.common.sft import SFTObjective
from alignkit.recipes.common.token_batches import TokenBatches
from alignkit.rewards.sources import get_preference_source, get_reward_source
from alignkit.sampling.generate import Sample, SamplingConfig, generate
from alignkit.utils.io import atomic_dir

POINTWISE_ONLY = ("ranked", "rso_pairs", "best", "top_k")


# ------------------------------------------------------------------------------------------- labelling
class Labeller:
    """The reward source of a run: pointwise rewards, or (``pairwise:...``) only win probabilities."""

    def __init__(self, spec: str | dict[str, float], scale: float = 1.0, missing_eos_penalty: float | None = None,
                 device: Any = None):
        self.spec = spec
        self.pointwise = not (isinstance(spec, str) and spec.startswith("pairwise:"))
        self.source = get_reward_source(spec, device=device) if self.pointwise else None
        self.preference = get_preference_source(self.source if self.pointwise else spec, scale=scale, device=device)
        self.missing_eos_penalty = missing_eos_penalty

    def rewards(self, prompts: Sequence[Text], samples: Sequence[Sample], metadata: Sequence[dict]) -> np.ndarray:
        """Reward of every sample (NaN when the source could not score it), EOS penalty applied."""
        responses = [s.as_response(p) for p, s in zip(prompts, samples)]
        total = np.asarray(self.source.rewards(prompts, responses, metadata).total, dtype=float).copy()
        if self.missing_eos_penalty:
            total -= self.missing_eos_penalty * np.array([not s.finished for s in samples], dtype=float)
        return total

    def win_probability(self, prompts: Sequence[Text], first: Sequence[Sample], second: Sequence[Sample],
                        metadata: Sequence[dict]) -> np.ndarray:
        """P(first beats second) per prompt; with a pointwise source sigmoid((r1 - r2) / scale) incl. penalties."""
        a = [s.as_response(p) for p, s in zip(prompts, first)]
        b = [s.as_response(p) for p, s in zip(prompts, second)]
        return np.asarray(self.preference.win_probability(prompts, a, b, metadata), dtype=float)


# ------------------------------------------------------------------------------------------- rounds
class Rounds:
    """The reference policy across rounds: pi_ref <- pi at each round start (APO: after extrapolating).

    Round r covers steps [r * steps_per_round, (r + 1) * steps_per_round). Its reference is saved to
    ``rounds/reference-r`` (and APO's trained weights to ``rounds/trained-r``) so that resume restores them."""

    def __init__(self, method: OnlineMethod, config: TrainConfig, total_steps: int, initial: torch.nn.Module,
                 main_process: bool):
        self.update = method.reference_update if config.online.reference_update is None else config.online.reference_update
        self.extrapolate = method.extrapolate
        self.alpha = config.online.extrapolation
        self.steps_per_round = max(1, math.ceil(total_steps / max(1, config.online.rounds)))
        self.dir = Path(config.output_dir) / "rounds"
        self.main_process = main_process
        self.initial = initial
        self.reference = frozen_copy(initial) if self.update else initial
        self.trained_previous: dict[str, torch.Tensor] | None = None  # APO's theta_hat of the previous round

    def resume(self, start: int) -> None:
        """Restore the reference (and APO's previous trained weights) of the round that step ``start`` - 1 was in."""
        if not self.update or start == 0:
            return
        r = (start - 1) // self.steps_per_round
        if r == 0:
            return
        self.reference.load_state_dict(_load_state(self.dir / f"reference-{r}"))
        if self.extrapolate:
            self.trained_previous = _load_state(self.dir / f"trained-{r}")

    @torch.no_grad()
    def before_step(self, step: int, policy: torch.nn.Module) -> None:
        if not self.update or step == 0 or step % self.steps_per_round:
            return
        r = step // self.steps_per_round
        if self.extrapolate:
            trained = {k: v.detach().clone() for k, v in policy.state_dict().items()}
            previous = self.trained_previous or self.initial.state_dict()
            for name, value in policy.state_dict().items():
                if value.is_floating_point():
                    value.add_(self.alpha * (trained[name] - previous[name].to(value.device)))
            self.trained_previous = trained
            self._save(f"trained-{r}", trained)
        self.reference.load_state_dict(policy.state_dict())
        self._save(f"reference-{r}", self.reference.state_dict())

    def _save(self, name: str, state: dict[str, torch.Tensor]) -> None:
        if not self.main_process:
            return
        from safetensors.torch import save_file

        with atomic_dir(self.dir / name) as tmp:
            save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path}: this round's reference is missing; cannot resume the run exactly "
                                "(start again with resume=never)")
    return load_file(str(path / "model.safetensors"))


# ------------------------------------------------------------------------------------------- rollout
@dataclass
class Rollout:
    """Called by the loop at the start of every step: prompts in, labelled tokenized records out."""

    method: OnlineMethod
    config: TrainConfig
    tokenizer: Any
    labeller: Labeller
    rounds: Rounds
    process_index: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {"ties": 0, "unscored": 0})

    @property
    def num_samples(self) -> int:
        return self.config.online.num_samples or self.method.num_samples

    def sampling(self, step: int, num_samples: int, part: int) -> SamplingConfig:
        online = self.config.online
        seed = ((self.config.seed * 1_000_003 + step) * 101 + self.process_index) * 7 + part
        return SamplingConfig(num_samples=num_samples, max_new_tokens=online.max_new_tokens,
                              temperature=online.temperature, top_p=online.top_p, top_k=online.top_k,
                              batch_size=online.generation_batch_size, seed=seed)

    def sample(self, step: int, policy: torch.nn.Module, prompts: list[Text]) -> list[list[tuple[Sample, str]]]:
        """Per prompt, its samples with their origin ("policy", "reference" or "mixture")."""
        k, kind = self.num_samples, self.method.sampler
        reference = self.rounds.reference

        def grouped(samples: list[Sample], n: int, origin: str) -> list[list[tuple[Sample, str]]]:
            return [[(s, origin) for s in samples[i * n:(i + 1) * n]] for i in range(len(prompts))]

        def mixture(n: int, part: int) -> list[Sample]:
            from alignkit.decoding.mixture import generate_mixture

            return generate_mixture(policy, reference, self.tokenizer, prompts, self.config.online.mixture_coef,
                                    self.sampling(step, n, part))

        if kind == "policy":
            return grouped(generate(policy, self.tokenizer, prompts, self.sampling(step, k, 0)), k, "policy")
        if kind == "reference":
            return grouped(generate(reference, self.tokenizer, prompts, self.sampling(step, k, 0)), k, "reference")
        if kind == "mixture":
            return grouped(mixture(k, 0), k, "mixture")
        first = grouped(generate(policy, self.tokenizer, prompts, self.sampling(step, 1, 0)), 1, "policy")
        other = (grouped(generate(reference, self.tokenizer, prompts, self.sampling(step, 1, 1)), 1, "reference")
                 if kind == "policy+reference" else grouped(mixture(1, 1), 1, "mixture"))
        return [a + b for a, b in zip(first, other)]

    def __call__(self, step: int, rows: Sequence[PromptRow], model: torch.nn.Module
                 ) -> tuple[list[TokenizedRecord], dict[str, torch.Tensor]]:
        policy = language_model(model)
        self.rounds.before_step(step, policy)
        prompts = [row.prompt for row in rows]
        try:
            groups = self.sample(step, policy, prompts)
        finally:
            policy.train()
        flat = [(i, s, origin) for i, group in enumerate(groups) for s, origin in group]
        rewards = None
        if self.labeller.pointwise:
            rewards = self.labeller.rewards([prompts[i] for i, _, _ in flat], [s for _, s, _ in flat],
                                            [rows[i].metadata for i, _, _ in flat])
        records: list[TokenizedRecord] = []
        offset = 0
        for i, group in enumerate(groups):
            scored = None if rewards is None else rewards[offset: offset + len(group)]
            offset += len(group)
            records += self.label(step, rows[i], group, scored)
        if self.method.labels == "best" and self.config.online.keep is not None:
            records = self.top_share(records, self.config.online.keep)
        for n, record in enumerate(records):
            record.index = n
        return records, self.metrics(flat, rewards, len(records), len(rows))

    # --- labelling rules: (prompt, samples, rewards) -> records
    def label(self, step: int, row: PromptRow, group: list[tuple[Sample, str]],
              rewards: np.ndarray | None) -> list[TokenizedRecord]:
        rule = self.method.labels
        if rewards is not None:
            keep = [j for j, r in enumerate(rewards) if not math.isnan(r)]
            self.skipped["unscored"] += len(group) - len(keep)
            group, rewards = [group[j] for j in keep], rewards[keep]
            if rule == "win_prob" and len(group) < 2:
                return []
        if rule == "pairs":
            return self.pair(row, group, rewards)
        if rule == "win_prob":
            (y, _), (other, _) = group[0], group[1]
            if rewards is not None:
                p = float(1 / (1 + math.exp(-(rewards[0] - rewards[1]) / self.config.online.preference_scale)))
            else:
                p = float(self.labeller.win_probability([row.prompt], [y], [other], [row.metadata])[0])
            if math.isnan(p):
                self.skipped["unscored"] += 1
                return []
            return [self.record(row, [y], {"win_prob": [p]})]
        order = sorted(range(len(group)), key=lambda j: -rewards[j])
        if rule == "ranked":
            if len(group) < 2:
                return []
            scale = self.config.online.preference_scale
            return [self.record(row, [group[j][0] for j in order], {"score": [rewards[j] / scale for j in order],
                                                                     "reward": [rewards[j] for j in order]},
                                ranked=True)]
        if rule == "best":
            return [self.record(row, [group[order[0]][0]], {"reward": [rewards[order[0]]]})] if order else []
        if rule == "top_k":
            k = int(self.config.online.keep or 1)
            return [self.record(row, [group[j][0]], {"reward": [rewards[j]]}) for j in order[:k]]
        if rule == "rso_pairs":
            from alignkit.decoding.rso import rso_select

            rng = random.Random(hash((self.config.seed, step, self.process_index, row.source)) & 0xFFFFFFFF)
            accepted = rso_select(list(rewards), self.config.online.rso_beta, self.config.online.rso_accept, rng)
            out = []
            for a, b in zip(accepted[0::2], accepted[1::2]):
                out += self.pair(row, [group[a], group[b]], rewards[[a, b]])
            return out
        raise ValueError(f"unknown labelling rule {rule!r}")

    def pair(self, row: PromptRow, group: list[tuple[Sample, str]], rewards: np.ndarray | None
             ) -> list[TokenizedRecord]:
        """Best vs worst of ``group`` (by reward, or by the preference source for two samples); ties give none."""
        if len(group) < 2:
            return []
        if rewards is not None:
            best, worst = int(np.argmax(rewards)), int(np.argmin(rewards))
            if rewards[best] == rewards[worst]:
                self.skipped["ties"] += 1
                return []
            values = [rewards[best], rewards[worst]]
        else:
            p = float(self.labeller.win_probability([row.prompt], [group[0][0]], [group[1][0]], [row.metadata])[0])
            if math.isnan(p) or p == 0.5:
                self.skipped["ties" if p == 0.5 else "unscored"] += 1
                return []
            best, worst = (0, 1) if p > 0.5 else (1, 0)
            values = [max(p, 1 - p), min(p, 1 - p)]
        chosen, rejected = group[best], group[worst]
        return [self.record(row, [chosen[0], rejected[0]], {
            "reward": values, "is_reference_sample": [float(chosen[1] == "reference"), float(rejected[1] == "reference")]},
            ranked=True)]

    def record(self, row: PromptRow, samples: list[Sample], scores: dict[str, list[float]],
               ranked: bool = False) -> TokenizedRecord:
        record = PreferenceRecord(prompt=row.prompt, responses=[s.as_response(row.prompt) for s in samples],
                                  ranking=list(range(len(samples))) if ranked else None,
                                  scores={k: [float(v) for v in vs] for k, vs in scores.items()},
                                  metadata=row.metadata, source=row.source)
        return TokenizedRecord(0, record, list(samples[0].prompt_ids), [list(s.response_ids) for s in samples])

    @staticmethod
    def top_share(records: list[TokenizedRecord], share: float) -> list[TokenizedRecord]:
        """RAFT's batch-level filter: the top ``share`` of the step's responses by reward."""
        keep = max(1, math.ceil(share * len(records)))
        return sorted(records, key=lambda r: -r.record.scores["reward"][0])[:keep]

    def metrics(self, flat: list[tuple[int, Sample, str]], rewards: np.ndarray | None, records: int,
                prompts: int) -> dict[str, torch.Tensor]:
        mine = [j for j, (_, _, origin) in enumerate(flat) if origin == "policy"] or list(range(len(flat)))
        out = {"online/length": torch.tensor([float(len(flat[j][1].response_ids)) for j in mine]),
               "online/finished": torch.tensor([float(flat[j][1].finished) for j in mine]),
               "online/records_per_prompt": torch.tensor([records / max(1, prompts)])}
        if rewards is not None:
            out["online/reward"] = torch.tensor([rewards[j] for j in mine], dtype=torch.float64).float()
        return out


# ------------------------------------------------------------------------------------------- objectives
class NashMDObjective:
    """Nash-MD's policy gradient (Munos et al. 2023, arXiv:2312.00886) with y ~ pi and y' ~ the mixture:

    L = -(P(y > y') - 1/2 - tau * rho(y)) * l(y), with rho(y) = l(y) - l_ref(y) and the bracket held constant,

    a REINFORCE estimate of the gradient of E_{y~pi}[P(y > y')] - tau * KL(pi || pi_ref) (the KL's score-function
    gradient is E[rho * grad l]); tau = ``online.kl_coef``."""

    def __init__(self, reference: torch.nn.Module, kl_coef: float, pack: bool):
        self.reference, self.kl_coef, self.pack = reference, kl_coef, pack

    def count(self, batch: Batch) -> int:
        return batch.num_records

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy = response_logps(model, batch, pack=self.pack).sum()
        with torch.no_grad():
            reference = response_logps(self.reference, batch, pack=self.pack).sum()
        rho = (policy - reference).detach()
        advantage = batch.scores["win_prob"].to(policy.dtype) - 0.5 - self.kl_coef * rho
        return -(advantage * policy).sum(), {"win_prob": batch.scores["win_prob"], "kl/sample": rho}


class SuperHFObjective:
    """SuperHF (Mukobi et al. 2023, arXiv:2310.16763) on the kept samples, per completion token t:

    L_t = -log pi(y_t) + kl_coef * KL(pi_prior(.|y_<t) || pi(.|y_<t)),

    averaged over every kept token of the optimizer step; pi_prior is the initial policy."""

    def __init__(self, prior: torch.nn.Module, kl_coef: float):
        self.prior, self.kl_coef = prior, kl_coef

    def count(self, batch: Batch) -> int:
        return int(batch.response_mask[:, 1:].sum())

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        policy = response_distributions(model, batch)
        with torch.no_grad():
            prior = response_distributions(self.prior, batch).full
        kl = (prior.exp() * (prior - policy.full)).sum(-1)
        nll = -policy.logps.token_logps.sum()
        per_row_kl = policy.logps.mask.new_zeros(policy.logps.mask.shape, dtype=kl.dtype)
        per_row_kl[policy.logps.mask] = kl.detach()
        lengths = policy.logps.lengths.clamp(min=1)
        return nll + self.kl_coef * kl.sum(), {"kl/prior_per_token": per_row_kl.sum(-1) / lengths,
                                               "nll_per_token": -policy.logps.sum().detach() / lengths}


# ------------------------------------------------------------------------------------------- entry
def check_online_config(config: TrainConfig) -> OnlineMethod:
    """The method, with the configuration checked against it (named errors before any model loads)."""
    online = config.online
    try:
        method = get_online_method(online.method)
    except KeyError as exc:
        raise ConfigError(f"online.method: {exc.args[0]}") from None
    if not online.reward:
        raise ConfigError("online.reward is required: the source that labels samples (e.g. sandbox-gold, rm:PATH, "
                          "verify:max_words=20, or {sandbox-gold: 1.0, 'verify:include=please': 0.5})")
    pairwise = isinstance(online.reward, str) and online.reward.startswith("pairwise:")
    if pairwise and method.labels in POINTWISE_ONLY:
        raise ConfigError(f"online.method {method.name} ranks samples by reward; online.reward "
                          f"'{online.reward}' only compares pairs. Use a pointwise source")
    if method.loss is None and online.loss is not None:
        raise ConfigError(f"online.loss: method {method.name} has its own objective ({method.formula}); "
                          "it takes no preference loss")
    if method.objective == "preference":
        name = online.loss or method.loss
        try:
            spec = get_loss(name)
        except KeyError as exc:
            raise ConfigError(f"online.loss: {exc.args[0]}") from None
        wanted = {"pairs": "pairs", "win_prob": "pairs", "rso_pairs": "pairs", "ranked": "ranked"}[method.labels]
        if spec.data_kind != wanted or spec.token_level or spec.mismatched_pairs:
            raise ConfigError(f"online.loss: '{name}' takes {spec.data_kind} data; method {method.name} makes "
                              f"{wanted} (sequence-level losses only)")
        try:
            spec.params(config.loss_params)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
    if (online.num_samples or method.num_samples) < 2 and method.labels in ("pairs", "ranked", "rso_pairs"):
        raise ConfigError(f"online.num_samples: method {method.name} needs at least 2 samples per prompt")
    if method.sampler != "policy" and method.sampler != "reference" and online.num_samples not in (None, 2) \
            and method.sampler != "mixture":
        raise ConfigError(f"online.num_samples: method {method.name} samples one response of each kind (2)")
    if config.lora.enabled:
        raise ConfigError("recipe: online does not support LoRA yet (it needs separate reference weights)")
    if config.reference.path is not None and (method.reference_update or online.reference_update):
        raise ConfigError("reference.path is fixed; methods that move the reference each round start from the policy")
    return method


# online.* settings that only some online methods read: key -> (does this method read it?, which methods do)
ONLINE_METHOD_SETTINGS: dict[str, tuple[Callable[[OnlineMethod], bool], str]] = {
    "keep": (lambda m: m.labels in ("best", "top_k"), "raft and superhf"),
    "mixture_coef": (lambda m: "mixture" in m.sampler, "nash_md and ipo_md"),
    "rso_beta": (lambda m: m.labels == "rso_pairs", "rso"),
    "rso_accept": (lambda m: m.labels == "rso_pairs", "rso"),
    "extrapolation": (lambda m: m.extrapolate, "apo"),
    "kl_coef": (lambda m: m.objective in ("nash_md", "superhf"), "nash_md and superhf"),
}


def check_online_method_settings(config: TrainConfig, method: OnlineMethod) -> None:
    """Settings the online method does not read are errors; ``online.keep`` is a share for RAFT and a count for
    SuperHF."""
    online = config.online
    for key, (reads, readers) in ONLINE_METHOD_SETTINGS.items():
        if getattr(online, key) != default_of(OnlineConfig.__dataclass_fields__[key]) and not reads(method):
            raise ConfigError(f"online.{key}: method {method.name} does not use it (it is for {readers})")
    if method.objective != "preference":
        for key in ("loss_params", "sft_weight"):
            if getattr(config, key) != default_of(TrainConfig.__dataclass_fields__[key]):
                raise ConfigError(f"{key}: online method {method.name} has its own objective ({method.formula}); "
                                  "it takes no preference-loss settings")
    if online.keep is not None and method.labels == "best" and online.keep > 1:
        raise ConfigError(f"online.keep: method {method.name} keeps this share of the step's samples; it must be in "
                          f"(0, 1], got {online.keep!r}")
    if online.keep is not None and method.labels == "top_k" and not float(online.keep).is_integer():
        raise ConfigError(f"online.keep: method {method.name} keeps this many responses per prompt; it must be a "
                          f"whole number >= 1, got {online.keep!r}")


def check_online(config: TrainConfig) -> None:
    check_online_method_settings(config, check_online_config(config))


def make_objective(method: OnlineMethod, config: TrainConfig, tokenizer: Any, reference: torch.nn.Module,
                   initial: torch.nn.Module, accelerator: Any) -> Any:
    if method.objective == "sft":
        return SFTObjective(config.rows_per_forward, config.pack)
    if method.objective == "superhf":
        return SuperHFObjective(initial, config.online.kl_coef)
    if method.objective == "nash_md":
        return NashMDObjective(reference, config.online.kl_coef, config.pack)
    spec = get_loss(config.online.loss or method.loss)
    return PreferenceObjective(spec, spec.params(config.loss_params), tokenizer.pad_token_id, [], config.sft_weight,
                               reference=reference if spec.needs_reference else None,
                               reducer=make_reducer(accelerator), rows_per_forward=config.rows_per_forward,
                               pack=config.pack)


def train_online(config: TrainConfig, on_step: Callable[[int, torch.nn.Module], None] | None = None,
                 on_log: OnLog | None = None) -> TrainResult:
    """Run ``recipe: online`` (see the module docstring)."""
    method = get_online_method(config.online.method)
    run = SamplingRun.load(config, config.reference.path)
    accelerator, tokenizer, policy, initial = run.accelerator, run.tokenizer, run.policy, run.initial
    device = accelerator.device
    _, total_steps = schedule_plan(config, len(run.train_rows), accelerator.num_processes)
    rounds = Rounds(method, config, total_steps, initial, accelerator.is_main_process)
    rounds.resume(run.start)
    labeller = Labeller(config.online.reward, config.online.preference_scale, config.online.missing_eos_penalty,
                        device)
    rollout = Rollout(method, config, tokenizer, labeller, rounds, accelerator.process_index)
    objective = make_objective(method, config, tokenizer, rounds.reference, initial, accelerator)
    evaluator = Evaluator(config, tokenizer, run.eval_rows, labeller, initial,
                          Path(config.output_dir) / "online_eval.jsonl", run.start, accelerator.is_main_process)
    after_step = evaluation_hook(evaluator, total_steps, run.start, policy, on_step)
    if accelerator.is_main_process:  # progress=false hides the bar, never the run's summary line
        print(f"[alignkit] online {method.name}: {len(run.train_rows)} prompts, {len(run.eval_rows)} held out; "
              f"{rollout.num_samples} samples per prompt; reward {config.online.reward}")
    result = train_loop(config, model=policy, processor=tokenizer, dataset=run.train_rows,
                        objective=TokenBatches(objective, tokenizer.pad_token_id, f"online:{method.name}"),
                        accelerator=accelerator, resume_from=run.resume, on_step=after_step, rollout=rollout,
                        on_log=on_log,
                        summary={"online": {"method": method.name, "paper": method.paper,
                                            "skipped": rollout.skipped, "rounds": config.online.rounds}})
    run.add_evaluation_to_summary(config, evaluator)
    return result


register_recipe(Recipe(
    "online", "sample from the policy, label with a reward source, update (`online.method`: online DPO, Nash-MD, "
              "XPO, SPPO, RAFT ...)",
    train_online, check=check_online,
    reads=("loss_params", "sft_weight", "data.eval_path", "reference.path", "online.*", "rows_per_forward", "pack"),
    distributed=("ddp",), outputs=("online_eval.jsonl",)))
