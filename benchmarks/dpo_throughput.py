#!/usr/bin/env python
"""alignkit vs TRL ``DPOTrainer``: throughput, peak memory, first-step loss and achieved FLOP share.

One invocation prepares a workload (model saved with ``save_pretrained``, tokenizer, preference pairs), measures
this machine's fp32 matmul rate, then runs every framework configuration in its own fresh subprocess, all on the
same initial weights, the same pairs in the same order, the same batch size, lengths and optimizer settings, fp32
(TRL with ``bf16=False`` and ``gradient_checkpointing=False``), and prints a table and one PASS/MISS line per target.

Configurations (``--configs``):

- ``alignkit``         alignkit's default: reference log-probs precomputed once before training (``reference.mode=precompute``)
- ``trl-precompute``   TRL with ``precompute_ref_log_probs=True`` (batch ``4 * B`` as alignkit) — the same workload
- ``trl-default``      TRL's defaults otherwise: a live reference model, one extra forward per step
- ``alignkit-copy``    alignkit with a live frozen reference copy (the same workload as ``trl-default``)

Run ``python benchmarks/dpo_throughput.py --help``; README.md next to this file explains every number.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
LN2 = math.log(2.0)
ALL_CONFIGS = ("alignkit", "trl-precompute", "trl-default", "alignkit-copy", "alignkit-lora", "alignkit-compile")
LORA_SET = ["lora.enabled=true", "lora.r=16", "lora.alpha=32"]  # alignkit-lora: adapters on every linear layer
EXTRA_SET = {"alignkit-lora": LORA_SET, "alignkit-compile": ["compile=true"]}  # torch.compile of the decoder layers
TARGETS = {"throughput": 2.0, "memory": 1.0, "loss": 1e-5, "flop_share": 0.50}

CHILD_ENV = {
    "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1", "DISABLE_MLFLOW_INTEGRATION": "TRUE", "WANDB_DISABLED": "true",
    "PYTHONWARNINGS": "ignore",
}


# ============================================================================================ memory helpers
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) of this process (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ============================================================================================ workloads
def build_sandbox(root: Path, n_pairs: int) -> dict[str, Any]:
    """The alignkit sandbox's tokenizer + random-init tiny Llama, and n conversational pairs written by its Writer."""
    from alignkit.sandbox import world
    from alignkit.apps.sandbox_build import SandboxSpec, assistant, build_world, user

    world_dir = root / "world"
    world_dir.mkdir(parents=True)
    build_world(world_dir, SandboxSpec(seed=0, corpus_size=600, train_prompts=100, eval_prompts=40))
    rng = random.Random(1)
    writer = world.Writer(rng)
    rows = []
    while len(rows) < n_pairs:  # as tests/conftest.py::tiny_pairs
        prompt = world.make_prompt(rng)
        a, b = writer.response(prompt), writer.response(prompt)
        ra, rb = world.gold_reward(prompt, a), world.gold_reward(prompt, b)
        if ra == rb or a == b:
            continue
        chosen, rejected = (a, b) if ra > rb else (b, a)
        rows.append({"prompt": user(prompt), "chosen": assistant(chosen), "rejected": assistant(rejected)})
    # the sandbox Llama has max_position_embeddings=160: every sequence must fit (checked: no truncation)
    return {"model_dir": str(world_dir / "base"), "rows": rows, "max_length": 160, "max_prompt_length": 64}


