"""Does a change leave every number the same? Run the demo and short runs of six recipes with one source tree, then
compare every JSON result with another tree's (a refactor, a pure move, must not change a single float).

    git worktree add /tmp/before <commit>          # or: git archive <commit> | tar -x -C /tmp/before
    python benchmarks/same_numbers.py run /tmp/before/src /tmp/numbers-before
    python benchmarks/same_numbers.py run src /tmp/numbers-after
    python benchmarks/same_numbers.py compare /tmp/numbers-before /tmp/numbers-after

``run`` imports alignkit from the given ``src`` directory (PYTHONPATH) in subprocesses of this Python: the demo
(sandbox build, SFT, DPO, evaluation on 300 prompts), then 4-6 steps of online DPO, GRPO, PPO (the example configs),
KTO, a reward model and SFT on the demo's sandbox. ``compare`` walks every ``*.json`` / ``*.jsonl`` outside
checkpoints and prints each difference, ignoring timings and paths; it exits 1 when a value differs or is missing
outside the saved configuration (settings in ``config.json`` and keys that only the new results have are listed but
do not fail). About 2 minutes a run on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IGNORED_KEYS = {"seconds", "train_seconds", "report_dir", "path", "output_dir"}


def alignkit(src: Path, out: Path, log: str, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    with open(out / log, "w") as handle:
        done = subprocess.run([sys.executable, *args], cwd=out, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:4])} failed; see {out / log}")


def run(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    alignkit(src, out, "demo.log", "-c", "from alignkit.apps.demo import run_demo; run_demo('demo', progress=False)")
    sandbox = "demo/sandbox"
    prompts = [f"model.path={sandbox}/sft/model", f"data.path={sandbox}/world/data/prompts_train.jsonl",
               f"data.eval_path={sandbox}/world/data/prompts_eval.jsonl", "max_steps=4", "online.eval_every=2",
               "online.eval_prompts=16", "resume=never"]
    for name, example in (("online", "online-dpo"), ("grpo", "grpo"), ("ppo", "ppo")):
        alignkit(src, out, f"{name}.log", "-m", "alignkit", "train", "--config", str(EXAMPLES / f"{example}.yaml"),
                 *prompts, f"output_dir=runs/{name}")
    pairs = [f"model.path={sandbox}/sft/model", f"data.path={sandbox}/datasets/pairs.jsonl", "max_steps=6",
             "batch_size=8", "resume=never"]
    alignkit(src, out, "kto.log", "-m", "alignkit", "train", "recipe=preference", "loss=kto", *pairs,
             "output_dir=runs/kto")
    alignkit(src, out, "reward.log", "-m", "alignkit", "train", "recipe=reward", *pairs, "output_dir=runs/reward")
    alignkit(src, out, "sft.log", "-m", "alignkit", "train", "recipe=sft", f"model.path={sandbox}/world/base",
             f"data.path={sandbox}/world/data/sft.jsonl", "max_steps=6", "batch_size=8", "resume=never",
             "output_dir=runs/sft")
    print(f"[same_numbers] results under {out}")


def differences(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key in IGNORED_KEYS or "second" in key or key.endswith("_path"):
                continue
            if key not in a or key not in b:
                found.append(f"{where}.{key}: only in {'after' if key in b else 'before'}")
            else:
                found += differences(a[key], b[key], f"{where}.{key}")
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [line for i, (x, y) in enumerate(zip(a, b)) for line in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def read(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def compare(before: Path, after: Path) -> int:
    files = sorted(p.relative_to(before) for p in before.rglob("*.json*")
                   if p.is_file() and "checkpoints" not in p.parts and p.suffix in (".json", ".jsonl"))
    failed = 0
    for rel in files:
        if not (after / rel).exists():
            print(f"missing after: {rel}")
            failed += 1
            continue
        try:
            found = differences(read(before / rel), read(after / rel), str(rel))
        except json.JSONDecodeError:
            continue  # tokenizer files and the like
        for line in found:
            kind = "setting" if rel.name == "config.json" else "new key" if line.endswith("only in after") else "NUMBER"
            print(f"{kind:8s}{line}")
            failed += kind == "NUMBER"
    print(f"[same_numbers] {len(files)} files compared; {failed} changed or missing values outside config.json")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run", help="demo + short recipe runs with alignkit from SRC, results under OUT")
    runner.add_argument("src", type=Path)
    runner.add_argument("out", type=Path)
    comparer = sub.add_parser("compare", help="every JSON result of BEFORE against AFTER")
    comparer.add_argument("before", type=Path)
    comparer.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.src, args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
