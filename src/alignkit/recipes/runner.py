"""The recipe runner: check a configuration against its recipe, then run the recipe.

``load_config`` (also ``alignkit.load_config``) reads a YAML file and ``key=value`` overrides into the schema
(:mod:`alignkit.config`) and then applies the recipe's rules: the recipe exists, no setting another recipe reads
is set, the recipe's own ``check``, and the parallel strategy and ``compile`` it supports. ``train`` (also
``alignkit.train``) runs the same checks (a config built in Python need not come from ``load_config``), checks
every local model path, takes the lock on ``output_dir`` and runs the recipe.

The recipes (one module each, registered in :mod:`alignkit.recipes.base` when :mod:`alignkit.recipes` imports
them):

- ``sft``: next-token NLL on response tokens (:mod:`alignkit.recipes.sft`).
- ``preference``: any loss from the registry (``loss: dpo``, ``kto``, ``plackett_luce``, ``d2o`` ...) on the data
  kind it needs (:mod:`alignkit.recipes.preference`).
- ``reward``: a reward model (scalar heads on the backbone; ``reward.*`` options), :mod:`alignkit.recipes.reward`.
- ``online``: sample from the policy, label with a reward source, update (online DPO, Nash-MD, XPO, SPPO, RAFT ...),
  :mod:`alignkit.recipes.online`.
- ``rl``: policy-gradient RLHF (PPO, RLOO, GRPO, REINFORCE), :mod:`alignkit.recipes.rl`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from alignkit.config import ConfigError, TrainConfig, changed_settings, read_config, to_dict
from alignkit.engine.checkpoint import LOOP_OUTPUTS, find_resume_checkpoint, remove_orphans
from alignkit.engine.logs import check_report_to
from alignkit.engine.loop import TrainResult, read_rows
from alignkit.engine.rerun import check_resume, finished_run, move_earlier_run
from alignkit.engine.parallel import requested
from alignkit.models.loading import check_model_paths
from alignkit.recipes.base import RECIPES, Recipe, get_recipe
from alignkit.utils.io import exclusive_lock, launch_rank


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **values: Any) -> TrainConfig:
    """Build a :class:`~alignkit.config.TrainConfig` from a YAML file, keyword values and ``key=value`` overrides,
    and check it against its recipe (see :func:`check_config`)."""
    config = read_config(path, overrides, **values)
    check_config(config)
    return config


def check_config(config: TrainConfig) -> Recipe:
    """The recipe's rules, before any data or model loads: it exists, no setting only other recipes read is set,
    its own checks, and the parallel strategy and compile setting it supports."""
    try:
        recipe = get_recipe(config.recipe)
    except KeyError as exc:
        raise ConfigError(f"recipe: {exc.args[0]}") from None
    recipe.check(config)
    check_report_to(config.report_to)
    check_unused(config, recipe)
    check_parallel_support(config, recipe)
    check_compile_support(config, recipe)
    return recipe


def check_unused(config: TrainConfig, recipe: Recipe) -> None:
    """A setting some recipe reads but this one does not, set to something other than its default, is an error
    naming both."""
    for key in changed_settings(config):
        users = [r.name for r in RECIPES.values() if r.reads_setting(key)]
        if users and not recipe.reads_setting(key):
            who = f"recipes {', '.join(users[:-1])} and {users[-1]} do" if len(users) > 1 else \
                f"recipe {users[0]} does"
            raise ConfigError(f"{key}: recipe {config.recipe} does not use this setting (only {who}); remove it "
                              "or change recipe")


def check_parallel_support(config: TrainConfig, recipe: Recipe) -> None:
    """distributed=fsdp and distributed=deepspeed (also when an Accelerate config file asks for them) cover the
    recipes that declare them, on full weights (a recipe's own check refuses what else it cannot shard).
    DeepSpeed also needs a ZeRO stage of 1-3, no offloading or DeepSpeed config file of its own (alignkit builds
    the DeepSpeed config) and, under ZeRO-3 (where every module call is a collective), the same number of forward
    calls on every process, which ``rows_per_forward`` does not guarantee."""
    kind, stage = requested(config.distributed, config.zero_stage)
    if kind == "ddp":
        return
    if config.lora.enabled:
        raise ConfigError(f"distributed={kind} does not support LoRA (lora.enabled) yet; use distributed=ddp")
    if kind not in recipe.distributed:
        raise ConfigError(f"distributed={kind} does not support recipe: {config.recipe} yet (it supports "
                          f"{', '.join(recipe.distributed)}); use distributed=ddp")
    if kind != "deepspeed":
        return
    if stage not in (1, 2, 3):
        raise ConfigError(f"zero_stage must be 1, 2 or 3, not {stage}")
    if stage == 3 and config.rows_per_forward:
        raise ConfigError("distributed=deepspeed with zero_stage=3 does not support rows_per_forward (processes "
                          "could make different numbers of forward calls, each a collective); unset rows_per_forward "
                          "or use zero_stage=2")
    offload = {name: os.environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{name}_DEVICE", "none").lower()
               for name in ("OPTIMIZER", "PARAM")}
    if any(device != "none" for device in offload.values()):
        raise ConfigError("DeepSpeed offloading (offload_optimizer_device / offload_param_device in the Accelerate "
                          "config) is not supported; set them to none")
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none") != "none":
        raise ConfigError("a DeepSpeed config file (deepspeed_config_file in the Accelerate config) is not read: "
                          "alignkit builds the DeepSpeed config from its own; remove it and set "
                          "deepspeed_config.zero_stage")


def check_compile_support(config: TrainConfig, recipe: Recipe) -> None:
    """compile=true covers the recipes that declare it, with replicated weights (also when an Accelerate config
    file asks for FSDP or DeepSpeed, it is refused)."""
    kind, _ = requested(config.distributed, config.zero_stage)
    if config.compile and (not recipe.compiles or kind != "ddp"):
        which = " and ".join(r.name for r in RECIPES.values() if r.compiles)
        raise ConfigError(f"compile=true covers the {which} recipes with distributed=ddp, not recipe="
                          f"{config.recipe} with distributed={kind}; set compile=false")


def train(config: TrainConfig, on_step: Callable[[int, torch.nn.Module], None] | None = None,
          on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Run the recipe in ``config``: check it, load data and models, build the objective, train, save.

    The main process holds an exclusive lock on ``output_dir`` for the whole run (a second run there fails at once,
    naming the holder) and first removes what a killed save left there. ``on_step(step, model)`` is called after
    every optimizer step (e.g. for custom evaluation); ``on_log(row)`` with every row of metrics the run logs
    (``{"step": 20, "loss": ..., "lr": ..., "eval/loss": ...}``, as in metrics.jsonl), on the main process."""
    recipe = check_config(config)
    check_model_paths(config, recipe.model_paths(config))  # a wrong path is named (by its key) before anything loads
    with output_dir_claimed(config.output_dir):
        finished = check_earlier_run(config, recipe)
        if finished is not None:
            return finished
        return recipe.run(config, on_step, on_log)


def check_earlier_run(config: TrainConfig, recipe: Recipe) -> TrainResult | None:
    """An earlier run in ``output_dir`` (see :mod:`alignkit.engine.rerun`): refuse to resume it with other
    training settings; return its result when it is already finished; with ``resume=never`` move it aside."""
    main = launch_rank() == 0
    if config.resume == "never":
        moved = move_earlier_run(config.output_dir, recipe.outputs) if main else None
        if moved is not None:
            print(f"[alignkit] resume=never: the earlier run in {config.output_dir} was moved to {moved}")
        return None
    checkpoint = find_resume_checkpoint(config.output_dir, config.resume, quiet=True)
    if checkpoint is None:
        return None
    settings = json.loads(json.dumps(to_dict(config)))  # as config.json has it (lists, not tuples)
    others_only = lambda key: not recipe.reads_setting(key) and any(r.reads_setting(key) for r in RECIPES.values())  # noqa: E731
    check_resume(settings, checkpoint, relevant=lambda key: not others_only(key))
    summary = finished_run(settings, checkpoint)
    if summary is None:
        return None
    output_dir = Path(config.output_dir)
    if main:
        print(f"[alignkit] run in {output_dir} already finished at step {summary['steps']}; nothing to do "
              "(resume=never to train again)")
    metrics = read_rows(output_dir / "metrics.jsonl") if (output_dir / "metrics.jsonl").exists() else []
    return TrainResult(output_dir, output_dir / "model", summary["steps"], metrics, 0.0, summary.get("eval", {}),
                       [str(output_dir / "metrics.jsonl")], start=summary["steps"])


@contextlib.contextmanager
def output_dir_claimed(output_dir: str) -> Iterator[None]:
    """Main process (launch rank 0): lock ``output_dir`` for the ``with`` block and clean up orphaned temporary
    files in it. Other processes write there only after the main process has started (collectives order them)."""
    if launch_rank() != 0:
        yield
        return
    with exclusive_lock(output_dir):  # any recipe may have written there before: all recipes' outputs
        remove_orphans(output_dir, LOOP_OUTPUTS + tuple(f for r in RECIPES.values() for f in r.outputs))
        yield
