"""The ``alignkit`` command line: demo | train | eval | generate | sandbox build | methods."""

from __future__ import annotations

import argparse
import os
import sys

from alignkit import __version__


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_demo(args: argparse.Namespace) -> int:
    from alignkit.apps.demo import run_demo

    result = run_demo(args.out, seed=args.seed, eval_prompts=args.eval_prompts, progress=not args.quiet)
    return 0 if result["summary"]["passed"] else 1


def relaunch_distributed(num_processes: int, argv: list[str]) -> int:
    """Run ``alignkit <argv>`` in ``num_processes`` processes with torch.distributed (gloo on CPU, NCCL on GPUs)."""
    import socket
    import subprocess

    with socket.socket() as probe:  # a free local port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "alignkit", *argv]
    return subprocess.call(command)


def cmd_train(args: argparse.Namespace) -> int:
    from alignkit.recipes import load_config, train

    if args.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        argv = ["train", *(["--config", args.config] if args.config else []), *args.overrides]
        return relaunch_distributed(args.num_processes, argv)
    config = load_config(args.config, args.overrides)
    try:
        result = train(config)
    finally:
        release_process_group()
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(f"[alignkit] trained {result.steps} steps in {result.seconds:.1f}s; model: {result.model_dir}")
    return 0


def release_process_group() -> None:
    """Destroy torch.distributed's process group (several processes) before the interpreter exits: left to the
    interpreter's teardown, gloo's threads can abort a process that has finished ("terminate called without an
    active exception", seen once in CI on a 2-process run after its last barrier)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_eval(args: argparse.Namespace) -> int:
    from alignkit.eval.evaluate import evaluate, load_prompts, model_names, protocol_rows, ratings_rows, table_rows
    from alignkit.rewards.judges import get_judge
    from alignkit.rewards.llm_judge import load_template
    from alignkit.report.tables import markdown_table
    from alignkit.sampling.generate import SamplingConfig

    try:
        models = model_names(args.model, baseline=args.baseline)
        llm_options = dict(template=load_template(args.judge_template), max_new_tokens=args.judge_max_new_tokens,
                           max_answer_tokens=args.judge_max_answer_tokens)
        judge = get_judge(args.judge, mode=args.judge_mode, **llm_options)
        reward_judges = [get_judge(name, mode="pointwise", **llm_options) for name in args.reward_judge]
    except (KeyError, ValueError) as exc:
        print(f"alignkit: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    prompts = load_prompts(args.prompts)[: args.num_prompts]
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              seed=args.seed, batch_size=args.batch_size)
    html = False if args.no_html else (args.html or True)
    report = evaluate(models, args.baseline, prompts, judge, reference=args.reference, sampling=sampling,
                      out_dir=args.out, reward_judges=reward_judges, length_control=not args.no_length_control,
                      all_pairs=True if args.all_pairs else None, n_bootstrap=args.bootstrap, seed=args.seed,
                      html=html)
    print(markdown_table(table_rows(report)))
    if report["judge_mode"] == "pairwise":
        print("\n" + markdown_table(protocol_rows(report)))
    if len(report["models"]) > 2:
        print("\n" + markdown_table(ratings_rows(report)))
    page = "" if html is False else f", {args.html or 'eval.html'}"
    print(f"[alignkit] report: {args.out}/eval.json, eval.md{page}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``alignkit generate``: sample responses to a prompts file and write them as JSONL (atomically); with
    ``--best-of N``, keep the best of N samples per prompt under a pointwise judge (Stiennon et al. 2020,
    "Learning to summarize from human feedback") and report the analytic bound
    ``KL(BoN || pi) <= log N - (N - 1) / N`` (Beirami et al. 2024)."""
    import time

    import torch

    from alignkit.eval.evaluate import load_prompts
    from alignkit.rewards.judges import get_judge, is_pairwise
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.decoding.best_of_n import best_of_n, best_of_n_kl
    from alignkit.sampling.generate import SamplingConfig, generate
    from alignkit.utils.io import write_jsonl

    def fail(message: str) -> int:
        print(f"alignkit: error: {message}", file=sys.stderr)
        return 2

    judge = None
    if args.best_of is not None:
        if args.best_of < 1:
            return fail("--best-of must be >= 1")
        if args.num_samples != 1:
            return fail("--best-of N samples N per prompt and keeps one; leave --num-samples at 1")
        if not args.reward:
            return fail("--best-of needs --reward JUDGE (e.g. sandbox-gold or rm:PATH)")
        try:
            judge = get_judge(args.reward, mode="pointwise")
        except (KeyError, ValueError) as exc:
            return fail(exc.args[0] if exc.args else str(exc))
        if is_pairwise(judge):
            return fail(f"--reward {args.reward} compares two responses; best-of-n needs a pointwise judge")
    elif args.reward:
        return fail("--reward is used with --best-of N")
    try:
        config = SamplingConfig(num_samples=args.best_of or args.num_samples, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                batch_size=args.batch_size, seed=args.seed, backend=args.backend)
    except ValueError as exc:
        return fail(str(exc))
    prompts = load_prompts(args.prompts)[: args.num_prompts]
    tokenizer = load_tokenizer(args.model)
    start = time.perf_counter()
    if args.backend == "vllm":  # vLLM loads the weights itself: no HF copy of the model
        from alignkit.sampling.vllm_backend import generate_vllm

        samples = generate_vllm(args.model, tokenizer, prompts, config)
    else:
        model = load_causal_lm(args.model, dtype=args.dtype)
        samples = generate(model, tokenizer, prompts, config, progress=not args.quiet, desc="generate")
    seconds = time.perf_counter() - start
    k = config.num_samples
    rows = [{"prompt": prompts[s.prompt_index], "prompt_index": s.prompt_index, "sample_index": j % k,
             "response": s.text, "response_ids": s.response_ids, "logprobs": s.logprobs, "finished": s.finished}
            for j, s in enumerate(samples)]
    tokens = sum(len(s.response_ids) for s in samples)
    summary = (f"[alignkit] generated {len(samples)} samples for {len(prompts)} prompts in {seconds:.1f}s "
               f"({tokens / max(seconds, 1e-9):.0f} tokens/s, {sum(s.finished for s in samples)} ended with EOS)")
    if judge is not None:
        rewards = judge.score([r["prompt"] for r in rows], [s.as_response(r["prompt"]) for s, r in zip(samples, rows)])
        total = torch.tensor(rewards["total"], dtype=torch.float64).view(len(prompts), k)
        best = best_of_n(total)
        rows = [dict(rows[p * k + int(j)], reward=float(total[p, j]), best_of=k) for p, j in enumerate(best)]
        kept = torch.tensor([r["reward"] for r in rows], dtype=torch.float64)
        summary += (f"\n[alignkit] best-of-{k} under {getattr(judge, 'name', args.reward)}: mean reward "
                    f"{kept.nanmean().item():.4f} kept vs {total.nanmean().item():.4f} over all samples; "
                    f"KL(best-of-{k} || policy) <= log {k} - ({k}-1)/{k} = {best_of_n_kl(k):.4f} nats")
    write_jsonl(args.out, rows)
    print(summary)
    print(f"[alignkit] wrote {len(rows)} rows to {args.out}")
    return 0