REALISTIC_SHAPE = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                       intermediate_size=1408, vocab_size=32000, max_position_embeddings=1024)
SPECIALS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|unk|>"]
WORD_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def build_realistic(root: Path, n_pairs: int, min_len: int, max_len: int, seed: int = 0) -> dict[str, Any]:
    """Llama-style random model (hidden 512, 8 layers, vocab 32000) and a WordLevel tokenizer over words
    "t0".."t31994" (+5 specials): random-token pairs that both frameworks tokenize identically."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab_size = REALISTIC_SHAPE["vocab_size"]
    words = [f"t{i}" for i in range(vocab_size - len(SPECIALS))]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
                                        unk_token="<|unk|>", additional_special_tokens=SPECIALS[2:4])
    tokenizer.chat_template = WORD_TEMPLATE
    model_dir = root / "model"
    tokenizer.save_pretrained(model_dir)
    config = LlamaConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=False, **REALISTIC_SHAPE)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(model_dir, safe_serialization=True)
    rng = random.Random(seed + 1)
    text = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(min_len, max_len)))  # noqa: E731
    rows = [{"prompt": [{"role": "user", "content": text()}], "chosen": [{"role": "assistant", "content": text()}],
             "rejected": [{"role": "assistant", "content": text()}]} for _ in range(n_pairs)]
    # prompt <= max_len + 3 tokens, response <= max_len + 1: no truncation anywhere
    return {"model_dir": str(model_dir), "rows": rows, "max_length": 2 * max_len + 16,
            "max_prompt_length": max_len + 8}


def model_flop_params(model_dir: str) -> dict[str, int]:
    """N for the FLOP count: every parameter that does matmul work per token = all parameters minus the input
    embedding table, plus the LM head (counted once whether or not it is tied to the embeddings)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = embed is head
    n = total if tied else total - embed.numel()
    return {"total": total, "flop_params": n, "lm_head": head.numel(), "tied": int(tied)}


