"""Loading the policy and the reference the way every recipe does."""

from __future__ import annotations

from pathlib import Path

import torch

from alignkit.config import TrainConfig
from alignkit.models.loading import frozen_copy, load_causal_lm
from alignkit.models.lora import add_lora, load_adapter_weights


def load_policy(config: TrainConfig, resume: Path | None, device: torch.device) -> torch.nn.Module:
    """The policy to train: from the checkpoint when resuming, with LoRA adapters when configured."""
    lora = config.lora
    if not lora.enabled:
        return load_causal_lm(str(resume / "model") if resume else config.model.path, config.model.dtype,
                              config.model.trust_remote_code, device)
    base = load_causal_lm(config.model.path, config.model.dtype, config.model.trust_remote_code, device)
    torch.manual_seed(config.seed)  # the adapters' random initialisation
    policy = add_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    if resume:
        load_adapter_weights(policy, resume / "model")
    return policy


def load_reference(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """A frozen copy of ``reference.path``, or of the initial policy (``model.path``)."""
    path = config.reference.path or config.model.path
    return frozen_copy(load_causal_lm(path, config.model.dtype, config.model.trust_remote_code, device))
