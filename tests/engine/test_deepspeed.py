"""DeepSpeed ZeRO (distributed: deepspeed, zero_stage 1/2/3): 2 CPU processes over gloo give the weights, losses and
gradient norms of 1 process with the same global batch; checkpoints are whole save_pretrained files plus one
optimizer shard per process, moved in atomically; a resumed run ends where a straight one does; what is not covered
is refused."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from shared.runs import assert_same_weights, run_train

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                 reason="needs alignkit[deepspeed] (installed by make dev)")]

TWO = ("--num-processes", "2", "batch_size=4", "distributed=deepspeed")


def dpo_config(tiny_world: Path, tiny_pairs: Path) -> dict:
    """4 steps of DPO in float64 with a linear decay (so a learning rate the engine ignored would show) and clipping
    at 1.0 (active: the first gradient norms are about 2-3), checkpoints at steps 2 and 4."""
    return {"recipe": "preference", "loss": "dpo", "model": {"path": str(tiny_world / "base"), "dtype": "float64"},
            "data": {"path": str(tiny_pairs), "max_length": 128, "max_prompt_length": 32},
            "optim": {"lr": 1e-3, "schedule": "linear", "warmup_ratio": 0.0, "max_grad_norm": 1.0},
            "max_steps": 4, "save_steps": 2, "log_steps": 1, "progress": False}


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(expected: Path, got: Path) -> None:
    """Weights to 1e-5, losses to 1e-8, gradient norms (before clipping) to 1e-6 relative, learning rates exactly.
    ZeRO's fp32 master weights round the float64 model to float32 after every step, hence not float64 precision."""
    assert_same_weights(expected / "model", got / "model", atol=1e-5)
    a, b = rows(expected), rows(got)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-8)
    assert [r["grad_norm"] for r in a] == pytest.approx([r["grad_norm"] for r in b], rel=1e-6)
    assert [r["lr"] for r in a] == [r["lr"] for r in b]


