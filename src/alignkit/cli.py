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
    main_process = os.environ.get("RANK", "0") == "0"  # one line per run, not per process
    try:
        result = train(config)
    except KeyboardInterrupt as exc:  # Ctrl-C: where it stopped and how to go on, no traceback; 130 as shells do
        if main_process:
            print(f"alignkit: {exc if str(exc) else 'interrupted before training started'}", file=sys.stderr)
        return 130
    finally:
        release_process_group()
    if main_process and result.steps > result.start:  # (an already finished run said so itself)
        steps = result.steps - result.start
        span = f" ({result.start} -> {result.steps})" if result.start else ""
        print(f"[alignkit] trained {steps} steps{span} in {result.seconds:.1f}s; model: {result.model_dir}; logs: "
              f"{', '.join(result.logs)}")
    return 0


# `alignkit dpo ...` = `alignkit train recipe=preference loss=dpo ...` (like `trl dpo`): what each shortcut sets
SHORTCUTS: dict[str, dict[str, str]] = {
    **{loss: {"recipe": "preference", "loss": loss} for loss in ("dpo", "kto", "ipo", "orpo", "simpo", "cpo")},
    "sft": {"recipe": "sft"},
    "reward": {"recipe": "reward"},
    "grpo": {"recipe": "rl", "rl.advantage": "grpo"},
    "rloo": {"recipe": "rl", "rl.advantage": "rloo"},
    "ppo": {"recipe": "rl", "rl.advantage": "gae"},
    "online-dpo": {"recipe": "online", "online.method": "online_dpo"},
}


