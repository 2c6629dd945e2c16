"""DeepSpeed ZeRO (``distributed: deepspeed``, ``zero_stage: 1 | 2 | 3``): the training state partitioned over the
processes by DeepSpeed.

ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models") removes the
redundancy of data parallelism, where every process holds the whole training state. Each of N processes keeps only
its 1/N share of:

- stage 1: the optimizer state (AdamW's moments and the fp32 master weights);
- stage 2: that, plus the gradients (reduced straight into the share of the process that updates them);
- stage 3: that, plus the parameters themselves, all-gathered module by module while the module runs (forward and
  backward) and partitioned again right after. alignkit partitions every parameter
  (``stage3_param_persistence_threshold: 0``; DeepSpeed's default keeps those under 100k elements whole everywhere).

How alignkit's one training loop maps onto it (every stage equals one process on the same global batch, tested with
2 CPU processes over gloo):

- The engine is built around alignkit's own AdamW (same hyperparameters) with ``gradient_accumulation_steps: 1`` and
  ``managed_gradient_accumulation: false``: every ``engine.step()`` is one optimizer step, however many micro-batches
  came before it.
- Each micro-batch's loss is already divided by the step's global normaliser (all processes, all micro-batches), so
  the gradients must be *summed* over processes. DeepSpeed averages them over the data-parallel processes
  (``gradient_allreduce_op: sum`` exists for stages 1-2 but is refused under ZeRO-3), so :meth:`ZeroRedundancy.backward`
  multiplies the loss by the number of processes, and calls ``engine.backward(loss, scale_wrt_gas=False)``, which
  skips DeepSpeed's 1/accumulation-steps scaling.
- Clipping is DeepSpeed's (``gradient_clipping: optim.max_grad_norm``): the global norm over every process's share,
  the same rule as ``torch.nn.utils.clip_grad_norm_``; the logged ``grad_norm`` is that norm.
- alignkit's scheduler keeps driving the learning rate: ZeRO's optimizer steps the AdamW it wraps, whose param-group
  dicts (holding ``lr``) the scheduler writes.
- The loop calls the model through the engine (:class:`EngineScorer`), so DeepSpeed's forward and backward hooks run.
  Under ZeRO-3 each module call all-gathers that module's parameters, a collective, so every process must make the
  same calls: :class:`SyncedScorer` applies the LM head in as many chunks on every process (``rows_per_forward``,
  which can vary the number of forward calls, is refused).
- Checkpoints and the final model are whole ``save_pretrained`` files (ZeRO-3 gathers one module at a time). The
  optimizer state stays partitioned: every process writes its own shard into the checkpoint (see
  :mod:`alignkit.engine.checkpoint`), so resuming needs the same number of processes and ZeRO stage (checked).

Limits: ZeRO keeps fp32 master weights and optimizer state whatever the parameters' dtype, so a float64 model matches
a float64 single process to float32 precision (weights about 5e-7 apart after 4 steps), and a bfloat16 model trains
with fp32 masters (``bf16`` enabled) unlike ``ddp``; float16 is refused (DeepSpeed would add loss scaling and skip
steps). Under ZeRO-3, ``on_step`` callbacks get the model with its parameters partitioned. On CPU alignkit stops
DeepSpeed from compiling its shared-memory inference all-reduce op at start-up (:func:`skip_shared_memory_op`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator

from alignkit.models.scoring import ResponseScorer, plain_linear_head, token_logps
from alignkit.engine.replicated import Replicated, without_tied_head

SHARDED_FORMAT = "deepspeed-zero"  # optimizer.pt of a ZeRO checkpoint: metadata; the state is in per-process shards


class SyncedScorer(ResponseScorer):
    """A :class:`ResponseScorer` that applies the LM head in the same number of chunks on every process (padding with
    empty chunks), as ZeRO-3 needs: each head call all-gathers the head's parameters."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, predictors: torch.Tensor,
                targets: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        head = plain_linear_head(self.model)
        if head is None or not hasattr(self.model, "get_decoder"):  # one full forward: the same calls everywhere
            return super().forward(input_ids, attention_mask, predictors, targets, position_ids)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        states = self.model.get_decoder()(**inputs).last_hidden_state
        selected = states.reshape(-1, states.shape[-1])[predictors]
        step = self.chunk_size
        chunks = torch.tensor(max(1, math.ceil(selected.shape[0] / step)), device=selected.device)
        torch.distributed.all_reduce(chunks, op=torch.distributed.ReduceOp.MAX)
        return torch.cat([token_logps(head(selected[i * step: (i + 1) * step]), targets[i * step: (i + 1) * step])
                          for i in range(int(chunks))])


