#!/usr/bin/env python
"""alignkit ``recipe: rl`` (RLOO, GRPO) vs TRL 1.16 ``RLOOTrainer`` / ``GRPOTrainer``: optimizer steps per second.

One invocation prepares the workload (the sandbox SFT model, saved with ``save_pretrained``; a prompt file in
alignkit's step order, given to TRL unshuffled so both see the same prompts at every step) and runs every
configuration in its own fresh subprocess:

- ``alignkit-rloo`` / ``trl-rloo``: K samples per prompt, KL (k1, summed over the response) in the reward with
  beta 0.05, leave-one-out advantage, one update per rollout.
- ``alignkit-grpo`` / ``trl-grpo``: K samples per prompt, group-normalised advantage, k3 KL in the loss with beta
  0.04, token-level ratios, one update per rollout.

Equal in both: model and tokenizer directory, fp32 (TRL ``bf16=False``, ``gradient_checkpointing=False``), prompts and
their order, P prompts x K samples per optimizer step (TRL: ``per_device_train_batch_size = P*K``,
``num_generations = K``, one generation batch per step), at most T new tokens, temperature 1 without top-k/top-p,
HF ``generate`` with the KV cache, a live frozen reference model, the sandbox gold reward (a Python callable for
TRL: ``alignkit.sandbox.world.gold_reward``), AdamW at a constant learning rate, gradient clipping at 1.0, no
evaluation and no checkpoints during training, ``--threads`` torch threads. Steps/s is measured the same way in
both: wall-clock time between the end of the first and the end of the last optimizer step, so model loading and the
first step's warm-up are left out. The mean sampled response length of each run is printed: generation dominates
a step, so runs are only comparable when their lengths are close.

Differences that remain (deliberate design, listed so the numbers can be read): alignkit takes the old log-probs for
the ratio from the sampler (exact at temperature 1; tested against teacher forcing), so with one update per rollout
it runs no separate no-grad policy forward; TRL's RLOO runs one (its KL-in-reward needs them) and its GRPO does not
(one update per generation batch). alignkit's loss pass computes the full next-token distribution at every
position (for the logged entropy); TRL computes logits for completion tokens only.

    .venv/bin/python benchmarks/rl_step_time.py                       # builds the sandbox (~1-2 min), then ~3 min
    .venv/bin/python benchmarks/rl_step_time.py --sandbox /tmp/sb --steps 8 --prompts 8 --k 4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
CONFIGS = ("alignkit-rloo", "trl-rloo", "alignkit-grpo", "trl-grpo")
CHILD_ENV = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1",
             "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "WANDB_DISABLED": "true", "PYTHONWARNINGS": "ignore",
             "DISABLE_MLFLOW_INTEGRATION": "TRUE"}
BETA = {"rloo": 0.05, "grpo": 0.04}


# ============================================================================================ workload
def prepare(args: argparse.Namespace, work: Path) -> dict:
    from alignkit.apps.sandbox_build import SandboxSpec, build, read_prompts
    from alignkit.engine.loop import step_records
    from alignkit.utils.io import write_jsonl

    if args.sandbox and (Path(args.sandbox) / "sft" / "model" / "config.json").exists():
        model = Path(args.sandbox) / "sft" / "model"
        world = Path(args.sandbox) / "world"
    else:
        spec = SandboxSpec(seed=0, train_prompts=1200, eval_prompts=200, corpus_size=4000, sft_steps=300)
        paths = build(args.sandbox or work / "sandbox", spec, progress=False, log=lambda *_: None)
        model, world = paths.sft_model, paths.world
    prompts = read_prompts(world / "data" / "prompts_train.jsonl")[: args.steps * args.prompts]
    # alignkit's order of the prompts (rollout i takes step_records(i)); TRL reads the file in that order, unshuffled
    order = [i for s in range(args.steps) for i in step_records(s, len(prompts), args.prompts, args.seed)]
    write_jsonl(work / "prompts.jsonl", [{"prompt": p} for p in prompts])
    write_jsonl(work / "prompts_ordered.jsonl", [{"prompt": prompts[i]} for i in order])
    return {"model": str(model), "prompts": str(work / "prompts.jsonl"),
            "ordered": str(work / "prompts_ordered.jsonl")}


# ============================================================================================ children
def run_alignkit(method: str, args: argparse.Namespace, workload: dict, out: Path) -> dict:
    from alignkit.recipes import load_config, train

    stamps: list[float] = []
    config = load_config(
        None, recipe="rl", model={"path": workload["model"], "dtype": "float32"},
        data={"path": workload["prompts"]},
        online={"reward": "sandbox-gold", "max_new_tokens": args.max_new_tokens, "eval_prompts": 0,
                "generation_batch_size": args.prompts * args.k},
        rl={"advantage": method, "num_samples": args.k, "kl_coef": BETA[method]},
        optim={"lr": args.lr, "schedule": "constant", "warmup_ratio": 0.0, "max_grad_norm": 1.0},
        batch_size=args.prompts, max_steps=args.steps, seed=args.seed, output_dir=str(out / "run"),
        resume="never", progress=False, log_steps=1, save_steps=None)
    result = train(config, on_step=lambda step, model: stamps.append(time.perf_counter()))
    lengths = [row["rl/length"] for row in result.metrics if "rl/length" in row]
    return {"stamps": stamps, "length": sum(lengths) / len(lengths),
            "reward": [row.get("rl/proxy") for row in result.metrics]}


def run_trl(method: str, args: argparse.Namespace, workload: dict, out: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from alignkit.sandbox import world

    stamps: list[float] = []
    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    def gold(prompts, completions, **_):
        return [world.gold_reward(p[-1]["content"], c[-1]["content"] if isinstance(c, list) else c)
                for p, c in zip(prompts, completions)]

    rows = [json.loads(line) for line in Path(workload["ordered"]).read_text().splitlines()]
    dataset = datasets.Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(workload["model"])
    model = AutoModelForCausalLM.from_pretrained(workload["model"], dtype=torch.float32)
    common = {"output_dir": str(out / "trl"), "per_device_train_batch_size": args.prompts * args.k,
              "num_generations": args.k, "generation_batch_size": args.prompts * args.k,
              "max_completion_length": args.max_new_tokens, "max_steps": args.steps, "learning_rate": args.lr,
              "lr_scheduler_type": "constant", "warmup_steps": 0, "max_grad_norm": 1.0, "logging_steps": 1,
              "save_strategy": "no", "report_to": [], "bf16": False, "gradient_checkpointing": False,
              "use_cpu": True, "beta": BETA[method], "temperature": 1.0, "top_k": 0, "top_p": 1.0,
              "shuffle_dataset": False, "seed": args.seed, "disable_dropout": True, "dataloader_num_workers": 0}
    if method == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        trainer = RLOOTrainer(model=model, reward_funcs=gold, args=RLOOConfig(**common), train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Clock()])
    else:
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(model=model, reward_funcs=gold, args=GRPOConfig(**common, loss_type="dapo"),
                              train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return {"stamps": stamps, "length": sum(lengths) / max(1, len(lengths)), "reward": []}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    workload = json.loads(Path(args.workload).read_text())
    framework, method = args.child.split("-")
    out = Path(args.out)
    result = (run_alignkit if framework == "alignkit" else run_trl)(method, args, workload, out)
    stamps = result.pop("stamps")
    result["steps"] = len(stamps)
    result["steps_per_s"] = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    (out / "result.json").write_text(json.dumps(result))


# ============================================================================================ parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", help="a sandbox directory to reuse (built there when missing)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="run every config this many times (best is kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="rl_step_time_") as tmp:
        work = Path(tmp)
        workload = prepare(args, work)
        (work / "workload.json").write_text(json.dumps(workload))
        results: dict[str, list[dict]] = {}
        passthrough = ["--steps", str(args.steps), "--prompts", str(args.prompts), "--k", str(args.k),
                       "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr), "--threads",
                       str(args.threads), "--seed", str(args.seed)]
        for r in range(args.repeat):
            for name in args.configs if r % 2 == 0 else reversed(args.configs):
                out = work / f"{name}-{r}"
                out.mkdir()
                began = time.time()
                proc = subprocess.run([sys.executable, str(HERE), "--child", name, "--workload",
                                       str(work / "workload.json"), "--out", str(out), *passthrough],
                                      env={**os.environ, **CHILD_ENV, "OMP_NUM_THREADS": str(args.threads)},
                                      capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
                    raise SystemExit(f"{name} failed")
                result = json.loads((out / "result.json").read_text())
                result["wall_s"] = round(time.time() - began, 1)
                results.setdefault(name, []).append(result)
                print(f"{name:14s} {result['steps_per_s']:.3f} steps/s  mean length {result['length']:.1f}  "
                      f"(process {result['wall_s']} s)", flush=True)
    best = {name: max(runs, key=lambda x: x["steps_per_s"]) for name, runs in results.items()}
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{args.threads}; workload: {args.steps} steps x {args.prompts} prompts x K={args.k}, <= "
          f"{args.max_new_tokens} new tokens")
    print(f"{'config':14s} {'steps/s':>8s} {'len':>6s}  runs (steps/s)")
    for name, result in best.items():
        runs = ", ".join(f"{x['steps_per_s']:.3f}" for x in results[name])
        print(f"{name:14s} {result['steps_per_s']:8.3f} {result['length']:6.1f}  {runs}")
    for method in ("rloo", "grpo"):
        if f"alignkit-{method}" in best and f"trl-{method}" in best:
            ratio = best[f"alignkit-{method}"]["steps_per_s"] / best[f"trl-{method}"]["steps_per_s"]
            print(f"{method}: alignkit / TRL = {ratio:.2f}x")


if __name__ == "__main__":
    main()