def cmd_sandbox_build(args: argparse.Namespace) -> int:
    from alignkit.apps.sandbox_build import SandboxSpec, build

    paths = build(args.out, SandboxSpec(seed=args.seed, label_noise=args.label_noise))
    print(f"[alignkit] sandbox ready: base model {paths.base_model}, SFT model {paths.sft_model}, "
          f"datasets {paths.datasets}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from alignkit.apps.methods import methods_table, update_readme

    if args.update_readme:
        changed = update_readme(args.update_readme)
        print(f"[alignkit] {args.update_readme}: methods table {'updated' if changed else 'already current'}")
    else:
        print(methods_table())
    return 0


class _TrainHelp(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description="Align generative models with human preferences.")
    parser.add_argument("--version", action="version", version=f"alignkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole story on the built-in sandbox (a few minutes on a CPU)")
    demo.add_argument("--out", default="alignkit-demo", help="output directory (default: alignkit-demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--eval-prompts", type=int, default=300, help="held-out prompts for the final evaluation")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.set_defaults(fn=cmd_demo)

    from alignkit.config import options_help

    train = sub.add_parser("train", help="train a policy (sft | preference) from a YAML config",
                           formatter_class=_TrainHelp,
                           epilog="overrides are KEY=VALUE pairs, e.g. optim.lr=1e-5 loss_params.beta=0.2\n\n"
                                  "options:\n" + options_help())
    train.add_argument("--config", help="YAML file with the options below")
    train.add_argument("--num-processes", type=int, default=1,
                       help="data-parallel processes (torch.distributed; gloo on CPU). `accelerate launch` and "
                            "`torchrun` work too: batch_size is per process")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any option")
    train.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="sample from models and compare them with a baseline using a judge "
                                     "(`alignkit eval rm --help`: evaluate reward models on preference data)",
                        epilog="reward models: alignkit eval rm --model PATH --data FILE --out DIR (see eval rm --help)")
    ev.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                    help="model to evaluate (repeat; several models get a Bradley-Terry ratings table). NAME "
                         "defaults to the folder's name, or to its parent folders where two models share it; "
                         "names must differ from each other and from 'baseline'")
    ev.add_argument("--baseline", required=True, help="baseline model directory")
    ev.add_argument("--reference", help="reference model for the KL estimate (default: the baseline)")
    ev.add_argument("--prompts", required=True, help="held-out prompts: any data file with a prompt field")
    ev.add_argument("--judge", default="sandbox-gold",
                    help="sandbox-gold | sandbox-gold-<group> | rm:PATH (reward model) | llm:PATH (local causal LM)")
    ev.add_argument("--judge-mode", choices=("pairwise", "pointwise"), default="pairwise",
                    help="for llm: judges: compare two answers (both orders) or rate each 1-10")
    ev.add_argument("--judge-template", metavar="FILE",
                    help="llm: judge prompt template ({question}, {answer_a}, {answer_b} | {answer})")
    ev.add_argument("--judge-max-new-tokens", type=int, default=32, help="llm: judge output length")
    ev.add_argument("--judge-max-answer-tokens", type=int, default=512, help="llm: judge sees at most this much")
    ev.add_argument("--reward-judge", action="append", default=[], metavar="JUDGE",
                    help="extra pointwise judge for mean rewards (repeat), e.g. sandbox-gold or rm:PATH")
    ev.add_argument("--all-pairs", action="store_true",
                    help="pairwise judges: also compare every two models for the ratings (pointwise: always)")
    ev.add_argument("--no-length-control", action="store_true", help="skip the length-controlled win rate")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the rating intervals")
    ev.add_argument("--html", metavar="PATH", help="HTML report path (default: OUT/eval.html)")
    ev.add_argument("--no-html", action="store_true", help="no HTML report")
    ev.add_argument("--out", default="eval-report", help="report directory")
    ev.add_argument("--num-prompts", type=int, default=None)
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(fn=cmd_eval)

    gen = sub.add_parser("generate", help="sample responses to prompts (HF generate or vLLM), optionally best-of-n "
                                          "under a judge; writes JSONL")
    gen.add_argument("--model", required=True, help="model directory (or hub name)")
    gen.add_argument("--prompts", required=True,
                     help="JSONL with a 'prompt' field per line (e.g. the sandbox's data/prompts_eval.jsonl) or any "
                          "preference data file")
    gen.add_argument("--out", required=True, help="output JSONL: prompt, prompt_index, sample_index, response, "
                                                  "response_ids, logprobs, finished (+ reward, best_of)")
    gen.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    gen.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0: off")
    gen.add_argument("--seed", type=int, default=0, help="samples depend on the seed and the batch size")
    gen.add_argument("--batch-size", type=int, default=64)
    gen.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                     help="hf: transformers generate; vllm: pip install alignkit[vllm] (GPU)")
    gen.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                     help="hf backend: auto = fp32 on CPU, bf16 on capable GPUs")
    gen.add_argument("--best-of", type=int, metavar="N", help="sample N per prompt, keep the best under --reward")
    gen.add_argument("--reward", metavar="JUDGE", help="pointwise judge for --best-of: sandbox-gold | "
                                                      "sandbox-gold-<group> | rm:PATH | llm:PATH")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(fn=cmd_generate)

    sandbox = sub.add_parser("sandbox", help="the built-in toy world with a known gold reward")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    sb = sandbox_sub.add_parser("build", help="write tokenizer, corpus, base and SFT models, datasets (cached)")
    sb.add_argument("--out", required=True)
    sb.add_argument("--seed", type=int, default=0)
    sb.add_argument("--label-noise", type=float, default=0.1, help="Bradley-Terry temperature (0: noiseless)")
    sb.set_defaults(fn=cmd_sandbox_build)

    methods = sub.add_parser("methods", help="every registry: recipes, losses, online methods, RL advantages, "
                                             "reward sources")
    methods.add_argument("--update-readme", metavar="README", help="rewrite the table between the README's markers")
    methods.set_defaults(fn=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["eval", "rm"]:  # the reward-model benchmark has its own parser (alignkit.eval.reward_model)
        from alignkit.eval.reward_model import build_rm_parser

        parser = build_rm_parser()
        args, extra = parser.parse_args(argv[2:]), []
    else:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    if args.command == "train" and len(overrides) == len(extra):
        args.overrides = [*args.overrides, *overrides]  # KEY=VALUE may come before or after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_libraries()
    from alignkit.config import ConfigError
    from alignkit.data.records import DataError
    from alignkit.engine.loop import TrainingError

    try:
        return args.fn(args)
    except (ConfigError, DataError, TrainingError, OSError) as exc:  # OSError: missing, unreadable, not a directory
        print(f"alignkit: error: {user_message(exc)}", file=sys.stderr)
        return 2


def user_message(exc: BaseException) -> str:
    """One line naming what is wrong: an OSError says which file and why ("permission denied: data.jsonl")."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror.lower()}: {exc.filename}"
    return str(exc).split("\n")[0] if isinstance(exc, OSError) else str(exc)


if __name__ == "__main__":
    sys.exit(main())