# ============================================================================================ matmul rate
def matmul_rate(size: int, seconds: float, threads: int = 0) -> float:
    """Best fp32 torch.matmul rate (FLOP/s) of a size x size x size product over ~``seconds``."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            torch.matmul(a, b, out=out)
        best = max(best, 4 * 2 * size ** 3 / (time.perf_counter() - t))
    return best


# ============================================================================================ children
def digest(sequences: list[tuple[list[int], list[int], list[int]]]) -> str:
    return hashlib.sha256(json.dumps(sequences).encode()).hexdigest()[:16]


def padding_share(sequences: list[tuple[list[int], list[int], list[int]]], batch: int) -> float:
    """Share of the computed positions that are padding when ``batch`` pairs (2 * batch rows) are padded to their
    longest row — how both frameworks collate."""
    real = padded = 0
    for start in range(0, len(sequences), batch):
        lengths = [len(p) + len(x) for p, c, r in sequences[start:start + batch] for x in (c, r)]
        real += sum(lengths)
        padded += len(lengths) * max(lengths)
    return 1 - real / padded


def token_stats(sequences: list[tuple[list[int], list[int], list[int]]], batch: int) -> dict[str, Any]:
    lengths = [len(p) + len(c) for p, c, _ in sequences] + [len(p) + len(r) for p, _, r in sequences]
    return {"digest": digest(sequences), "tokens_total": sum(lengths), "max_seq_len": max(lengths),
            "n_pairs": len(sequences), "padding_train": padding_share(sequences, batch),
            "response_tokens": sum(len(c) + len(r) for _, c, r in sequences),
            "tokens_prompt_once": sum(len(p) + len(c) + len(r) for p, c, r in sequences)}


class StepClock:
    """perf_counter() after each optimizer step; resets the peak RSS after step 1, reads it after the last step;
    optionally runs torch.profiler over one step."""

    def __init__(self, steps: int, profile_step: int | None):
        self.steps, self.profile_step = steps, profile_step
        self.stamps: list[float] = []
        self.train_hwm_kb = -1
        self.hwm_reset = False
        self.prof = None
        self.profile_table = ""
        self.profile_summary: dict[str, float] = {}
        self.excluded_s = 0.0  # profiler start/stop and summary time, kept out of the step timings

    def __call__(self, step: int) -> None:
        now = time.perf_counter()
        self.stamps.append(now)
        if step == 1:
            self.hwm_reset = reset_peak_rss()
        if step == self.steps:
            self.train_hwm_kb = _status_kb("VmHWM")
        if self.profile_step is not None:
            if step == self.profile_step - 1:
                import torch.profiler

                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.start()
                self.excluded_s += time.perf_counter() - now
            elif step == self.profile_step and self.prof is not None:
                self.prof.stop()
                self.summarise(now - self.stamps[-2] - self.excluded_s)
                self.excluded_s += time.perf_counter() - now

    def summarise(self, wall: float) -> None:
        events = self.prof.key_averages()
        self.profile_table = events.table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=48)
        matmul_ops = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmm_", "aten::_addmm_activation")
        attn = ("sdpa", "scaled_dot_product", "flash_attention")
        self_us = {e.key: e.self_cpu_time_total for e in events}
        total = sum(self_us.values())
        mm = sum(v for k, v in self_us.items() if k in matmul_ops)
        at = sum(v for k, v in self_us.items() if any(a in k for a in attn))
        self.profile_summary = {"step_wall_s": wall, "op_self_s": total / 1e6, "matmul_self_s": mm / 1e6,
                                "attention_self_s": at / 1e6}


def run_alignkit(spec: dict[str, Any], clock: StepClock) -> dict[str, Any]:
    from alignkit.recipes import load_config, preference, train
    from alignkit.data.collate import response_order
    from alignkit.models.loading import load_tokenizer
    from alignkit.engine import loop
    from alignkit.recipes.common.data import load_training_records, tokenize_dataset

    timings: dict[str, float] = {}
    original = preference.reference_logps  # precompute incl. the on-disk cache key (a miss: fresh output dir)

    def timed_precompute(*args, **kwargs):
        t = time.perf_counter()
        out = original(*args, **kwargs)
        timings["precompute_s"] = time.perf_counter() - t
        return out

    preference.reference_logps = timed_precompute
    config = load_config(
        None, spec.get("alignkit_set", []), recipe="preference", loss="dpo", loss_params={"beta": spec["beta"]},
        model={"path": spec["model_dir"], "dtype": "float32"},
        data={"path": spec["data_alignkit"], "max_length": spec["max_length"],
              "max_prompt_length": spec["max_prompt_length"], "overlength": "truncate"},
        optim={"lr": spec["lr"], "warmup_ratio": 0.0, "schedule": "constant", "max_grad_norm": spec["max_grad_norm"],
               "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
        reference={"mode": spec["mode"]}, batch_size=spec["batch_size"], max_steps=spec["steps"], seed=spec["seed"],
        output_dir=spec["output_dir"], progress=False, log_steps=1, save_steps=None, resume="never")
    result = train(config, on_step=lambda step, model: clock(step))
    first_loss = next(r["loss"] for r in result.metrics if r.get("step") == 1)
    # tokens the run trained on, in step order (re-tokenized with alignkit's own functions, after the timing)
    records, report = load_training_records(config, preference.loss_records(config))
    dataset = tokenize_dataset(config, load_tokenizer(spec["model_dir"]), records, report)
    order = [i for s in range(spec["steps"]) for i in loop.step_records(s, len(dataset), spec["batch_size"], spec["seed"])]
    by_index = []
    for item in dataset:
        chosen, rejected = response_order(item)[:2]
        by_index.append((item.prompt_ids, item.response_ids[chosen], item.response_ids[rejected]))
    sequences = [by_index[i] for i in order]
    # precompute_reference batches 4 * batch_size records in dataset order
    precompute_padding = padding_share(by_index, 4 * spec["batch_size"]) if spec["mode"] == "precompute" else None
    first_batch = digest([(p + c, p + r) for p, c, r in sequences[: spec["batch_size"]]])
    return {"first_loss": first_loss, "precompute_s": timings.get("precompute_s", 0.0), "truncated": report.truncated,
            "padding_precompute": precompute_padding, "first_batch": first_batch,
            **token_stats(sequences, spec["batch_size"])}


def run_trl(spec: dict[str, Any], clock: StepClock) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    timings: dict[str, float] = {}
    losses: list[float] = []
    first_batch: list[str] = []

    class Timed(DPOTrainer):
        def _precompute_ref_logps(self, *args, **kwargs):
            t = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            timings["precompute_s"] = timings.get("precompute_s", 0.0) + time.perf_counter() - t
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training:
                losses.append(float((out[0] if return_outputs else out).detach()))
                if not first_batch:  # what the first training step really consumed (rows: chosen..., rejected...)
                    rows = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
                    half = len(rows) // 2
                    first_batch.append(digest([(c, r) for c, r in zip(rows[:half], rows[half:])]))
            return out

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock(state.global_step)

    rows = [json.loads(line) for line in Path(spec["data_trl"]).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    precompute = spec["mode"] == "precompute"
    args = DPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=spec["max_grad_norm"] if spec["max_grad_norm"] is not None else 0.0,
        bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", logging_steps=1,
        save_strategy="no", train_sampling_strategy="sequential", dataloader_num_workers=0, use_cpu=True,
        disable_tqdm=True, seed=spec["seed"], beta=spec["beta"], loss_type=["sigmoid"],
        max_length=spec["max_length"], model_init_kwargs={"dtype": "float32"},
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=4 * spec["batch_size"] if precompute else None)
    trainer = Timed(model=spec["model_dir"], args=args, train_dataset=Dataset.from_list(rows),
                    processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    prepared = trainer.train_dataset
    n = spec["steps"] * spec["batch_size"]
    sequences = [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"])
                 for r in prepared.select(range(min(n, len(prepared))))]
    # the precompute DataLoader batches precompute_ref_batch_size records in dataset order (= step order here)
    return {"first_loss": losses[0], "precompute_s": timings.get("precompute_s", 0.0),
            "truncated": sum(max(len(p) + len(c), len(p) + len(r)) > spec["max_length"] for p, c, r in sequences),
            "padding_precompute": padding_share(sequences, 4 * spec["batch_size"]) if precompute else None,
            "first_batch": first_batch[0], **token_stats(sequences, spec["batch_size"])}


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch  # (imports before the baseline RSS reading)
    import transformers  # noqa: F401

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])

    if spec["framework"] == "trl":
        import trl  # noqa: F401
    else:
        import alignkit.recipes.runner  # noqa: F401
    baseline_kb = _status_kb("VmRSS")
    clock = StepClock(spec["steps"], spec.get("profile_step"))
    began = time.perf_counter()
    out = (run_trl if spec["framework"] == "trl" else run_alignkit)(spec, clock)
    stamps = clock.stamps
    out.update({
        "config": spec["name"], "stamps_from_start": [s - began for s in stamps], "total_s": time.perf_counter() - began,
        "excluded_s": clock.excluded_s,
        "baseline_rss_kb": baseline_kb, "train_hwm_kb": clock.train_hwm_kb if clock.hwm_reset else -1,
        "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "threads": torch.get_num_threads(),
        "profile_table": clock.profile_table, "profile_summary": clock.profile_summary,
    })
    Path(spec["result_path"]).write_text(json.dumps(out))


# ============================================================================================ parent
def launch(spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    spec_path = workdir / f"{spec['name']}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{spec['name']}.log"
    env = {**os.environ, **CHILD_ENV}
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(HERE), "--child", str(spec_path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        began = time.monotonic()
        while True:  # wait4 gives this child's own rusage: its peak RSS alone, never mixed with another run's
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - began > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result_path = Path(spec["result_path"])
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-4000:]
        return {"config": spec["name"], "error": f"exit {proc.returncode}\n{tail}"}
    result = json.loads(result_path.read_text())
    result["peak_rss_kb"] = usage.ru_maxrss
    result["wall_s"] = time.monotonic() - began
    return result


def derive(r: dict[str, Any], spec: dict[str, Any], flop_params: int, rate: float) -> None:
    """Throughputs and FLOP shares from a child's step stamps."""
    b, s = spec["batch_size"], spec["steps"]
    stamps = r["stamps_from_start"]
    live_ref = spec["mode"] in ("copy", "live")
    step_s = (stamps[-1] - stamps[0] - r.get("excluded_s", 0.0)) / (s - 1)  # mean over steps 2..S (1 = warm-up)
    r["step_s"] = step_s
    r["pairs_per_s"] = b / step_s
    r["pairs_per_s_incl_ref"] = s * b / (r["precompute_s"] + s * step_s)  # S steps at the steady rate + precompute
    t_pair = r["tokens_total"] / r["n_pairs"]
    per_pair_model_flops = 8 * flop_params * t_pair                       # 6NT policy fwd+bwd + 2NT reference fwd
    per_pair_step_flops = (8 if live_ref else 6) * flop_params * t_pair   # what the timed steps do
    r["tokens_per_pair"] = t_pair
    r["flop_share_steps"] = per_pair_step_flops * r["pairs_per_s"] / rate
    r["flop_share"] = per_pair_model_flops * r["pairs_per_s_incl_ref"] / rate


