"""The one training loop, on Accelerate. Recipes plug in an :class:`Objective`; the loop does the rest:
optimizer and schedule, exact gradient accumulation, clipping, seeding, progress, metrics (JSONL, and
TensorBoard when installed), atomic checkpoints and exact resume.

The loop knows no recipe and no data type: the dataset is a sequence of items the objective batches itself
(``objective.collate``: token records for language models, anything else for other models), the objective names
itself for the progress bar, and ``processor`` (a tokenizer, an image processor, or None) is saved beside every
model it writes. The model needs ``save_pretrained`` (transformers, diffusers and PEFT models have it).

Normalisation is exact across micro-batches: the objective returns a *sum* of per-item losses and says how
many items (examples, or tokens for per-token losses) each micro-batch holds, and every micro-batch is
divided by the total over the whole optimizer step. So ``batch 8`` and ``batch 4 x 2 accumulation`` give the
same update.

Nothing non-finite is saved: after every optimizer step the loss and the weights are checked (one fused 2-norm
over the parameters), and before every save the weights and the optimizer state; all processes agree on the outcome
(one small all-reduce) and stop together with a :class:`TrainingError` naming the step and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from alignkit.config import TrainConfig, to_dict
from alignkit.losses.state import LOCAL, Reducer
from alignkit.models.lora import is_lora, save_policy
from alignkit.models.scoring import language_model
from alignkit.engine.checkpoint import (
    all_finite,
    checkpoint_dir,
    floating_tensors,
    load_training_state,
    save_checkpoint,
    stage_optimizer_shard,
)
from alignkit.engine.logs import Trackers, metric_line, on_terminal
from alignkit.engine.parallel import make_parallel
from alignkit.engine.replicated import full_tensor
from alignkit.utils.io import atomic_dir, write_json, write_text


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss or weights); nothing from the failed step is saved."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training: says at which step and which checkpoint a rerun resumes from (still a
    KeyboardInterrupt, so Python callers stop as they would have)."""

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        where = (f"last checkpoint: step {int(checkpoint.name.split('-')[-1])} ({checkpoint}); rerun the same "
                 "command to resume") if checkpoint else "no checkpoint was saved yet (save_steps sets how often)"
        super().__init__(f"interrupted at step {step}; {where}")


class Objective(Protocol):
    """What a recipe gives the loop. Optional: ``parameters()`` (trainable modules the objective owns, optimised
    with the model), ``state_dict()`` / ``load_state_dict()`` (saved in and restored from checkpoints)."""

    name: str  # shown in the progress bar, e.g. "preference:dpo"

    def collate(self, items: Sequence[Any]) -> Any:
        """One micro-batch from dataset items (or a rollout's records); it must have ``.to(device)``."""

    def count(self, batch: Any) -> int:
        """Items this batch contributes to the step's normaliser (examples, or response tokens)."""

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(sum of per-item losses, per-record metrics [B]) for one micro-batch."""


# evaluate(step, model) -> {name: value}: held-out evaluation, logged as ``eval/<name>`` (see :func:`train_loop`)
Evaluate = Callable[[int, torch.nn.Module], dict[str, float]]
# on_log(row): every row the loop logs ({"step": ..., "loss": ..., "eval/...": ...}), like TRL's callback on_log
OnLog = Callable[[dict[str, Any]], None]


class Rollout(Protocol):
    """Online methods: makes a step's records from its prompts with the current model."""

    def __call__(self, step: int, prompts: Sequence[Any], model: torch.nn.Module
                 ) -> tuple[list[Any], dict[str, torch.Tensor]]: ...


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    steps: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    eval: dict[str, float] = field(default_factory=dict)  # the last held-out evaluation (empty: none ran)
    logs: list[str] = field(default_factory=list)  # where the logged rows went (metrics.jsonl, trackers)
    start: int = 0  # the step this run started from (a resumed run: its checkpoint's)


def make_accelerator() -> Accelerator:
    return Accelerator(cpu=not torch.cuda.is_available())


