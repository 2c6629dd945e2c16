#!/usr/bin/env python
"""Online DPO step time: alignkit ``recipe: online`` (``online_dpo``) vs TRL 1.16 ``OnlineDPOTrainer``.

One invocation runs both frameworks side by side, each in its own fresh subprocess, on the same workload:

- the sandbox SFT model (``<sandbox>/sft/model``, fp32) — the sandbox is built once with
  ``SandboxSpec(seed=0, train_prompts=400, eval_prompts=50, corpus_size=2000, sft_steps=150)`` into a cache
  directory, or reused with ``--sandbox DIR``;
- the sandbox's conversational training prompts (``world/data/prompts_train.jsonl``) **in the same order**:
  alignkit draws each step's prompts with ``alignkit.engine.loop.step_records``; TRL gets a copy of the prompts in
  that order and ``train_sampling_strategy="sequential"``;
- ``--batch-size`` prompts per step (default 8), 2 samples per prompt (16 sequences generated per step in one
  ``generate`` batch in both), ``--max-new-tokens`` (default 32), temperature 1, no top-k / top-p / min-p /
  repetition penalty, EOS = the tokenizer's EOS;
- labels from the sandbox gold reward: alignkit ``online.reward: sandbox-gold``; TRL a reward *function* that
  calls ``alignkit.sandbox.world.gold_reward`` on the same text (TRL 1.16 passes conversational prompts and
  completions as message lists: the last message's content is used, as alignkit's ``sandbox-gold`` does);
- DPO sigmoid loss, beta 0.1, a live frozen reference copy in both, AdamW (lr ``--lr``, betas 0.9/0.999,
  eps 1e-8, no weight decay), constant schedule, no warm-up, gradient clipping at 1.0, no missing-EOS penalty;
- no evaluation (alignkit ``online.eval_prompts: 0``; TRL ``eval_strategy="no"``), no checkpoints during
  training (alignkit writes its final model after the last step — outside the timing; TRL ``save_strategy="no"``),
  TRL ``logging_strategy="no"``, ``report_to="none"``, ``disable_tqdm``.

Step time is the interval between consecutive optimizer steps (alignkit: ``train(config, on_step=...)``; TRL: a
``TrainerCallback.on_step_end``); the median over steps after ``--warmup`` warm-up steps is reported, in wall
time and in the process's CPU time (with one torch thread, the time it actually ran: less sensitive to other
load on a shared machine); with ``--repeat`` the median over runs. Each step
includes sampling, labelling, the policy and reference forwards, the backward and the optimizer step. The
generation share is the time inside each framework's sampling call (alignkit ``generate``; TRL
``OnlineDPOTrainer._generate``) over the step time.

Differences that cannot be removed (the script prints the numbers that show their size):

- The samples differ (different samplers and random streams), so response lengths differ: mean generated tokens
  per sequence are printed for both.
- Ties: alignkit skips a prompt whose two samples get the same reward (no pair); TRL trains on ties (chosen =
  the first sample). The pairs alignkit trained on per step are printed.
- alignkit sorts generation jobs by prompt length and scores the pairs packed (prompt once per pair); TRL
  generates the batch padded in dataset order and scores padded rows (its own defaults).

    .venv/bin/python benchmarks/online_dpo_step.py --threads 1                  # builds the sandbox once (~1-2 min)
    .venv/bin/python benchmarks/online_dpo_step.py --sandbox /tmp/fx --steps 12 --repeat 2
    git worktree add /tmp/old <commit> && .venv/bin/python benchmarks/online_dpo_step.py --alignkit-src /tmp/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SANDBOX_SPEC = {"seed": 0, "train_prompts": 400, "eval_prompts": 50, "corpus_size": 2000, "sft_steps": 150}
CHILD_ENV = {
    "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1", "DISABLE_MLFLOW_INTEGRATION": "TRUE", "WANDB_DISABLED": "true",
    "PYTHONWARNINGS": "ignore", "TRL_EXPERIMENTAL_SILENCE": "1",
}


# ============================================================================================ children
class Clock:
    """perf_counter() and process_time() after every optimizer step, and the time spent sampling since the
    previous step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []
        self.gen_per_step: list[float] = []
        self.tokens_per_step: list[list[int]] = []
        self._gen = 0.0
        self._tokens: list[int] = []

    def generated(self, seconds: float, lengths: list[int]) -> None:
        self._gen += seconds
        self._tokens += lengths

    def step(self) -> None:
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        self.gen_per_step.append(self._gen)
        self.tokens_per_step.append(self._tokens)
        self._gen, self._tokens = 0.0, []


