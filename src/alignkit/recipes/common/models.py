"""Loading the policy and the reference the way every recipe does."""

from __future__ import annotations

from pathlib import Path

import torch

from alignkit.config import ConfigError, TrainConfig
from alignkit.models.loading import frozen_copy, load_causal_lm
from alignkit.models.lora import add_lora, load_adapter_weights


def enable_gradient_checkpointing(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """With ``gradient_checkpointing`` (TRL's TrainingArguments name), have transformers recompute each decoder
    layer's activations in the backward pass instead of keeping them: less memory for about one more forward.

    Non-reentrant checkpointing (``use_reentrant=False``, as TRL and transformers default to): its gradients equal
    the plain run's, and it needs no input that requires grad, so it works on a LoRA base whose embeddings are
    frozen (reentrant checkpointing would need ``enable_input_require_grads``; transformers and PEFT call it anyway,
    which costs nothing here). Only active in train mode: evaluation and sampling (``model.eval()``) keep the KV
    cache. Applied to the base model before any adapter is added. A model whose architecture does not support it is
    a :class:`ConfigError` naming the model."""
    if not config.gradient_checkpointing:
        return model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"gradient_checkpointing: the model {config.model.path} ({type(model).__name__}) does not "
                          "support gradient checkpointing; set gradient_checkpointing=false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def load_policy(config: TrainConfig, resume: Path | None, device: torch.device) -> torch.nn.Module:
    """The policy to train: from the checkpoint when resuming, with LoRA adapters when configured, with gradient
    checkpointing when configured (:func:`enable_gradient_checkpointing`)."""
    lora = config.lora
    if not lora.enabled:
        return enable_gradient_checkpointing(
            load_causal_lm(str(resume / "model") if resume else config.model.path, config.model.dtype,
                           config.model.trust_remote_code, device), config)
    base = enable_gradient_checkpointing(
        load_causal_lm(config.model.path, config.model.dtype, config.model.trust_remote_code, device), config)
    torch.manual_seed(config.seed)  # the adapters' random initialisation
    policy = add_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    if resume:
        load_adapter_weights(policy, resume / "model")
    return policy


def load_reference(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """A frozen copy of ``reference.path``, or of the initial policy (``model.path``)."""
    path = config.reference.path or config.model.path
    return frozen_copy(load_causal_lm(path, config.model.dtype, config.model.trust_remote_code, device))