class EngineScorer(ResponseScorer):
    """What the loop and the objectives call: a scorer around the language model whose forward runs through the
    DeepSpeed engine (whose own module is another scorer around the same model), so that DeepSpeed's forward and
    backward hooks run. ``language_model(scorer)`` is the model, as for FSDP."""

    engine: Any = None  # set by ZeroRedundancy.attach; kept out of the module tree
    collective_forward = True  # processes take the same packing path (packing.every_process): under ZeRO-3 every
    # module call is a collective

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.engine is None:
            raise RuntimeError("the DeepSpeed engine is built by ZeroRedundancy.attach, after the optimizer")
        self.engine.module.chunk_size = self.chunk_size
        return self.engine(*args, **kwargs)


def skip_shared_memory_op() -> None:
    """On CPU, DeepSpeed's communication backend JIT-compiles a shared-memory all-reduce kernel when it starts (two to
    three minutes in every new installation) that only its inference all-reduce uses; ZeRO training reduces through
    torch.distributed. Skip building it (deepspeed 0.19.8: ``deepspeed.comm.torch.build_shm_op``; where it returns
    None, as on platforms without the kernel, the backend falls back to torch.distributed)."""
    import importlib

    from deepspeed.accelerator import get_accelerator

    # not `import deepspeed.comm.torch as ...`: that name resolves to the torch package (deepspeed.comm re-exports it)
    ds_comm = importlib.import_module("deepspeed.comm.torch")

    if get_accelerator().device_name() == "cpu" and hasattr(ds_comm, "build_shm_op"):
        ds_comm.build_shm_op = lambda: None