def make_reducer(accelerator: Accelerator) -> Reducer:
    """Sums over processes for batch statistics (KTO's reference point, BCO's running shift)."""
    if accelerator.num_processes == 1:
        return LOCAL
    return Reducer(lambda t: accelerator.reduce(t, reduction="sum"), accelerator.num_processes)


def fused_adamw_supported(params: Sequence[torch.Tensor], parallel: Any) -> bool:
    """PyTorch's fused AdamW (one kernel for all parameters) where it applies: replicated floating-point weights
    on CPU or CUDA. On CPU PyTorch otherwise updates one tensor at a time (sandbox model: ~6 ms of a ~120 ms step,
    against ~1 ms fused). Sharded modes (FSDP's DTensors, DeepSpeed's flat partitions) keep the default."""
    return parallel.name == "ddp" and bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def schedule_plan(config: TrainConfig, num_records: int, num_processes: int = 1) -> tuple[int, int]:
    """(records per optimizer step, total optimizer steps)."""
    per_step = config.batch_size * config.grad_accum * num_processes
    steps_per_epoch = math.ceil(num_records / per_step)
    total = config.max_steps if config.max_steps is not None else math.ceil(config.epochs * steps_per_epoch)
    return per_step, max(1, total)


def step_records(step: int, num_records: int, per_step: int, seed: int, fill: bool = False) -> list[int]:
    """Record indices of optimizer step ``step``: a fresh seeded permutation every epoch.

    With ``fill`` (several processes), a short last step of an epoch is filled up to ``per_step`` with records from
    the start of that epoch's order, as Accelerate's ``even_batches`` does: every process then runs the same number
    of micro-batches, which the collectives inside a step (FSDP's all-gathers, KTO's and BCO's batch statistics)
    need."""
    steps_per_epoch = math.ceil(num_records / per_step)
    epoch, position = divmod(step, steps_per_epoch)
    order = torch.randperm(num_records, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    chosen = order[position * per_step: (position + 1) * per_step].tolist()
    if fill and len(chosen) < per_step:
        chosen += order.repeat(math.ceil(per_step / num_records))[: per_step - len(chosen)].tolist()
    return chosen


class MetricsLog:
    """metrics.jsonl and the trackers of ``report_to`` (:mod:`alignkit.engine.logs`), main process only. On resume,
    rows after the checkpoint are discarded."""

    def __init__(self, output_dir: Path, resume_step: int, enabled: bool, report_to: Sequence[str] = (),
                 settings: dict[str, Any] | None = None):
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        if enabled and self.path.exists():
            self.rows = [r for r in read_rows(self.path) if r.get("step", 0) <= resume_step]
        if enabled:
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        names = [name for name in report_to if name != "none"]
        self.trackers = Trackers(names, output_dir, settings or {}) if enabled else None
        self.where = [str(self.path), *(self.trackers.where if self.trackers else [])]

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.trackers is not None:
            self.trackers.log(row)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics file; a line a killed run left half-written (not JSON) is dropped."""
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return [row for row in rows if isinstance(row, dict)]


def local_values(param: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this process holds: an FSDP DTensor's local shard, a DeepSpeed ZeRO-3 partition
    (the parameter itself is empty between forward passes), or the whole parameter."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor
    return param.to_local() if hasattr(param, "to_local") else param


def agreed(accelerator: Accelerator, *flags: bool) -> list[bool]:
    """Each flag AND-ed over the processes (one small all-reduce), so that all of them take the same decision."""
    if accelerator.num_processes == 1:
        return list(flags)
    failed = torch.tensor([float(not flag) for flag in flags], device=accelerator.device)
    return [count == 0 for count in accelerator.reduce(failed, reduction="sum").tolist()]


def non_finite_error(what: str, step: int, last_good: Path | None) -> TrainingError:
    kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
    return TrainingError(f"non-finite {what} at step {step}; stopping, nothing from this step was saved; {kept}. "
                         "Lower the learning rate (optim.lr) or check the data")


def check_step(accelerator: Accelerator, step: int, bad_loss: float | None, params: Sequence[torch.Tensor],
               last_good: Path | None) -> None:
    """After an optimizer step: stop (every process) if a loss was non-finite or the update made the weights so."""
    loss_ok, weights_ok = agreed(accelerator, bad_loss is None, all_finite(local_values(p) for p in params))
    if not loss_ok:
        value = f" ({bad_loss})" if bad_loss is not None else " (on another process)"
        raise non_finite_error(f"loss{value}", step, last_good)
    if not weights_ok:
        raise non_finite_error("weights", step, last_good)


def check_saveable(accelerator: Accelerator, step: int, last_good: Path | None, **saved: Any) -> None:
    """Before a save: stop (every process) if any of ``saved`` (name -> weights, or nested states such as the
    optimizer's, whole or this process's shard) holds a NaN or an infinity."""
    finite = agreed(accelerator, *(all_finite(floating_tensors(value)) for value in saved.values()))
    for name, ok in zip(saved, finite):
        if not ok:
            raise non_finite_error(name.replace("_", " "), step, last_good)


def saved_weights(model: torch.nn.Module, model_state: dict[str, torch.Tensor] | None) -> list[torch.Tensor]:
    """The weights a save writes: the gathered state where the parallel mode gathers one, else the parameters."""
    if model_state is not None:
        return list(model_state.values())
    return [local_values(p) for p in model.parameters()]


def reduce_logged(loss: float, sums: dict[str, float], counts: dict[str, int], accelerator: Accelerator
                  ) -> tuple[float, dict[str, float], dict[str, int]]:
    """Sum the logged loss and metric sums/counts over processes. The key sets are joined first: a process may
    lack a metric this step (e.g. an online step whose samples all tied, leaving it no records)."""
    from accelerate.utils import gather_object

    keys = sorted(set(gather_object(sorted(sums))))
    local = torch.tensor([loss, *(sums.get(k, 0.0) for k in keys), *(float(counts.get(k, 0)) for k in keys)],
                         dtype=torch.float64,
                         device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum").tolist()
    n = len(keys)
    return total[0], dict(zip(keys, total[1:1 + n])), {k: int(v) for k, v in zip(keys, total[1 + n:])}


def add_metrics(sums: dict[str, float], counts: dict[str, int], metrics: dict[str, torch.Tensor]) -> None:
    """Accumulate per-record metric values; NaN marks "not applicable to this record"."""
    for key, value in metrics.items():
        value = value.detach().float()
        sums[key] = sums.get(key, 0.0) + value.nansum().item()
        counts[key] = counts.get(key, 0) + int((~value.isnan()).sum())


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in sorted(keys)}


def train_loop(config: TrainConfig, *, model: torch.nn.Module, processor: Any, dataset: Sequence[Any],
               objective: Objective, accelerator: Accelerator, resume_from: Path | None = None,
               summary: dict[str, Any] | None = None,
               on_step: Callable[[int, torch.nn.Module], None] | None = None,
               rollout: Rollout | None = None, evaluate: Evaluate | None = None,
               on_log: OnLog | None = None) -> TrainResult:
    """Train ``model`` on ``dataset`` with ``objective``; write checkpoints, metrics and the final model (with
    ``processor``, e.g. the tokenizer, beside it; None: nothing beside it).

    With ``rollout`` (online methods) the dataset holds prompts and ``rollout(step, prompts, model)`` makes each
    step's records (and per-sample metrics to log) from the process's share of the step's prompts.

    ``evaluate(step, model)`` (held-out evaluation) runs on every process every ``config.eval_steps`` optimizer
    steps and after the last one, between optimizer steps; it puts the model in eval mode itself (and runs without
    gradients), and the loop restores ``model.train()`` and the random state afterwards, so evaluating does not change
    the training numbers. Its values are logged as ``eval/<name>`` in the row of that step (a row of their own when
    the step logs nothing else) and the last ones go into summary.json under ``"eval"``. ``on_log(row)`` is called
    on the main process with every row logged (metrics.jsonl's rows)."""
    output_dir = Path(config.output_dir)
    main = accelerator.is_main_process
    torch.manual_seed(config.seed)
    per_step, total_steps = schedule_plan(config, len(dataset), accelerator.num_processes)
    model.train()
    parallel = make_parallel(config.distributed, accelerator, config.zero_stage)
    model = parallel.wrap(model.to(accelerator.device))  # before the optimizer: FSDP replaces the parameters
    extra = list(objective.parameters()) if hasattr(objective, "parameters") else []  # e.g. learned token masks
    trainable = [p for p in model.parameters() if p.requires_grad] + extra
    optimizer = torch.optim.AdamW(trainable, lr=config.optim.lr, betas=tuple(config.optim.betas), eps=config.optim.eps,
                                  weight_decay=config.optim.weight_decay,
                                  fused=fused_adamw_supported(trainable, parallel))
    scheduler = get_scheduler(config.optim.schedule, optimizer,
                              num_warmup_steps=int(config.optim.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    # Gradients are reduced, clipped and applied by ``parallel`` (see alignkit.engine.parallel). The scheduler is not
    # wrapped: Accelerate's wrapper would step it once per process.
    parallel.attach(model, optimizer, config.optim.max_grad_norm)  # DeepSpeed: the engine, around our optimizer
    start = 0
    last_good = resume_from  # the newest checkpoint this run can fall back to
    if resume_from is not None:
        state, objective_state = load_training_state(
            resume_from, lambda s, shard: parallel.load_optimizer_state(model, optimizer, s, shard), scheduler,
            rank=accelerator.process_index)
        start = state["step"]
        if hasattr(objective, "load_state_dict"):
            objective.load_state_dict(objective_state)
        if main:
            print(f"[alignkit] resuming from step {start} ({resume_from})")
    log = MetricsLog(output_dir, start, enabled=main, report_to=config.report_to, settings=to_dict(config))
    if main:
        write_json(output_dir / "config.json", to_dict(config))
    # on a terminal a progress bar; off one (a file, a pipe) one plain line per logged row instead
    lines = config.progress and main and not on_terminal()
    bar = tqdm(total=total_steps, initial=start, desc=objective.name,
               disable=not (config.progress and main) or lines, dynamic_ncols=True)
    began = time.time()
    window: list[dict[str, float]] = []  # per-step metrics since the last log line (logged as means)
    evaluated: dict[str, float] = {}  # the last held-out evaluation
    done = start  # optimizer steps completed
    try:
        for step in range(start, total_steps):
            indices = step_records(step, len(dataset), per_step, config.seed, fill=accelerator.num_processes > 1)
            mine = [dataset[i] for i in indices[accelerator.process_index:: accelerator.num_processes]]
            step_loss, sums, counts, bad_loss = 0.0, {}, {}, None
            if rollout is not None:
                mine, sampled = rollout(step, mine, model)
                add_metrics(sums, counts, sampled)
            micro = [mine[i: i + config.batch_size] for i in range(0, len(mine), config.batch_size)]
            batches = [objective.collate(chunk).to(accelerator.device) for chunk in micro if chunk]
            total = torch.tensor(float(sum(objective.count(b) for b in batches)), device=accelerator.device)
            total = accelerator.reduce(total, reduction="sum").clamp(min=1)  # 0: nothing to learn from this step
            for batch in batches:
                loss_sum, metrics = objective.loss(model, batch)
                loss_value = loss_sum.item()
                if not math.isfinite(loss_value) and bad_loss is None:
                    bad_loss = loss_value  # stopped after the step, when all processes agree (a backward may be collective)
                parallel.backward(loss_sum / total)
                step_loss += loss_value
                add_metrics(sums, counts, metrics)
            grad_norm = parallel.step(optimizer, trainable, config.optim.max_grad_norm)  # reduce, clip, update, zero
            check_step(accelerator, step + 1, bad_loss, trainable, last_good)
            scheduler.step()
            if accelerator.num_processes > 1:
                step_loss, sums, counts = reduce_logged(step_loss, sums, counts, accelerator)
            done = step + 1
            row = {"loss": step_loss / total.item(), **{k: v / counts[k] for k, v in sums.items() if counts[k]}}
            if grad_norm is not None:
                row["grad_norm"] = float(full_tensor(grad_norm))
            window.append(row)
            logged: dict[str, Any] = {}
            if done % config.log_steps == 0 or done == total_steps:
                logged = {"lr": scheduler.get_last_lr()[0], **mean_rows(window)}
                window = []
            if evaluate is not None and (done == total_steps or (config.eval_steps and done % config.eval_steps == 0)):
                evaluated = run_evaluation(evaluate, done, model)
                logged.update({f"eval/{name}": value for name, value in evaluated.items()})
            if logged:
                log.write({"step": done, **logged})
                if lines:
                    print(metric_line(log.rows[-1], total_steps, (done - start) / max(time.time() - began, 1e-9)),
                          flush=True)
                if on_log is not None and main:
                    on_log(dict(log.rows[-1]))
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(1)
            if on_step is not None:
                on_step(done, language_model(model))
            if (config.save_steps and done % config.save_steps == 0) or done == total_steps:
                accelerator.wait_for_everyone()
                model_state, optimizer_state = parallel.model_state(model), parallel.optimizer_state(model, optimizer)
                shard = parallel.optimizer_shard(model, optimizer)  # DeepSpeed: every process writes its own
                check_saveable(accelerator, done, last_good, weights=saved_weights(model, model_state),
                               optimizer_state=[optimizer_state, shard])
                if shard is not None:
                    stage_optimizer_shard(output_dir, done, accelerator.process_index, shard)
                    accelerator.wait_for_everyone()
                if main:
                    save_checkpoint(output_dir, done, model=language_model(model), processor=processor,
                                    optimizer_state=optimizer_state, scheduler=scheduler, keep=config.save_total_limit,
                                    trainer_state={"step": done, "total_steps": total_steps, "seed": config.seed},
                                    objective_state=getattr(objective, "state_dict", dict)(), model_state=model_state,
                                    shards=accelerator.num_processes if shard is not None else 0)
                last_good = checkpoint_dir(output_dir, done)
    except KeyboardInterrupt:
        raise Interrupted(done, last_good) from None
    finally:
        bar.close()
        log.close()
    model_dir = output_dir / "model"
    seconds = time.time() - began
    model_state = parallel.model_state(model)
    check_saveable(accelerator, total_steps, last_good, weights=saved_weights(model, model_state))
    model = language_model(model)
    if main:
        with atomic_dir(model_dir) as tmp:
            if is_lora(model):
                save_policy(model, tmp, merge=config.lora.merge)
            else:
                model.save_pretrained(tmp, safe_serialization=True,
                                      **({"state_dict": model_state} if model_state is not None else {}))
            if processor is not None:
                processor.save_pretrained(tmp)
        write_json(output_dir / "summary.json", {"steps": total_steps, "resumed_from": str(resume_from or ""),
                                                 "train_seconds": round(seconds, 2),
                                                 "processes": accelerator.num_processes, "parallel": parallel.name,
                                                 **(summary or {}),
                                                 **({"eval": evaluated} if evaluated else {}),
                                                 "final": log.rows[-1] if log.rows else {}})
    accelerator.wait_for_everyone()
    return TrainResult(output_dir, model_dir, total_steps, log.rows, seconds, evaluated, log.where, start)


def run_evaluation(evaluate: Evaluate, step: int, model: torch.nn.Module) -> dict[str, float]:
    """``evaluate(step, model)`` between optimizer steps, as floats; the random state (CPU and the current GPU)
    and ``model.train()`` are restored afterwards, so the training that follows is the same as without it."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            values = evaluate(step, language_model(model))
        finally:
            model.train()
    return {name: float(value) for name, value in values.items()}