@pytest.fixture(scope="module")
def one_process(tiny_world, tiny_pairs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deepspeed") / "one"
    run_train(dpo_config(tiny_world, tiny_pairs), out, "--num-processes", "1", "batch_size=8")
    return out


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_matches_one_process_and_resumes_exactly(tiny_world, tiny_pairs, tmp_path, one_process, stage):
    """Stages 1-3 on 2 processes equal 1 process; stage 3 also resumes exactly (stages 1 and 2 checkpoint and
    reload their optimizer shards through the same path; one resume keeps the suite short)."""
    config = dpo_config(tiny_world, tiny_pairs)
    straight = tmp_path / "straight"
    run_train(config, straight, *TWO, f"zero_stage={stage}")
    summary = json.loads((straight / "summary.json").read_text())
    assert (summary["processes"], summary["parallel"]) == (2, f"deepspeed-zero{stage}")
    assert_same_run(one_process, straight)

    # The checkpoint: whole weights (ZeRO-3 gathers them), one optimizer shard per process, no staging left behind.
    last = straight / "checkpoints" / "step-0000004"
    assert_same_weights(straight / "model", last / "model", atol=0)
    assert sorted(p.name for p in (last / "optimizer").iterdir()) == ["rank-00000.pt", "rank-00001.pt"]
    assert torch.load(last / "optimizer.pt", weights_only=True) == {"format": "deepspeed-zero", "zero_stage": stage,
                                                                    "num_processes": 2}
    assert not [p.name for p in (straight / "checkpoints").iterdir() if p.name.startswith(".")]
    if stage != 3:
        return

    # As if the run had died after step 3: resume from the step-2 checkpoint; it must end where the straight run did.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000004")
    shutil.rmtree(resumed / "model")
    run_train(config, resumed, *TWO, f"zero_stage={stage}", "resume=auto")
    assert json.loads((resumed / "summary.json").read_text())["resumed_from"].endswith("step-0000002")
    assert_same_weights(straight / "model", resumed / "model", atol=1e-12)
    assert [r["loss"] for r in rows(resumed)] == pytest.approx([r["loss"] for r in rows(straight)], abs=1e-12)


def test_the_example_configs_differ_only_in_the_stage():
    folder = Path(__file__).parents[2] / "examples" / "accelerate"
    zero2, zero3 = (yaml.safe_load((folder / f"deepspeed-zero{s}.yaml").read_text()) for s in (2, 3))
    assert (zero2["distributed_type"], zero2["deepspeed_config"]["zero_stage"], zero3["deepspeed_config"]["zero_stage"]
            ) == ("DEEPSPEED", 2, 3)
    zero2["deepspeed_config"].pop("zero_stage"), zero3["deepspeed_config"].pop("zero_stage")
    assert zero2 == zero3


@pytest.mark.parametrize("stage", [3])  # launching deepspeed-zero2.yaml too would add a minute; it differs in the stage
def test_accelerate_launch_with_the_example_configs(tiny_world, tiny_pairs, tmp_path, one_process, stage):
    """`accelerate launch --config_file examples/accelerate/deepspeed-zero<stage>.yaml` selects that ZeRO stage (over
    the alignkit config's zero_stage) and matches 1 process."""
    path = tmp_path / "launched.yaml"
    path.write_text(yaml.safe_dump(dict(dpo_config(tiny_world, tiny_pairs), zero_stage=1)))
    launcher = Path(sys.executable).with_name("accelerate")
    example = Path(__file__).parents[2] / "examples" / "accelerate" / f"deepspeed-zero{stage}.yaml"
    result = subprocess.run([str(launcher), "launch", "--config_file", str(example), "-m", "alignkit", "train",
                             "--config", str(path), f"output_dir={tmp_path / 'launched'}", "batch_size=4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "launched" / "summary.json").read_text())
    assert (summary["processes"], summary["parallel"]) == (2, f"deepspeed-zero{stage}")
    assert_same_run(one_process, tmp_path / "launched")


SCORER_SCRIPT = """
import os, sys, torch, deepspeed
from transformers import AutoModelForCausalLM
from alignkit.models.scoring import ResponseScorer
from alignkit.engine.deepspeed import SyncedScorer, skip_shared_memory_op

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
path, synced = sys.argv[1], sys.argv[2] == "synced"
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
expected = ResponseScorer(model)(ids, torch.ones_like(ids), torch.arange(23), ids.view(-1)[1:24])
scorer = (SyncedScorer if synced else ResponseScorer)(model, chunk_size=3)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # the weights stay those of `expected`
skip_shared_memory_op()
engine, *_ = deepspeed.initialize(model=scorer, optimizer=optimizer, config={
    "train_micro_batch_size_per_gpu": 1, "managed_gradient_accumulation": False,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}})
for m in (4, 17):  # head applied in 2 chunks on process 0, 6 on process 1, then 6 on both
    n = m if rank == 0 else 17
    got = engine(ids, torch.ones_like(ids), torch.arange(n), ids.view(-1)[1:n + 1])
    assert torch.allclose(got, expected[:n], atol=1e-10), (got, expected[:n])
    engine.backward(got.sum())
    engine.step()
os.write(1, f"ok {rank}\\n".encode())  # one write: both processes share the pipe (print may split it)
"""


def test_zero3_head_chunks_agree_across_processes(tiny_world, tmp_path):
    """Under ZeRO-3 every call of the LM head all-gathers its weight. Process 0 scores 4 tokens (2 chunks of 3),
    process 1 scores 17 (6 chunks): SyncedScorer pads process 0 with empty chunks, so both make the same collectives,
    and the log-probs equal the unsharded scorer's."""
    script = tmp_path / "scorer.py"
    script.write_text(textwrap.dedent(SCORER_SCRIPT))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tiny_world / "base"), "synced"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("ok")) == ["ok 0", "ok 1"]


@pytest.mark.parametrize("setting, env, message", [
    ({"lora": {"enabled": True}}, {}, "LoRA"),
    ({"loss": "sparsepo"}, {}, "token-level"),
    ({"recipe": "reward"}, {}, "recipe: reward"),
    ({"recipe": "online", "online": {"reward": "sandbox-gold"}}, {}, "recipe: online"),
    ({"recipe": "rl", "online": {"reward": "sandbox-gold"}}, {}, "recipe: rl"),
    ({"zero_stage": 4}, {}, "zero_stage must be 1, 2 or 3"),
    ({"zero_stage": 3, "rows_per_forward": 4}, {}, "rows_per_forward"),
    ({"distributed": "ddp", "lora": {"enabled": True}}, {"ACCELERATE_USE_DEEPSPEED": "true"}, "deepspeed.*LoRA"),
    ({}, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "5"}, "not 5"),
    ({}, {"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "offloading"),
    ({}, {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "config file"),
])
def test_deepspeed_refuses_what_it_does_not_cover(monkeypatch, setting, env, message):
    from alignkit.config import ConfigError
    from alignkit.recipes import load_config, train

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    values = {"distributed": "deepspeed", "model": {"path": "unused"}, "data": {"path": "unused.jsonl"}, **setting}
    with pytest.raises(ConfigError, match=message):
        train(load_config(None, **values))


def test_checkpoint_shards_move_in_atomically(tiny_world, tmp_path):
    """A checkpoint appears with every process's shard or not at all; resuming reads the process's own shard."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from alignkit.engine.checkpoint import (
        list_checkpoints,
        load_training_state,
        save_checkpoint,
        shard_staging_dir,
        stage_optimizer_shard,
    )

    model = AutoModelForCausalLM.from_pretrained(tiny_world / "base")
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = get_scheduler("constant", optimizer)
    save = dict(model=model, processor=AutoTokenizer.from_pretrained(tiny_world / "base"), scheduler=scheduler,
                optimizer_state={"format": "deepspeed-zero", "zero_stage": 2, "num_processes": 2}, keep=2,
                trainer_state={"step": 3}, shards=2)
    stage_optimizer_shard(tmp_path, 3, 0, {"rank": torch.tensor(0)})
    with pytest.raises(FileNotFoundError):  # process 1's shard is missing
        save_checkpoint(tmp_path, 3, **save)
    assert list_checkpoints(tmp_path) == []
    assert not (tmp_path / "checkpoints" / "step-0000003").exists()

    stage_optimizer_shard(tmp_path, 3, 0, {"rank": torch.tensor(0)})  # staged again, as the processes would
    stage_optimizer_shard(tmp_path, 3, 1, {"rank": torch.tensor(1)})
    path = save_checkpoint(tmp_path, 3, **save)
    assert list_checkpoints(tmp_path) == [path]
    assert not shard_staging_dir(tmp_path, 3).exists()
    loaded = {}
    load_training_state(path, lambda state, shard: loaded.update(state=state, shard=shard), scheduler, rank=1)
    assert loaded["state"]["format"] == "deepspeed-zero"
    assert torch.load(loaded["shard"], weights_only=True) == {"rank": torch.tensor(1)}


def test_resume_refuses_another_layout():
    """A partitioned optimizer state resumes only with the processes and ZeRO stage it was written with; a whole
    one (ddp/fsdp) not under deepspeed, and a partitioned one not under ddp/fsdp."""
    from types import SimpleNamespace

    from alignkit.config import ConfigError
    from alignkit.engine.deepspeed import ZeroRedundancy
    from alignkit.engine.parallel import Replicated

    sharded = {"format": "deepspeed-zero", "zero_stage": 2, "num_processes": 2}
    four = SimpleNamespace(num_processes=4, process_index=0)
    with pytest.raises(ConfigError, match="over 2 processes by ZeRO stage 2; resume with --num-processes 2"):
        ZeroRedundancy(four, 2).load_optimizer_state(None, None, sharded, None)
    two = SimpleNamespace(num_processes=2, process_index=0)
    with pytest.raises(ConfigError, match="zero_stage=2"):
        ZeroRedundancy(two, 3).load_optimizer_state(None, None, sharded, None)
    with pytest.raises(ConfigError, match="not written under distributed=deepspeed"):
        ZeroRedundancy(two, 2).load_optimizer_state(None, None, {"state": {}, "param_groups": []}, None)
    with pytest.raises(ConfigError, match="resume it with distributed=deepspeed zero_stage=2 and --num-processes 2"):
        Replicated(two).load_optimizer_state(None, None, sharded, None)


def test_the_shared_memory_op_is_not_compiled_on_cpu(monkeypatch):
    """DeepSpeed's CPU backend would JIT-compile a shared-memory inference all-reduce (minutes per installation)
    when the engine starts; alignkit replaces its builder with one that returns None (the fallback DeepSpeed uses
    where the kernel is unavailable)."""
    import importlib

    from alignkit.engine.deepspeed import skip_shared_memory_op

    comm = importlib.import_module("deepspeed.comm.torch")
    monkeypatch.setattr(comm, "build_shm_op", comm.build_shm_op)  # restored after the test
    skip_shared_memory_op()
    assert comm.build_shm_op() is None
