#!/usr/bin/env python
"""Generation throughput: alignkit ``generate`` vs plain ``transformers`` ``model.generate``.

Both sample the same prompts (rendered and tokenized once, by alignkit's ``encode_prompts``), with the same
model object, batch size, ``max_new_tokens`` and sampling settings (temperature 1, no top-k / top-p), fp32 on
the CPU. The plain baseline batches the prompts in their file order and left-pads each batch, as a user would
with ``model.generate``; alignkit sorts jobs by prompt length first (less padding), decodes with its own loop
(``alignkit.sampling.generate.decode``: inverse-CDF draws, finished rows dropped from the batch) and returns
per-token log-probs. Throughput counts generated tokens up to and including EOS, divided by wall time (and,
less sensitive to other load on a shared machine, by the process's CPU time: with one torch thread it is the
time the process actually ran); each side runs ``--repeat`` times in alternating order after one warm-up call,
and the fastest run is reported with the median of the runs.

Workloads (random weights; throughput does not depend on them):

- ``sandbox``: the alignkit sandbox's tokenizer and tiny Llama (the shape of its SFT model: hidden 96, 3
  layers, vocab ~1k), built with ``build_world`` in a temp dir; its held-out chat prompts.
- ``realistic``: a Llama-style model with hidden 512, 8 layers, 8 heads, MLP 1408, vocab 32000, and a
  word-level tokenizer over words ``w0 .. w31994``; prompts of 16-128 random words (varied lengths).
- ``sft``: a built sandbox's trained SFT model (``--sandbox DIR``, e.g. the one ``online_dpo_step.py``
  builds) and its held-out prompts: unlike the random models it ends most responses with EOS, so rows finish
  at different steps (the online recipe's workload).

Random-init models almost never emit EOS, so on ``sandbox`` and ``realistic`` every row runs to
``max_new_tokens`` in both samplers.

    .venv/bin/python benchmarks/generation_throughput.py --threads 1         # both workloads, ~3 min on 2 cores
    .venv/bin/python benchmarks/generation_throughput.py --workload realistic --threads 2 --repeat 3
    .venv/bin/python benchmarks/generation_throughput.py --workload sft --sandbox /tmp/alignkit-bench-online-sandbox
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REALISTIC_SHAPE = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                       intermediate_size=1408, vocab_size=32000, max_position_embeddings=1024)
SPECIALS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|unk|>"]
TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <|end|> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def sandbox_workload(root: Path, num_prompts: int) -> tuple[Any, Any, list[Any]]:
    """The sandbox's tokenizer + random-init tiny Llama and its held-out chat prompts."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.apps.sandbox_build import SandboxSpec, build_world, read_prompts

    world = root / "world"
    world.mkdir(parents=True)
    build_world(world, SandboxSpec(seed=0, corpus_size=600, train_prompts=10, eval_prompts=num_prompts))
    prompts = read_prompts(world / "data" / "prompts_eval.jsonl")
    return load_causal_lm(str(world / "base"), device="cpu"), load_tokenizer(str(world / "base")), prompts


def realistic_workload(num_prompts: int, seed: int = 0) -> tuple[Any, Any, list[Any]]:
    """A Llama-shaped random model (hidden 512, 8 layers, vocab 32k), a word-level tokenizer, random prompts."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(REALISTIC_SHAPE["vocab_size"] - len(SPECIALS))]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(SPECIALS + words)}, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|end|>",
                                        unk_token="<|unk|>", additional_special_tokens=SPECIALS[2:4])
    tokenizer.chat_template = TEMPLATE
    config = LlamaConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, tie_word_embeddings=False, **REALISTIC_SHAPE)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    rng = random.Random(seed + 1)
    prompts = [[{"role": "user", "content": " ".join(rng.choice(words) for _ in range(rng.randint(16, 128)))}]
               for _ in range(num_prompts)]
    return model, tokenizer, prompts


def run_alignkit(model: Any, tokenizer: Any, prompts: list[Any], batch_size: int, max_new_tokens: int,
                 seed: int) -> tuple[int, float, float]:
    """(generated tokens, seconds, CPU seconds) of alignkit's ``generate``."""
    from alignkit.sampling.generate import SamplingConfig, generate

    start, cpu = time.perf_counter(), time.process_time()
    samples = generate(model, tokenizer, prompts, SamplingConfig(max_new_tokens=max_new_tokens,
                                                                 batch_size=batch_size, seed=seed))
    return sum(len(s.response_ids) for s in samples), time.perf_counter() - start, time.process_time() - cpu


