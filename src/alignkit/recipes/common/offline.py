"""The run of an offline recipe (sft, preference): data from a file, a policy, an objective, the loop."""

from __future__ import annotations

from typing import Any, Callable

import torch

from alignkit.config import TrainConfig
from alignkit.data.records import DataReport, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.engine.checkpoint import find_resume_checkpoint
from alignkit.engine.loop import Evaluate, OnLog, TrainResult, make_accelerator, train_loop
from alignkit.models.compiled import compile_decoder_layers
from alignkit.models.loading import load_tokenizer
from alignkit.recipes.common.data import ShapeRules, load_training_records
from alignkit.recipes.common.models import load_policy
from alignkit.recipes.common.token_batches import TokenBatches

# (config, tokenizer, records, report, accelerator, policy) -> (objective, tokenized dataset, held-out evaluation
# of data.eval_path or None: see recipes.common.heldout)
ObjectiveBuilder = Callable[[TrainConfig, Any, list[PreferenceRecord], DataReport, Any, torch.nn.Module],
                            tuple[Any, list[TokenizedRecord], Evaluate | None]]


def run_offline(config: TrainConfig, on_step: Callable[[int, torch.nn.Module], None] | None, shape: ShapeRules,
                build_objective: ObjectiveBuilder, name: str, on_log: OnLog | None = None) -> TrainResult:
    """Load the records (``shape``: the recipe's data rules), the tokenizer and the policy (from the checkpoint
    when resuming), build the recipe's objective (``name``: for the progress bar) and train it with the one loop."""
    accelerator = make_accelerator()
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.path, config.model.trust_remote_code)
    records, report = load_training_records(config, shape)
    resume = find_resume_checkpoint(config.output_dir, config.resume)
    policy = load_policy(config, resume, accelerator.device)
    if config.compile:
        compile_decoder_layers(policy)
    objective, dataset, evaluate = build_objective(config, tokenizer, records, report, accelerator, policy)
    if accelerator.is_main_process:  # progress=false hides the bar, never the data summary
        print(f"[alignkit] data {config.data.path}: {report.summary()}; {len(dataset)} records train")
    return train_loop(config, model=policy, processor=tokenizer, dataset=dataset,
                      objective=TokenBatches(objective, tokenizer.pad_token_id, name),
                      accelerator=accelerator, resume_from=resume, summary={"data": report.as_dict()},
                      on_step=on_step, on_log=on_log, evaluate=evaluate)
