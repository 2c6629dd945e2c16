"""LoRA through PEFT: the policy trains low-rank adapters; the reference is the same model with its adapter
disabled, so no second copy of the weights is held."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file

ADAPTER_FILE = "adapter_model.safetensors"


def add_lora(model: torch.nn.Module, r: int, alpha: float, dropout: float,
             target_modules: list[str] | str | None) -> PeftModel:
    config = PeftLoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                            task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def load_adapter_weights(model: PeftModel, directory: Path) -> None:
    """Restore adapter weights saved by ``save_pretrained`` (e.g. from a checkpoint)."""
    set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_FILE)))


def is_lora(model: Any) -> bool:
    return isinstance(model, PeftModel)


def reference_context(model: Any) -> Callable[[], ContextManager]:
    """A context in which ``model`` computes the reference policy: adapter disabled for LoRA policies."""
    if is_lora(model):
        return model.disable_adapter
    return contextlib.nullcontext


def save_policy(model: Any, directory: Path, merge: bool) -> None:
    """Save a LoRA policy merged into a plain model (loadable with from_pretrained), plus its adapter alone."""
    model.save_pretrained(directory / "adapter", safe_serialization=True)
    if merge:
        model.merge_and_unload().save_pretrained(directory, safe_serialization=True)