def fmt_mb(kb: float) -> str:
    return f"{kb / 1024:.0f}" if kb and kb > 0 else "n/a"


def report(name: str, results: dict[str, dict[str, Any]], rate: dict[str, float], params: dict[str, int],
           spec0: dict[str, Any]) -> list[str]:
    lines = [f"\n== workload: {name}  (B={spec0['batch_size']} pairs/step, S={spec0['steps']} steps, "
             f"{spec0['n_pairs']} pairs, max_length={spec0['max_length']}, fp32, torch threads="
             f"{next((r.get('threads') for r in results.values() if 'threads' in r), '?')})",
             f"   N (FLOP params) = {params['flop_params'] / 1e6:.2f}M of {params['total'] / 1e6:.2f}M "
             f"(lm head {params['lm_head'] / 1e6:.2f}M, tied={bool(params['tied'])}); matmul rate "
             f"{rate['used'] / 1e9:.1f} GFLOP/s (before {rate['before'] / 1e9:.1f}, after {rate['after'] / 1e9:.1f})"]
    head = (f"{'config':<15}{'ref':>11}{'s/step':>8}{'pairs/s':>9}{'precomp s':>10}{'pairs/s+ref':>12}"
            f"{'peakRSS MB':>11}{'trainHWM MB':>12}{'RSS@import':>11}{'step-1 loss':>13}{'FLOP% steps':>12}"
            f"{'FLOP% e2e':>10}")
    lines += [head, "-" * len(head)]
    for cfg, r in results.items():
        if "error" in r:
            lines.append(f"{cfg:<15} FAILED: {r['error'].splitlines()[0]}")
            continue
        ref = {"alignkit": "precompute", "alignkit-copy": "live copy", "alignkit-lora": "precompute",
               "alignkit-compile": "precompute", "trl-precompute": "precompute", "trl-default": "live model"}[cfg]
        lines.append(f"{cfg:<15}{ref:>11}{r['step_s']:>8.2f}{r['pairs_per_s']:>9.2f}{r['precompute_s']:>10.2f}"
                     f"{r['pairs_per_s_incl_ref']:>12.2f}{fmt_mb(r['peak_rss_kb']):>11}{fmt_mb(r['train_hwm_kb']):>12}"
                     f"{fmt_mb(r['baseline_rss_kb']):>11}{r['first_loss']:>13.7f}{100 * r['flop_share_steps']:>11.1f}%"
                     f"{100 * r['flop_share']:>9.1f}%")
    ok = {k: v for k, v in results.items() if "error" not in v}
    for k, v in ok.items():
        if "repeats_pairs_per_s" in v:
            lines.append(f"   {k}: pairs/s of each repeat {v['repeats_pairs_per_s']} (table: the fastest)")
    digests = {k: v["digest"] for k, v in ok.items()}
    trunc = {k: v["truncated"] for k, v in ok.items()}
    first = next(iter(ok.values()))
    lines.append(f"   tokens/pair (prompt+chosen + prompt+rejected) = {first['tokens_per_pair']:.1f} "
                 f"({100 * first['response_tokens'] / first['tokens_total']:.0f}% response); identical token ids in "
                 f"step order across configs: {'yes' if len(set(digests.values())) == 1 else 'NO ' + str(digests)}; "
                 f"truncated: {trunc}")
    firsts = {k: v["first_batch"] for k, v in ok.items()}
    lines.append("   first training batch (token ids of its rows, as consumed; TRL: inside compute_loss) identical "
                 f"across configs: {'yes' if len(set(firsts.values())) == 1 else 'NO ' + str(firsts)}")
    pre = {k: v["padding_precompute"] for k, v in ok.items() if v.get("padding_precompute") is not None}
    lines.append(f"   padding (share of computed positions): training batches {100 * first['padding_train']:.1f}% "
                 f"(same collation in both); reference precompute batches "
                 + ", ".join(f"{k} {100 * v:.1f}%" for k, v in pre.items()))
    lines.append("")

    def verdict(ok_: bool) -> str:
        return "PASS" if ok_ else "MISS"

    a, tp, td, ac, al, acomp = (ok.get(k) for k in ALL_CONFIGS)
    if a and tp:
        ratio = a["pairs_per_s"] / tp["pairs_per_s"]
        ratio_e2e = a["pairs_per_s_incl_ref"] / tp["pairs_per_s_incl_ref"]
        lines.append(f"[{verdict(ratio >= TARGETS['throughput'])}] throughput alignkit / TRL (same workload, "
                     f"precomputed ref): {ratio:.2f}x steps only, {ratio_e2e:.2f}x incl. ref precompute "
                     f"(target >= {TARGETS['throughput']:.1f}x)")
    if a and td:
        ratio = a["pairs_per_s_incl_ref"] / td["pairs_per_s"]
        lines.append(f"[{verdict(ratio >= TARGETS['throughput'])}] throughput alignkit (default, incl. precompute) / "
                     f"TRL default (live ref): {ratio:.2f}x; steps only {a['pairs_per_s'] / td['pairs_per_s']:.2f}x")
    if ac and td:
        ratio = ac["pairs_per_s"] / td["pairs_per_s"]
        lines.append(f"[{verdict(ratio >= TARGETS['throughput'])}] throughput alignkit-copy / TRL default (both live "
                     f"ref): {ratio:.2f}x")
    if acomp and tp:  # steady steps only; the compilation is paid in step 1 (and any recompilation in later steps)
        ratio = acomp["pairs_per_s"] / tp["pairs_per_s"]
        first = acomp["stamps_from_start"][0] - acomp["precompute_s"]
        lines.append(f"[{verdict(ratio >= TARGETS['throughput'])}] throughput alignkit-compile / TRL (precomputed ref): "
                     f"{ratio:.2f}x steps 2..S; start to the end of step 1 (loading, step 1 and its compilation) {first:.0f} s, not in the ratio"
                     + (f"; compiled / eager alignkit steps: {acomp['pairs_per_s'] / a['pairs_per_s']:.2f}x" if a else ""))
    for other in (tp, td):
        if a and other:
            ratio = a["peak_rss_kb"] / other["peak_rss_kb"]
            train = (a["train_hwm_kb"] / other["train_hwm_kb"]) if min(a["train_hwm_kb"], other["train_hwm_kb"]) > 0 \
                else float("nan")
            lines.append(f"[{verdict(ratio <= TARGETS['memory'])}] peak RSS alignkit / {other['config']}: "
                         f"{ratio:.2f} (process peak), {train:.2f} (training steps 2..S) "
                         f"(target <= {TARGETS['memory']:.1f})")
    for other in (a, tp):
        if al and other:  # LoRA trains fewer weights: a memory comparison, not a throughput one
            lines.append(f"[info] peak RSS alignkit-lora ({' '.join(LORA_SET[1:])}) / {other['config']}: "
                         f"{al['peak_rss_kb'] / other['peak_rss_kb']:.2f} (process peak), "
                         f"{al['train_hwm_kb'] / max(other['train_hwm_kb'], 1):.2f} (training steps 2..S); "
                         f"alignkit-lora {al['pairs_per_s']:.2f} pairs/s, first-step loss {al['first_loss']:.8f}")
    for other in (tp, td):
        if a and other:
            diff = abs(a["first_loss"] - other["first_loss"])
            lines.append(f"[{verdict(diff <= TARGETS['loss'])}] first-step loss |alignkit - {other['config']}| = "
                         f"{diff:.2e} (alignkit {a['first_loss']:.8f}, {other['config']} {other['first_loss']:.8f}, "
                         f"ln 2 = {LN2:.8f}; target <= {TARGETS['loss']:.0e})")
    if a:
        lines.append(f"[{verdict(a['flop_share'] >= TARGETS['flop_share'])}] alignkit achieved model FLOP/s share: "
                     f"{100 * a['flop_share']:.1f}% end-to-end (8NT per pair incl. ref precompute), "
                     f"{100 * a['flop_share_steps']:.1f}% during steps (6NT) (target >= {100 * TARGETS['flop_share']:.0f}%)")
        once = a["tokens_prompt_once"] / a["tokens_total"]  # packing computes each prompt once per pair
        lines.append(f"[info] the same counting only the tokens alignkit computes (prompt once per pair, {100 * once:.0f}% "
                     f"of T): {100 * a['flop_share'] * once:.1f}% end-to-end, {100 * a['flop_share_steps'] * once:.1f}% "
                     "during steps; LoRA rows' FLOP% use full-model 6NT and are not comparable")
    for r in ok.values():
        if r.get("profile_table"):
            p = r["profile_summary"]
            lines.append(f"\n-- torch.profiler, one step of {r['config']}: wall {p['step_wall_s']:.2f}s, op self time "
                         f"{p['op_self_s']:.2f}s, matmul (mm/addmm/bmm) {p['matmul_self_s']:.2f}s, attention "
                         f"{p['attention_self_s']:.2f}s")
            lines.append(r["profile_table"])
    return lines


