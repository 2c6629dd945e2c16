"""What the online and rl recipes share: the start of a sampling run (prompts, tokenizer, policy, initial policy)
and the held-out evaluation that follows it.

Evaluation: before training, every ``online.eval_every`` steps and at the end, held-out prompts are sampled at
temperature 1 and scored by the training reward (proxy) and, when ``online.gold`` is set, an independent reward
(e.g. ``sandbox-gold``); KL(pi || pi_init) is estimated as the mean of l(y) - l_init(y) over those samples.
Every evaluation samples with the same seed (common random numbers), so each later row also reports the gain over
step 0 as a paired mean over prompts with its standard error (``gold_gain``, ``gold_gain_se``; the same for the
proxy): a rise can be told from sampling noise. Rows go to ``online_eval.jsonl`` (with the per-prompt rewards)
and the run summary (without them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from alignkit.config import TrainConfig
from alignkit.data.prompts import PromptRow, load_prompt_rows
from alignkit.data.records import Text
from alignkit.engine.checkpoint import find_resume_checkpoint
from alignkit.engine.loop import make_accelerator
from alignkit.models.loading import check_data_path, frozen_copy, load_causal_lm, load_tokenizer
from alignkit.recipes.common.models import load_policy
from alignkit.rewards.sources import get_reward_source
from alignkit.sampling.generate import Sample, SamplingConfig, generate, score_samples
from alignkit.utils.io import write_json, write_jsonl


class ProxyReward(Protocol):
    """The training reward as the evaluation sees it (the online recipe's labeller, the rl recipe's reward)."""

    pointwise: bool  # False: it only compares pairs, so there is no proxy reward to report

    def rewards(self, prompts: Sequence[Text], samples: Sequence[Sample], metadata: Sequence[dict]) -> np.ndarray: ...


def split_prompts(config: TrainConfig) -> tuple[list[PromptRow], list[PromptRow]]:
    """(training prompts, held-out evaluation prompts)."""
    check_data_path(config.data.path, "data.path")
    if config.data.eval_path:
        check_data_path(config.data.eval_path, "data.eval_path")
    rows = load_prompt_rows(config.data.path, config.data.on_invalid)
    if config.data.limit is not None:
        rows = rows[: config.data.limit]
    if config.data.eval_path:
        return rows, load_prompt_rows(config.data.eval_path, config.data.on_invalid)[: config.online.eval_prompts]
    held = min(config.online.eval_prompts, len(rows) // 5)
    return (rows[:-held], rows[-held:]) if held else (rows, [])


@dataclass
class SamplingRun:
    """What the online and rl recipes both start from: the accelerator, tokenizer, training and held-out prompts,
    the checkpoint to resume from (and its step), the policy and a frozen copy of the initial policy (for KL)."""

    accelerator: Any
    tokenizer: Any
    train_rows: list[PromptRow]
    eval_rows: list[PromptRow]
    resume: Path | None
    start: int
    policy: torch.nn.Module
    initial: torch.nn.Module

    @classmethod
    def load(cls, config: TrainConfig, initial_path: str | None = None) -> "SamplingRun":
        accelerator = make_accelerator()
        model = config.model
        tokenizer = load_tokenizer(model.tokenizer or model.path, model.trust_remote_code)
        train_rows, eval_rows = split_prompts(config)
        resume = find_resume_checkpoint(config.output_dir, config.resume)
        start = json.loads((resume / "trainer_state.json").read_text())["step"] if resume is not None else 0
        policy = load_policy(config, resume, accelerator.device)
        initial = frozen_copy(load_causal_lm(initial_path or model.path, model.dtype, model.trust_remote_code,
                                             accelerator.device))
        return cls(accelerator, tokenizer, train_rows, eval_rows, resume, start, policy, initial)

    def add_evaluation_to_summary(self, config: TrainConfig, evaluator: Evaluator) -> None:
        """The evaluation curve joins the summary the loop wrote."""
        if self.accelerator.is_main_process:
            path = Path(config.output_dir) / "summary.json"
            write_json(path, {**json.loads(path.read_text()), "online_eval": evaluator.summary_rows()})


class Evaluator:
    """Proxy reward, gold reward and KL(pi || pi_init) on held-out prompts, sampled at temperature 1."""

    def __init__(self, config: TrainConfig, tokenizer: Any, prompts: list[PromptRow], labeller: ProxyReward,
                 initial: torch.nn.Module, path: Path, start: int, enabled: bool):
        self.config, self.tokenizer, self.prompts, self.labeller = config, tokenizer, prompts, labeller
        self.initial, self.path, self.enabled = initial, path, enabled and bool(prompts)
        self.gold = get_reward_source(config.online.gold) if config.online.gold else None
        self.rows: list[dict[str, Any]] = []
        if self.enabled and path.exists():
            self.rows = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= start]

    def due(self, step: int, total: int) -> bool:
        every = self.config.online.eval_every
        return self.enabled and (step == 0 or step == total or (every > 0 and step % every == 0))

    @torch.no_grad()
    def __call__(self, step: int, policy: torch.nn.Module) -> dict[str, Any]:
        online = self.config.online
        prompts = [r.prompt for r in self.prompts]
        k = online.eval_samples
        sampling = SamplingConfig(num_samples=k, max_new_tokens=online.max_new_tokens, temperature=1.0,
                                  batch_size=online.generation_batch_size, seed=self.config.seed + 7919)
        samples = generate(policy, self.tokenizer, prompts, sampling)  # prompt-major: k samples of each prompt
        policy.train()
        pad = self.tokenizer.pad_token_id
        kl = (score_samples(policy, samples, pad) - score_samples(self.initial, samples, pad)).double()
        policy.train()
        asked = [prompts[s.prompt_index] for s in samples]
        metadata = [self.prompts[s.prompt_index].metadata for s in samples]
        row: dict[str, Any] = {"step": step, "kl": float(kl.mean()),
                               "length": float(np.mean([len(s.response_ids) for s in samples])),
                               "finished": float(np.mean([s.finished for s in samples])), "per_prompt": {}}
        if self.labeller.pointwise:
            rewards = np.asarray(self.labeller.rewards(asked, samples, metadata), float)
            row["per_prompt"]["proxy"] = rewards.reshape(len(prompts), k).mean(1)
        if self.gold is not None:
            responses = [s.as_response(p) for p, s in zip(asked, samples)]
            rewards = np.asarray(self.gold.rewards(asked, responses, metadata).total, float)
            row["per_prompt"]["gold"] = rewards.reshape(len(prompts), k).mean(1)
        first = next((r for r in self.rows if r["step"] == 0), None) if step else None
        for name, values in row["per_prompt"].items():
            row.update(mean_and_gain(name, values, (first or {}).get("per_prompt", {}).get(name)))
        row["per_prompt"] = {name: [float(v) for v in values] for name, values in row["per_prompt"].items()}
        self.rows = [r for r in self.rows if r["step"] != step] + [row]
        write_jsonl(self.path, self.rows)
        return row

    def summary_rows(self) -> list[dict[str, Any]]:
        """The evaluation curve without the per-prompt rewards (those stay in ``online_eval.jsonl``)."""
        return [{k: v for k, v in row.items() if k != "per_prompt"} for row in self.rows]


def mean_and_gain(name: str, values: np.ndarray, initial: Sequence[float] | None) -> dict[str, float]:
    """``name``: the mean reward over prompts (NaN rewards left out), ``name_se``: its standard error; with the
    step-0 rewards of the same prompts, ``name_gain``: the paired mean of (now - step 0) and ``name_gain_se``: its
    standard error, std(d) / sqrt(n). Both evaluations sample with the same seed, so the pairing removes much of
    the prompt-to-prompt variance a difference of two means would carry."""
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    out = {name: float(finite.mean()) if finite.size else float("nan"),
           f"{name}_se": float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else float("nan")}
    if initial is not None and len(initial) == len(values):
        diff = values - np.asarray(initial, float)
        diff = diff[np.isfinite(diff)]
        out[f"{name}_gain"] = float(diff.mean()) if diff.size else float("nan")
        out[f"{name}_gain_se"] = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else float("nan")
    return out


def evaluation_hook(evaluator: Evaluator, total_steps: int, start: int, policy: torch.nn.Module,
                    on_step: Callable[[int, torch.nn.Module], None] | None) -> Callable[[int, torch.nn.Module], None]:
    """Evaluate the initial policy (fresh runs) now; the returned after-step hook evaluates when due, then calls
    ``on_step`` (shared by the online and rl recipes)."""
    if start == 0 and evaluator.due(0, total_steps):
        evaluator(0, policy)

    def after_step(step: int, model: torch.nn.Module) -> None:
        if evaluator.due(step, total_steps):
            evaluator(step, model)
        if on_step is not None:
            on_step(step, model)

    return after_step
