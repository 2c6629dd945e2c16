"""How the model is spread over processes: replicated (data parallel), fully sharded (FSDP) or DeepSpeed ZeRO.

- ``ddp`` (default): every process holds the whole model; after the backward passes of a step the gradients are
  summed over processes in one flat all-reduce. The model is not wrapped in ``DistributedDataParallel``, so the
  log-prob path may call the decoder and the LM head separately.
- ``fsdp``: PyTorch's ``fully_shard`` (FSDP2) on every decoder layer and on a
  :class:`~alignkit.models.scoring.ResponseScorer` around the whole model, so parameters, gradients and optimizer
  state are sharded and each layer is gathered only while it runs. Gradients are reduce-scattered as sums (the
  loss is already divided by the global normaliser). Checkpoints and the final model are gathered into full,
  ordinary ``save_pretrained`` files, so resuming and loading need no FSDP.
- ``deepspeed``: DeepSpeed ZeRO stage 1, 2 or 3 (``zero_stage``), see :mod:`alignkit.engine.deepspeed`.

Every mode equals a single process on the same global batch (tested with 2 CPU processes over gloo). The loop
talks to all of them through the same few calls: ``wrap`` the model, ``attach`` the optimizer, ``backward`` each
micro-batch's loss, ``step`` (reduce, clip, update, zero the gradients), and the checkpoint state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator

from alignkit.engine.deepspeed import ZeroRedundancy
from alignkit.engine.replicated import Replicated, check_whole, without_tied_head
from alignkit.models.scoring import ResponseScorer


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
        return without_tied_head(lm, state)

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any], shard: Path | None = None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        check_whole(state)
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def launched_with(kind: str) -> bool:
    """Whether ``accelerate launch`` was given a config file with ``distributed_type: <kind>`` (FSDP, DEEPSPEED).
    On CPU Accelerate reports MULTI_CPU, but the launcher's environment still says."""
    return os.environ.get(f"ACCELERATE_USE_{kind}", "").lower() in ("1", "true")


def requested(kind: str, zero_stage: int = 2) -> tuple[str, int]:
    """The distributed mode and ZeRO stage in effect: the config's, unless the Accelerate launcher asks for FSDP or
    DeepSpeed (then its ``deepspeed_config.zero_stage`` too, exported as ACCELERATE_DEEPSPEED_ZERO_STAGE)."""
    if launched_with("DEEPSPEED"):
        return "deepspeed", int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or zero_stage)
    if launched_with("FSDP"):
        return "fsdp", zero_stage
    return kind, zero_stage


def make_parallel(kind: str, accelerator: Accelerator, zero_stage: int = 2) -> Replicated:
    """``kind`` (and ``zero_stage``) from the config, or what an Accelerate config file asks for (see
    :func:`requested`). One process is plainly replicated whatever the mode."""
    from accelerate.utils import DistributedType

    kind, zero_stage = requested(kind, zero_stage)
    if accelerator.num_processes == 1:
        return Replicated(accelerator)
    if kind == "deepspeed" or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return ZeroRedundancy(accelerator, zero_stage)
    if kind == "fsdp" or accelerator.distributed_type == DistributedType.FSDP:
        return FullyShard(accelerator)
    return Replicated(accelerator)