def run_workload(name: str, args: argparse.Namespace, root: Path) -> list[str]:
    steps, batch = (args.steps or (20 if name == "sandbox" else 6)), (args.batch_size or (16 if name == "sandbox" else 4))
    if args.profile:
        steps = max(steps, 4)
    if steps < 2:
        raise SystemExit("--steps must be >= 2 (throughput is measured over steps 2..S)")
    n_pairs = steps * batch  # one epoch: every precomputed pair is trained on, once
    wdir = root / name
    wdir.mkdir(parents=True)
    t = time.perf_counter()
    if name == "sandbox":
        work = build_sandbox(wdir, n_pairs)
    else:
        work = build_realistic(wdir, n_pairs, args.min_len, args.max_len)
    print(f"[bench] {name}: workload prepared in {time.perf_counter() - t:.1f}s ({work['model_dir']})", flush=True)
    from alignkit.engine.loop import step_records

    rows = work["rows"]
    order = [i for s in range(steps) for i in step_records(s, n_pairs, batch, args.seed)]
    assert sorted(order) == list(range(n_pairs))
    data_alignkit, data_trl = wdir / "pairs.jsonl", wdir / "pairs_in_alignkit_order.jsonl"
    data_alignkit.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data_trl.write_text("".join(json.dumps(rows[i]) + "\n" for i in order))  # TRL reads it sequentially
    params = model_flop_params(work["model_dir"])
    base = {"model_dir": work["model_dir"], "data_alignkit": str(data_alignkit), "data_trl": str(data_trl),
            "max_length": work["max_length"], "max_prompt_length": work["max_prompt_length"], "batch_size": batch,
            "steps": steps, "n_pairs": n_pairs, "lr": args.lr, "beta": args.beta, "seed": args.seed,
            "max_grad_norm": None if args.max_grad_norm < 0 else args.max_grad_norm,
            "profile_step": 3 if args.profile else None, "threads": args.threads}
    before = matmul_rate(args.matmul_size, args.matmul_seconds, args.threads)
    print(f"[bench] fp32 matmul {args.matmul_size}^3: {before / 1e9:.1f} GFLOP/s; load {os.getloadavg()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    specs: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {cfg: [] for cfg in args.configs}
    for rep in range(args.repeat):
        for cfg in (args.configs if rep % 2 == 0 else args.configs[::-1]):  # alternate the order between repeats
            framework = "trl" if cfg.startswith("trl") else "alignkit"
            mode = {"alignkit": "precompute", "alignkit-copy": "copy", "alignkit-lora": "precompute",
                    "alignkit-compile": "precompute", "trl-precompute": "precompute", "trl-default": "live"}[cfg]
            tag = f"{cfg}.{rep}"
            overrides = args.alignkit_set + EXTRA_SET.get(cfg, [])
            spec = {**base, "name": cfg, "framework": framework, "mode": mode, "alignkit_set": overrides,
                    "output_dir": str(wdir / f"out-{tag}"), "result_path": str(wdir / f"{tag}.result.json")}
            specs[cfg] = spec
            print(f"[bench] {name}: running {cfg} (repeat {rep + 1}/{args.repeat}), load {os.getloadavg()} ...",
                  flush=True)
            r = launch({**spec, "name": tag}, wdir, args.timeout)
            r["config"] = cfg
            runs[cfg].append(r)
            if "error" in r:
                print(f"[bench] {cfg} failed: {r['error']}", flush=True)
            else:
                stamps = r["stamps_from_start"]
                steps_s = [round(b - a, 2) for a, b in zip(stamps, stamps[1:])]
                print(f"[bench] {cfg}: {r['wall_s']:.1f}s wall, first loss {r['first_loss']:.7f}, "
                      f"precompute {r['precompute_s']:.2f}s, steps 2..S {steps_s}", flush=True)
            if not args.keep:
                import shutil

                shutil.rmtree(spec["output_dir"], ignore_errors=True)
    after = matmul_rate(args.matmul_size, args.matmul_seconds, args.threads)
    rate = {"before": before, "after": after, "used": max(before, after)}
    for cfg, rs in runs.items():
        for r in rs:
            if "error" not in r:
                derive(r, specs[cfg], params["flop_params"], rate["used"])
        good = [r for r in rs if "error" not in r]
        results[cfg] = min(good, key=lambda r: r["step_s"]) if good else rs[0]  # fastest repeat: least disturbed
        if len(good) > 1:
            results[cfg]["repeats_pairs_per_s"] = [round(r["pairs_per_s"], 3) for r in good]
    (wdir / "results.json").write_text(json.dumps({"rate": rate, "params": params, "runs": runs}, indent=1))
    return report(name, results, rate, params, base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=["sandbox", "realistic", "both"], default="sandbox")
    parser.add_argument("--configs", nargs="+", choices=ALL_CONFIGS, default=list(ALL_CONFIGS))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: sandbox 20, realistic 6)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: sandbox 16, realistic 4)")
    parser.add_argument("--min-len", type=int, default=64, help="realistic: min prompt/response words (tokens)")
    parser.add_argument("--max-len", type=int, default=256, help="realistic: max prompt/response words (tokens)")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clip norm for both (negative: no clipping)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every config R times (order alternating); the fastest run of each is reported")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in every run and in the matmul measurement (0: torch default)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per framework run")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler over step 3 of every run (slows that step; timings are then indicative)")
    parser.add_argument("--alignkit-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra alignkit config overrides, e.g. rows_per_forward=8")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (models, logs, results.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    os.environ.update(CHILD_ENV)
    root = Path(tempfile.mkdtemp(prefix="alignkit-bench-"))
    print(f"[bench] {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()}, workdir {root}", flush=True)
    import torch
    import transformers
    import trl

    import alignkit

    print(f"[bench] torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}, trl {trl.__version__}, alignkit {getattr(alignkit, '__version__', '?')}",
          flush=True)
    lines = []
    try:
        for name in (["sandbox", "realistic"] if args.workload == "both" else [args.workload]):
            lines += run_workload(name, args, root)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines))
    print(f"\n[bench] load average at the end: {os.getloadavg()}" + ("" if not args.keep else f"; kept {root}"))


if __name__ == "__main__":
    main()
