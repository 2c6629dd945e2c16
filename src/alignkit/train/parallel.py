"""How the model is spread over processes: replicated (data parallel) or fully sharded (FSDP).

- ``ddp`` (default): every process holds the whole model; after the backward passes of a step the gradients are
  summed over processes in one flat all-reduce. The model is not wrapped in ``DistributedDataParallel``, so the
  log-prob path may call the decoder and the LM head separately.
- ``fsdp``: PyTorch's ``fully_shard`` (FSDP2) on every decoder layer and on a
  :class:`~alignkit.models.scoring.ResponseScorer` around the whole model, so parameters, gradients and optimizer
  state are sharded and each layer is gathered only while it runs. Gradients are reduce-scattered as sums (the
  loss is already divided by the global normaliser). Checkpoints and the final model are gathered into full,
  ordinary ``save_pretrained`` files, so resuming and loading need no FSDP.

Either way the numbers equal a single process on the same global batch (tested with 2 CPU processes over gloo).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from accelerate import Accelerator

from alignkit.models.scoring import ResponseScorer


class Replicated:
    name = "ddp"

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

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
        return optimizer.state_dict()

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


class FullyShard(Replicated):
    name = "fsdp"

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        scorer = ResponseScorer(model)
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        for layer in getattr(decoder, "layers", []):
            fully_shard(layer)
        fully_shard(scorer)
        for module in scorer.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)  # sum, not mean, over processes
        return scorer

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        return None  # FSDP reduce-scatters in backward

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) weights on CPU, keyed as the wrapped model's own state dict. Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        state = {key.removeprefix("model."): value for key, value in state.items()}
        lm = model.model
        if getattr(lm.config, "tie_word_embeddings", False) and hasattr(lm, "get_output_embeddings"):
            head = lm.get_output_embeddings()  # tied to the input embeddings: saved once, as save_pretrained does
            state.pop(next(f"{name}.weight" for name, module in lm.named_modules() if module is head), None)
        return state

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def make_parallel(kind: str, accelerator: Accelerator) -> Replicated:
    """``kind`` from the config; an Accelerate config file that asks for FSDP (``accelerate launch --config_file``)
    selects it too. DeepSpeed is refused rather than silently ignored."""
    from accelerate.utils import DistributedType

    from alignkit.config import ConfigError

    def asked(kind_: DistributedType) -> bool:  # on CPU Accelerate reports MULTI_CPU; the launcher's env still says
        return accelerator.distributed_type == kind_ or os.environ.get(f"ACCELERATE_USE_{kind_.value}", "").lower() \
            in ("1", "true")

    if asked(DistributedType.DEEPSPEED):
        raise ConfigError("DeepSpeed is not supported yet: alignkit shards with PyTorch FSDP instead "
                          "(distributed=fsdp, or an Accelerate config with distributed_type: FSDP)")
    fsdp = kind == "fsdp" or asked(DistributedType.FSDP)
    if fsdp and accelerator.num_processes > 1:
        return FullyShard(accelerator)
    return Replicated(accelerator)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. FSDP's gradient norm); plain tensors unchanged."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