def run_alignkit(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    from alignkit.recipes import load_config, online, train

    original_generate = online.generate

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        samples = original_generate(*args, **kwargs)
        clock.generated(time.perf_counter() - t, [len(s.response_ids) for s in samples])
        return samples

    online.generate = timed_generate  # the rollout's sampler (looked up in the module at call time)
    config = load_config(
        None, [], recipe="online", loss_params={"beta": spec["beta"]},
        model={"path": spec["model_dir"], "dtype": "float32"},
        data={"path": spec["prompts"]},
        online={"method": "online_dpo", "reward": "sandbox-gold", "num_samples": 2,
                "max_new_tokens": spec["max_new_tokens"], "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                "generation_batch_size": 2 * spec["batch_size"], "eval_prompts": 0, "eval_every": 0,
                "missing_eos_penalty": None},
        optim={"lr": spec["lr"], "warmup_ratio": 0.0, "schedule": "constant", "max_grad_norm": 1.0,
               "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
        batch_size=spec["batch_size"], max_steps=spec["steps"], seed=spec["seed"], output_dir=spec["output_dir"],
        progress=False, log_steps=1, save_steps=None, resume="never")
    result = train(config, on_step=lambda step, model: clock.step())
    rows = [r for r in result.metrics if "step" in r]
    pairs = [r.get("online/records_per_prompt", float("nan")) * spec["batch_size"] for r in rows]
    losses = [r["loss"] for r in rows]
    return {"pairs_per_step": pairs, "losses": losses}


def run_trl(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from alignkit.rewards.judges import plain_text
    from alignkit.sandbox.world import gold_reward

    losses: list[float] = []

    def sandbox_gold(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        # TRL 1.16: conversational prompts / completions arrive as message lists
        return [gold_reward(plain_text(p), plain_text(c)) for p, c in zip(prompts, completions)]

    class Timed(OnlineDPOTrainer):
        def _generate(self, model, prompts, images=None):
            t = time.perf_counter()
            out = super()._generate(model, prompts, images)
            clock.generated(time.perf_counter() - t, [int(n) for n in out[3].sum(1).tolist()])
            return out

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            losses.append(float(loss))
            return loss

    class StepCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step()

    rows = [json.loads(line) for line in Path(spec["prompts_trl"]).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype="float32")
    args = OnlineDPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
        max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", logging_strategy="no",
        save_strategy="no", eval_strategy="no", train_sampling_strategy="sequential", dataloader_num_workers=0,
        use_cpu=True, disable_tqdm=True, seed=spec["seed"], beta=spec["beta"], loss_type="sigmoid",
        max_new_tokens=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0, missing_eos_penalty=None,
        max_length=512)
    trainer = Timed(model=model, reward_funcs=sandbox_gold, args=args, train_dataset=Dataset.from_list(rows),
                    processing_class=tokenizer, callbacks=[StepCallback()])
    trainer.train()
    return {"pairs_per_step": [spec["batch_size"]] * spec["steps"], "losses": losses}


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    clock = Clock()
    began = time.perf_counter()
    out = (run_trl if spec["framework"] == "trl" else run_alignkit)(spec, clock)
    out.update({"stamps": [s - began for s in clock.stamps], "cpu_stamps": clock.cpu_stamps, "gen_s": clock.gen_per_step,
                "tokens": clock.tokens_per_step, "threads": torch.get_num_threads(),
                "total_s": time.perf_counter() - began})
    Path(spec["result_path"]).write_text(json.dumps(out))


# ============================================================================================ parent
def sandbox_dir(arg: str | None) -> Path:
    if arg:
        path = Path(arg)
        if not (path / "sft" / "model" / "config.json").is_file():
            raise SystemExit(f"--sandbox {path}: no sft/model in it (build one with `alignkit sandbox build`)")
        return path
    from alignkit.apps.sandbox_build import SandboxSpec, build

    path = Path(tempfile.gettempdir()) / "alignkit-bench-online-sandbox"
    print(f"sandbox: building (or reusing) {path} with {SANDBOX_SPEC}", flush=True)
    build(path, SandboxSpec(**SANDBOX_SPEC), progress=False, log=lambda msg: None)
    return path


def launch(spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    spec_path = workdir / f"{spec['name']}.spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / f"{spec['name']}.log"
    with log_path.open("w") as log:
        proc = subprocess.run([sys.executable, str(HERE), "--child", str(spec_path)], check=False, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, **CHILD_ENV, **spec.get("env", {})},
                              timeout=timeout)
    result_path = Path(spec["result_path"])
    if proc.returncode != 0 or not result_path.exists():
        return {"error": f"exit {proc.returncode}\n{log_path.read_text()[-4000:]}"}
    return json.loads(result_path.read_text())


def summarise(r: dict[str, Any], warmup: int) -> dict[str, Any]:
    stamps = r["stamps"]
    timed = list(range(max(1, warmup), len(stamps)))  # indices into stamps of the timed steps
    times = [stamps[k] - stamps[k - 1] for k in timed]
    cpu = [r["cpu_stamps"][k] - r["cpu_stamps"][k - 1] for k in timed]
    gen = [r["gen_s"][k] for k in timed]
    tokens = [t for k in timed for t in r["tokens"][k]]
    return {"median_s": statistics.median(times), "times": times, "cpu_s": statistics.median(cpu), "gen_share": statistics.median(
        g / t for g, t in zip(gen, times)), "gen_median_s": statistics.median(gen),
        "tokens_mean": sum(tokens) / max(1, len(tokens)), "sequences_per_step": len(r["tokens"][timed[0]]),
        "pairs_mean": statistics.mean(r["pairs_per_step"][k] for k in timed)}


def machine(threads: int) -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch
    import transformers
    import trl

    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} thread(s)), transformers "
            f"{transformers.__version__}, trl {trl.__version__}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandbox", help="an already built sandbox directory (default: build one into a cache dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every run (default 1)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps left out of the median (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per framework, order alternating")
    parser.add_argument("--frameworks", nargs="+", default=["alignkit", "trl"], choices=["alignkit", "trl"])
    parser.add_argument("--alignkit-src", help="also run alignkit from this source directory (e.g. the src/ of a "
                                               "git worktree at an earlier commit), as 'alignkit-src'")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.warmup >= args.steps:
        raise SystemExit("--steps must exceed --warmup")

    from alignkit.engine.loop import step_records

    sandbox = sandbox_dir(args.sandbox)
    prompts_path = sandbox / "world" / "data" / "prompts_train.jsonl"
    lines = [line for line in prompts_path.read_text().splitlines() if line.strip()]
    order = [i for s in range(args.steps) for i in step_records(s, len(lines), args.batch_size, args.seed)]
    work = Path(tempfile.mkdtemp(prefix="alignkit-online-bench-"))
    (work / "prompts_trl.jsonl").write_text("\n".join(lines[i] for i in order) + "\n")
    print(f"machine: {machine(args.threads)}; load avg {os.getloadavg()[0]:.2f}")
    print(f"workload: {sandbox}/sft/model, {args.batch_size} prompts/step x 2 samples, max_new_tokens "
          f"{args.max_new_tokens}, T=1, beta {args.beta}, lr {args.lr}, {args.steps} steps (median of steps "
          f"{args.warmup + 1}..{args.steps}), {args.threads} thread(s); work dir {work}", flush=True)
    if args.alignkit_src:
        args.frameworks = [*args.frameworks, "alignkit-src"]
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in args.frameworks}
    for r in range(args.repeat):
        for fw in (args.frameworks if r % 2 == 0 else args.frameworks[::-1]):
            name = f"{fw}-{r}"
            spec = {"name": name, "framework": "alignkit" if fw == "alignkit-src" else fw, "model_dir": str(sandbox / "sft" / "model"),
                    "prompts": str(prompts_path), "prompts_trl": str(work / "prompts_trl.jsonl"),
                    "batch_size": args.batch_size, "steps": args.steps, "max_new_tokens": args.max_new_tokens,
                    "lr": args.lr, "beta": args.beta, "seed": args.seed, "threads": args.threads,
                    "output_dir": str(work / name), "result_path": str(work / f"{name}.json")}
            if fw == "alignkit-src":
                spec["env"] = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(args.alignkit_src).resolve()),
                                                                             os.environ.get("PYTHONPATH")]))}
            load = os.getloadavg()[0]
            result = launch(spec, work, args.timeout)
            if "error" in result:
                raise SystemExit(f"{name} failed: {result['error']}")
            s = summarise(result, args.warmup)
            runs[fw].append(s)
            print(f"  {name}: {s['median_s']:.3f} s/step, {s['cpu_s']:.3f} CPU-s/step (steps: "
                  f"{', '.join(f'{t:.2f}' for t in s['times'])}); "
                  f"generation {s['gen_share']:.0%}; load before {load:.2f}", flush=True)
    print("\n| framework | s/step (median of runs) | runs | CPU-s/step | generation s/step | generation share | "
          "sequences/step | tokens/sequence | pairs trained/step |")
    print("|---|--:|---|--:|--:|--:|--:|--:|--:|")
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for fw, rs in runs.items():
        best[fw] = statistics.median(x["median_s"] for x in rs)
        cpu[fw] = statistics.median(x["cpu_s"] for x in rs)
        listed = ", ".join(f"{x['median_s']:.3f}" for x in rs)
        print(f"| {fw} | {best[fw]:.3f} | {listed} | {cpu[fw]:.3f} | "
              f"{statistics.median(x['gen_median_s'] for x in rs):.3f} | "
              f"{statistics.median(x['gen_share'] for x in rs):.0%} | {rs[0]['sequences_per_step']} | "
              f"{statistics.mean(x['tokens_mean'] for x in rs):.1f} | "
              f"{statistics.mean(x['pairs_mean'] for x in rs):.2f} |")
    if "alignkit-src" in best:
        print(f"alignkit-src / alignkit step time: {best['alignkit-src'] / best['alignkit']:.2f}x wall, "
              f"{cpu['alignkit-src'] / cpu['alignkit']:.2f}x CPU time")
    if "alignkit" in best and "trl" in best:
        print(f"\nTRL / alignkit step time: {best['trl'] / best['alignkit']:.2f}x wall, "
              f"{cpu['trl'] / cpu['alignkit']:.2f}x CPU time")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
