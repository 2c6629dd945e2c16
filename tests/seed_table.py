"""Run the behaviour tests on several sandbox draws and print the pass table (``make test-seeds``).

Every behaviour claim (gold rises, a reward model agrees with gold, over-optimisation shows, the demo passes) must
hold on any draw, not the one it was written on: the sandbox's SFT weights, hence its sampled data and every run,
change with float rounding between CPUs. This runs ``pytest -m behaviour --sandbox-seed S`` for each seed, keeps a
JUnit XML file per seed, and prints one row per test with its result on each seed (markdown, for a closing note).

    python tests/seed_table.py --seeds 0 1 2 3 4 [--out seed-runs] [-- extra pytest args]

Exit status 0 only when every test passed on every seed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

MARK = {"passed": "pass", "failed": "FAIL", "error": "ERROR", "skipped": "skip"}


def run_seed(seed: int, out: Path, extra: list[str]) -> tuple[Path, float]:
    report = out / f"seed-{seed}.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "behaviour", f"--sandbox-seed={seed}", "-rA",
               f"--junitxml={report}", f"--basetemp={out / f'tmp-{seed}'}", *extra]
    print(f"[seeds] seed {seed}: {' '.join(command[1:])}", flush=True)
    start = time.monotonic()
    with (out / f"seed-{seed}.log").open("w") as log:
        subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    return report, time.monotonic() - start


def outcomes(report: Path) -> dict[str, str]:
    """test id -> passed | failed | error | skipped, from one JUnit XML file (empty when pytest wrote none)."""
    if not report.exists():
        return {}
    found = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        result = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                result = "failed" if child.tag == "failure" else child.tag
        found[name] = result
    return found


def table(results: dict[int, dict[str, str]]) -> str:
    seeds = sorted(results)
    tests = sorted({name for found in results.values() for name in found})
    lines = ["| test | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for name in tests:
        lines.append(f"| {name} | " + " | ".join(MARK[results[s].get(name, "error")] if name in results[s]
                                                 else "–" for s in seeds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("seed-runs"))
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    args.out.mkdir(parents=True, exist_ok=True)
    results, seconds = {}, {}
    for seed in args.seeds:
        report, seconds[seed] = run_seed(seed, args.out, extra)
        results[seed] = outcomes(report)
        failed = [n for n, r in results[seed].items() if r in ("failed", "error")]
        print(f"[seeds] seed {seed}: {len(results[seed]) - len(failed)} of {len(results[seed])} passed in "
              f"{seconds[seed] / 60:.1f} min" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    print(table(results))
    ok = all(found and all(r in ("passed", "skipped") for r in found.values()) for found in results.values())
    print(f"[seeds] {'every behaviour test passed on every seed' if ok else 'FAILURES'} "
          f"(logs: {args.out}/seed-N.log)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
