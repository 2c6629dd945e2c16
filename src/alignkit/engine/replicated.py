"""The replicated strategy (data parallel, ``distributed: ddp``), the base every parallel strategy extends, and
the helpers they share. See :mod:`alignkit.engine.parallel` for the choice between strategies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator


class Replicated:
    name = "ddp"

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def attach(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> None:
        """Called once the optimizer exists (DeepSpeed builds its engine here)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's loss (already divided by the step's global normaliser)."""
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
             max_grad_norm: float | None) -> torch.Tensor | None:
        """Sum the gradients over processes, clip them to ``max_grad_norm`` (global norm), update the parameters and
        zero the gradients; return the norm before clipping (None without clipping)."""
        self.reduce_gradients(params)
        grad_norm = None
        if max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every gradient over the processes in one flat buffer (each process's loss is already divided by
        the global normaliser, so the sum is the gradient of the global batch)."""
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        return None  # save_pretrained reads the (whole) model itself

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state the main process saves (whole). Collective for FSDP."""
        return optimizer.state_dict()

    def optimizer_shard(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """This process's own part of the optimizer state, saved by every process (None: the state is whole)."""
        return None

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any], shard: Path | None = None) -> None:
        check_whole(state)
        optimizer.load_state_dict(state)


def without_tied_head(lm: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (full weights gathered from shards) without the LM head's weight when it is tied to the input
    embeddings: saved once, as ``save_pretrained`` does."""
    if getattr(lm.config, "tie_word_embeddings", False) and hasattr(lm, "get_output_embeddings"):
        head = lm.get_output_embeddings()
        state.pop(next(f"{name}.weight" for name, module in lm.named_modules() if module is head), None)
    return state


def check_whole(state: dict[str, Any]) -> None:
    """Refuse a DeepSpeed checkpoint's (partitioned) optimizer state where a whole one is needed."""
    if state.get("format") == "deepspeed-zero":
        from alignkit.config import ConfigError

        raise ConfigError(f"this checkpoint's optimizer state is partitioned by DeepSpeed ZeRO stage "
                          f"{state['zero_stage']} over {state['num_processes']} processes; resume it with "
                          f"distributed=deepspeed zero_stage={state['zero_stage']} and --num-processes "
                          f"{state['num_processes']}")


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. FSDP's gradient norm); plain tensors unchanged."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