def run_plain(model: Any, tokenizer: Any, prompts: list[Any], batch_size: int, max_new_tokens: int,
              seed: int) -> tuple[int, float, float]:
    """(generated tokens, seconds, CPU seconds) of plain ``model.generate`` on left-padded batches in file order."""
    import torch

    from alignkit.sampling.generate import encode_prompts, left_pad

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    start, cpu = time.perf_counter(), time.process_time()
    encoded = encode_prompts(tokenizer, prompts)  # timed: alignkit's time includes its tokenization too
    tokens = 0
    with torch.no_grad():
        for b in range(0, len(encoded), batch_size):
            input_ids, attention = left_pad(encoded[b: b + batch_size], pad)
            torch.manual_seed(seed + b)
            out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=pad)
            for row in out[:, input_ids.shape[1]:].tolist():
                tokens += row.index(eos) + 1 if eos in row else len(row)
    return tokens, time.perf_counter() - start, time.process_time() - cpu


def sft_workload(sandbox: Path, num_prompts: int) -> tuple[Any, Any, list[Any]]:
    """A built sandbox's SFT model and its held-out chat prompts."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.apps.sandbox_build import read_prompts

    model_dir = sandbox / "sft" / "model"
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"--sandbox {sandbox}: no sft/model (build one, e.g. with benchmarks/online_dpo_step.py)")
    prompts = read_prompts(sandbox / "world" / "data" / "prompts_eval.jsonl")
    prompts = (prompts * (num_prompts // max(1, len(prompts)) + 1))[:num_prompts]
    return load_causal_lm(str(model_dir), device="cpu"), load_tokenizer(str(model_dir)), prompts


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import transformers

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, Python {platform.python_version()}, load avg {load:.2f}")


def bench(name: str, model: Any, tokenizer: Any, prompts: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    runners = {"alignkit": run_alignkit, "transformers": run_plain}
    for fn in runners.values():  # warm-up: first calls pay one-off costs
        fn(model, tokenizer, prompts[: min(4, len(prompts))], 4, 4, args.seed)
    results: dict[str, list[tuple[int, float, float]]] = {k: [] for k in runners}
    for r in range(args.repeat):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for key in order:
            results[key].append(runners[key](model, tokenizer, prompts, args.batch_size, args.max_new_tokens,
                                             args.seed))
    best = {k: max(t / s for t, s, _ in v) for k, v in results.items()}
    median = {k: statistics.median(t / s for t, s, _ in v) for k, v in results.items()}
    cpu = {k: statistics.median(t / c for t, _, c in v) for k, v in results.items()}
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n## {name}: {params:.1f}M parameters, {len(prompts)} prompts, batch {args.batch_size}, "
          f"max_new_tokens {args.max_new_tokens}, sampling T=1, {args.repeat} runs each; load avg "
          f"{os.getloadavg()[0]:.2f}")
    print("| sampler | tokens/s fastest | median (runs) | tokens/CPU-s median (runs) | tokens/run |")
    print("|---|--:|--:|--:|--:|")
    for key, runs in results.items():
        listed = ", ".join(f"{t / s:.0f}" for t, s, _ in runs)
        listed_cpu = ", ".join(f"{t / c:.0f}" for t, _, c in runs)
        print(f"| {key} | {best[key]:.0f} | {median[key]:.0f} ({listed}) | {cpu[key]:.0f} ({listed_cpu}) | "
              f"{statistics.mean(t for t, _, _ in runs):.0f} |")
    ratio = best["alignkit"] / best["transformers"]
    print(f"alignkit / transformers: {ratio:.2f}x fastest, {median['alignkit'] / median['transformers']:.2f}x "
          f"median, {cpu['alignkit'] / cpu['transformers']:.2f}x per CPU second")
    return {"workload": name, "tokens_per_s": best, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["sandbox", "realistic", "sft", "both", "all"], default="both",
                        help="both: sandbox + realistic; all: + sft (needs --sandbox)")
    parser.add_argument("--sandbox", help="a built sandbox directory (workload sft)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: sandbox 64, realistic 16, sft 16")
    parser.add_argument("--num-prompts", type=int, default=None, help="default: sandbox 128, realistic 32, "
                                                                         "sft 128")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    names = {"both": ["sandbox", "realistic"], "all": ["sandbox", "realistic", "sft"]}.get(args.workload,
                                                                                          [args.workload])
    if "sft" in names and not args.sandbox:
        raise SystemExit("workload sft needs --sandbox DIR (a built sandbox)")
    with tempfile.TemporaryDirectory(prefix="alignkit-genbench-") as tmp:
        for name in names:
            defaults = {"sandbox": (64, 128), "realistic": (16, 32), "sft": (16, 128)}[name]
            run_args = argparse.Namespace(**vars(args))
            run_args.batch_size = args.batch_size or defaults[0]
            num_prompts = args.num_prompts or defaults[1]
            if name == "sandbox":
                model, tokenizer, prompts = sandbox_workload(Path(tmp), num_prompts)
            elif name == "sft":
                model, tokenizer, prompts = sft_workload(Path(args.sandbox), num_prompts)
            else:
                model, tokenizer, prompts = realistic_workload(num_prompts, args.seed)
            bench(name, model, tokenizer, prompts, run_args)


if __name__ == "__main__":
    main()