class ZeroRedundancy(Replicated):
    """``distributed: deepspeed``: DeepSpeed ZeRO stage 1, 2 or 3 (see the module docstring)."""

    name = "deepspeed"

    def __init__(self, accelerator: Accelerator, stage: int):
        super().__init__(accelerator)
        self.stage = stage  # 1, 2 or 3: checked with the config (recipes.check_parallel_support)
        self.name = f"deepspeed-zero{stage}"
        self.engine: Any = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return EngineScorer(model)

    def deepspeed_config(self, max_grad_norm: float | None, dtype: torch.dtype) -> dict[str, Any]:
        zero: dict[str, Any] = {"stage": self.stage, "elastic_checkpoint": False}
        if self.stage == 3:
            zero["stage3_param_persistence_threshold"] = 0  # partition every parameter
        return {
            "train_micro_batch_size_per_gpu": 1,  # alignkit feeds the batches; only the step boundary matters
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,  # every engine.step() is an optimizer step
            "zero_optimization": zero,
            "gradient_clipping": float(max_grad_norm or 0.0),
            "bf16": {"enabled": dtype == torch.bfloat16},
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }

    def attach(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> None:
        """Build the engine around the model and alignkit's optimizer (collective)."""
        import deepspeed
        from deepspeed.utils import logger as ds_logger

        from alignkit.config import ConfigError

        assert isinstance(model, EngineScorer), "attach() takes the model returned by wrap()"
        ds_logger.setLevel(logging.WARNING)
        lm = model.model
        dtype = next(lm.parameters()).dtype
        if dtype == torch.float16:
            raise ConfigError("distributed=deepspeed does not support float16 parameters (DeepSpeed would add loss "
                              "scaling and skip steps); use model.dtype bfloat16 or float32")
        owned = {id(p) for p in lm.parameters()}
        if any(id(p) not in owned for group in optimizer.param_groups for p in group["params"]):
            raise ConfigError("distributed=deepspeed trains the model's own parameters only (this objective has "
                              "trainable parameters of its own); use distributed=ddp")
        inner = SyncedScorer(lm) if self.stage == 3 else ResponseScorer(lm)
        skip_shared_memory_op()
        engine, *_ = deepspeed.initialize(model=inner, optimizer=optimizer,
                                          config=self.deepspeed_config(max_grad_norm, dtype))
        self.engine = engine
        model.__dict__["engine"] = engine  # a plain attribute, not a registered submodule

    def backward(self, loss: torch.Tensor) -> None:
        """``loss`` is already divided by the global normaliser: DeepSpeed's mean over processes becomes a sum, and
        no 1/accumulation factor is applied."""
        self.engine.backward(loss * self.accelerator.num_processes, scale_wrt_gas=False)

    def step(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
             max_grad_norm: float | None) -> torch.Tensor | None:
        """Reduce the gradients, clip them to the global norm, update (DeepSpeed zeroes the gradients)."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.as_tensor(float(norm), dtype=torch.float64) if max_grad_norm is not None and norm is not None \
            else None

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Stages 1 and 2 keep whole parameters on every process (None: save_pretrained reads them). Stage 3: the
        full weights on CPU, gathered one module at a time (collective; every process must call it)."""
        if self.stage < 3:
            return None
        import deepspeed

        lm = model.model
        full: dict[int, torch.Tensor] = {}
        for module in lm.modules():
            params = [p for p in module.parameters(recurse=False) if id(p) not in full]
            if not params:
                continue
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                for p in params:  # only the main process writes files
                    full[id(p)] = p.detach().to("cpu", copy=True) if self.accelerator.is_main_process \
                        else p.new_empty(0)
        state = {}
        for key, value in lm.state_dict(keep_vars=True).items():
            state[key] = full[id(value)] if id(value) in full else value.detach().cpu()
        return without_tied_head(lm, state)

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What the main process saves as optimizer.pt: the layout the shards were written with."""
        return {"format": SHARDED_FORMAT, "zero_stage": self.stage, "num_processes": self.accelerator.num_processes}

    def optimizer_shard(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """This process's partition of the optimizer state (fp32 master weights and AdamW moments)."""
        return self.engine.optimizer.state_dict()

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any], shard: Path | None = None) -> None:
        """Load this process's shard into the engine's optimizer (fp32 master weights included), after checking that
        the checkpoint was partitioned as this run is."""
        from alignkit.config import ConfigError

        if state.get("format") != SHARDED_FORMAT:
            raise ConfigError("this checkpoint was not written under distributed=deepspeed (its optimizer state is "
                              "whole); resume it with the distributed mode it was trained with, or start afresh "
                              "(resume=never)")
        saved = (state["num_processes"], state["zero_stage"])
        if saved != (self.accelerator.num_processes, self.stage):
            raise ConfigError(f"this checkpoint's optimizer state is partitioned over {saved[0]} processes by ZeRO "
                              f"stage {saved[1]}; resume with --num-processes {saved[0]} and zero_stage={saved[1]} "
                              f"(now {self.accelerator.num_processes} processes, zero_stage={self.stage})")
        if shard is None:
            raise ConfigError("this checkpoint lacks this process's optimizer shard")
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):  # DeepSpeed's own
            own = torch.load(shard, weights_only=True)
        shards: list[Any] = [None] * self.accelerator.num_processes
        shards[self.accelerator.process_index] = own
        self.engine.optimizer.load_state_dict(shards, load_optimizer_states=True, load_from_fp32_weights=True)