def cmd_shortcut(args: argparse.Namespace) -> int:
    """``alignkit dpo|sft|grpo|...``: ``alignkit train`` with the shortcut's settings added to the overrides. A
    config that sets one of them to something else is refused (which one was meant is unclear)."""
    from alignkit.config import ConfigError, given_settings

    implied = SHORTCUTS[args.command]
    given = given_settings(args.config, args.overrides)
    for key, value in implied.items():
        if key in given and str(given[key]) != value:
            where = args.config or "the overrides"
            raise ConfigError(f"{key}: `alignkit {args.command}` trains {key}={value}, but {where} sets "
                              f"{key}={given[key]}; remove it there or use `alignkit train`")
    args.overrides = [*(f"{key}={value}" for key, value in implied.items() if key not in given), *args.overrides]
    return cmd_train(args)


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
                      html=html, chat=not args.no_chat)
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
    from alignkit.sampling.base import chat_prompt
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
    asked = [chat_prompt(tokenizer, p, chat=not args.no_chat) for p in prompts]  # rows keep the prompts as given
    start = time.perf_counter()
    if args.backend == "vllm":  # vLLM loads the weights itself: no HF copy of the model
        from alignkit.sampling.vllm_backend import generate_vllm

        samples = generate_vllm(args.model, tokenizer, asked, config)
    else:
        model = load_causal_lm(args.model, dtype=args.dtype)
        samples = generate(model, tokenizer, asked, config, progress=not args.quiet, desc="generate")
    seconds = time.perf_counter() - start
    k = config.num_samples
    rows = [{"prompt": prompts[s.prompt_index], "prompt_index": s.prompt_index, "sample_index": j % k,
             "response": s.text, "response_ids": s.response_ids, "logprobs": s.logprobs, "finished": s.finished}
            for j, s in enumerate(samples)]
    tokens = sum(len(s.response_ids) for s in samples)
    summary = (f"[alignkit] generated {len(samples)} samples for {len(prompts)} prompts in {seconds:.1f}s "
               f"({tokens / max(seconds, 1e-9):.0f} tokens/s, {sum(s.finished for s in samples)} ended with EOS)")
    if judge is not None:
        rewards = judge.score([asked[s.prompt_index] for s in samples],
                              [s.as_response(asked[s.prompt_index]) for s in samples])
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
    """``alignkit methods [NAME] [--family F]``: readable blocks in a terminal; ``--markdown`` the README's tables;
    ``--update-readme`` rewrites them in a README."""
    from alignkit.apps.methods import methods_table, methods_text, update_readme

    try:
        if args.update_readme:
            changed = update_readme(args.update_readme)
            print(f"[alignkit] {args.update_readme}: methods table {'updated' if changed else 'already current'}")
        elif args.markdown:
            print(methods_table())
        else:
            print(methods_text(args.name, args.family))
    except ValueError as exc:  # no match; a README without the markers
        print(f"alignkit: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _no_default(value: object) -> bool:
    """Nothing worth showing as a default: None, a false flag, an empty list, argparse's SUPPRESS (0 is shown)."""
    return value is None or value is False or value == [] or value == argparse.SUPPRESS


class _DefaultsHelp(argparse.HelpFormatter):
    """Every option's default in its help text ("(default: 64)"), unless the text already names it or there is
    none to show (None, false flags, empty lists)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or _no_default(action.default) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _TrainHelp(argparse.RawDescriptionHelpFormatter, _DefaultsHelp):
    """The options list kept as written, and every argument's default shown."""


class _Parser(argparse.ArgumentParser):
    """A subcommand parser whose epilog may be built only when its help is shown (``epilog_fn``): the recipe list
    imports every recipe (torch), which ``alignkit --version`` or ``alignkit methods`` need not pay for."""

    def __init__(self, *args: object, epilog_fn: object = None, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _DefaultsHelp)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.epilog_fn = epilog_fn

    def add_argument(self, *args: object, **kwargs: object) -> argparse.Action:
        """An option given no help text still shows its default."""
        if kwargs.get("help") is None and not _no_default(kwargs.get("default")) and kwargs.get("action") is None:
            kwargs["help"] = "(default: %(default)s)"
        return super().add_argument(*args, **kwargs)  # type: ignore[arg-type]

    def format_help(self) -> str:
        if callable(self.epilog_fn):
            self.epilog = self.epilog_fn()
        return super().format_help()


def train_epilog() -> str:
    """``alignkit train --help`` after the arguments: overrides, the registered recipes, every config option."""
    from alignkit.config import options_help
    from alignkit.recipes import RECIPES

    recipes = "\n".join(f"  {recipe.name}: {recipe.summary}" for recipe in RECIPES.values())
    return ("overrides are KEY=VALUE pairs, e.g. optim.lr=1e-5 loss_params.beta=0.2; TRL's names work too "
            "(learning_rate=1e-5 beta=0.2)\n\nrecipes (recipe: NAME; `alignkit methods --family recipes`):\n"
            f"{recipes}\n\noptions:\n{options_help()}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``train`` and its shortcuts (``alignkit dpo`` ...) take: a config file, processes, overrides."""
    parser.add_argument("--config", help="YAML file with the options of `alignkit train --help`")
    parser.add_argument("--num-processes", type=int, default=1,
                        help="data-parallel processes (torch.distributed; gloo on CPU). `accelerate launch` and "
                             "`torchrun` work too: batch_size is per process")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any option")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description="Align generative models with human preferences.")
    parser.add_argument("--version", action="version", version=f"alignkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="the whole story on the built-in sandbox (a few minutes on a CPU)")
    demo.add_argument("--out", default="alignkit-demo", help="output directory (default: alignkit-demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--eval-prompts", type=int, default=300, help="held-out prompts for the final evaluation")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.set_defaults(fn=cmd_demo)

    train = sub.add_parser("train", help="train from a YAML config: any recipe (sft, preference, reward, online, rl, "
                                         "...; listed in `alignkit train --help`)",
                           formatter_class=_TrainHelp, epilog_fn=train_epilog)
    add_train_arguments(train)
    train.set_defaults(fn=cmd_train)
    for name, implied in SHORTCUTS.items():
        sets = " ".join(f"{key}={value}" for key, value in implied.items())
        shortcut = sub.add_parser(name, help=f"= train {sets}",
                                  description=f"alignkit {name} ... = alignkit train {sets} ... (a config that sets "
                                              "these to something else is an error)",
                                  epilog="every option and recipe: alignkit train --help")
        add_train_arguments(shortcut)
        shortcut.set_defaults(fn=cmd_shortcut)

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
    ev.add_argument("--no-chat", action="store_true",
                    help="give text prompts as plain text (default: as a user turn through the chat template of "
                         "the baseline's tokenizer, when it has one, as in training)")
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
    gen.add_argument("--no-chat", action="store_true",
                     help="give text prompts as plain text (default: as a user turn through the tokenizer's chat "
                          "template, when it has one, as in training)")
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
    methods.add_argument("name", nargs="?", default="", help="only the entries whose name contains this, e.g. dpo")
    methods.add_argument("--family", choices=("recipes", "losses", "online", "advantages", "rewards"),
                         help="only this registry")
    methods.add_argument("--markdown", action="store_true", help="print the README's markdown tables (all entries)")
    methods.add_argument("--update-readme", metavar="README", help="rewrite the table between the README's markers")
    methods.set_defaults(fn=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake (a bad setting, data, path or file) ends in one line,
    ``alignkit: error: ...``, and exit status 2; ``--debug`` (anywhere on the line) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [item for item in argv if item != "--debug"]
    if argv[:2] == ["eval", "rm"]:  # the reward-model benchmark has its own parser (alignkit.eval.reward_model)
        from alignkit.eval.reward_model import build_rm_parser

        parser = build_rm_parser()
        args, extra = parser.parse_args(argv[2:]), []
    else:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    if getattr(args, "overrides", None) is not None and len(overrides) == len(extra):
        args.overrides = [*args.overrides, *overrides]  # KEY=VALUE may come before or after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_libraries()
    from alignkit.config import ConfigError
    from alignkit.data.records import DataError
    from alignkit.engine.loop import TrainingError

    # OSError: missing, unreadable, not a directory; UnicodeDecodeError: a binary or mis-encoded text file
    try:
        return args.fn(args)
    except (ConfigError, DataError, TrainingError, OSError, UnicodeDecodeError) as exc:
        if debug:
            raise
        print(f"alignkit: error: {user_message(exc)}", file=sys.stderr)
        return 2


def user_message(exc: BaseException) -> str:
    """One line naming what is wrong: an OSError says which file and why ("permission denied: data.jsonl")."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror.lower()}: {exc.filename}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not {exc.encoding} text (byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}); " \
               "expected a text file"
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
