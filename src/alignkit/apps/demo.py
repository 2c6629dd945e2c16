"""``alignkit demo``: the whole story on the sandbox, in a few minutes on a laptop CPU.

build the sandbox (cached) -> SFT the base policy -> label pairs sampled from the SFT policy with the gold
reward -> DPO -> evaluate DPO checkpoints against the SFT policy with the gold judge -> a printed table and a
report directory (metrics, training curves, reward vs KL, per-objective bars).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import yaml

from alignkit.config import to_dict
from alignkit.recipes import load_config, train
from alignkit.eval.evaluate import evaluate, table_rows
from alignkit.rewards.judges import SandboxGoldJudge
from alignkit.report.plots import plot_reward_vs_kl, plot_training_curves
from alignkit.report.tables import markdown_table
from alignkit.sampling.generate import SamplingConfig
from alignkit.apps.sandbox_build import SandboxSpec, build, read_prompts
from alignkit.engine.checkpoint import list_checkpoints
from alignkit.utils.io import write_json, write_text

DPO_SETTINGS: dict[str, Any] = {
    "recipe": "preference", "loss": "dpo", "loss_params": {"beta": 0.1},
    "optim": {"lr": 5e-4, "warmup_ratio": 0.1},
    "data": {"max_length": 160, "max_prompt_length": 32},
    "batch_size": 16, "epochs": 1.0, "log_steps": 5,
}
CHECKPOINTS = 4
WIN_RATE_TARGET = 0.65


def run_demo(out: str | Path = "alignkit-demo", seed: int = 0, eval_prompts: int = 300,
             progress: bool = True) -> dict[str, Any]:
    """Run the demo under ``out``; returns the evaluation report (also written to ``out/report``)."""
    out = Path(out)
    began = time.time()
    say = print if progress else (lambda *_: None)
    say(f"[demo] 1/4 sandbox world, SFT policy and preference data -> {out / 'sandbox'}")
    paths = build(out / "sandbox", SandboxSpec(seed=seed), progress=progress, log=say)
    say(f"[demo]     ready after {time.time() - began:.0f}s")

    say("[demo] 2/4 DPO on pairs labelled by the gold reward (Bradley-Terry noise)")
    settings = dict(DPO_SETTINGS, model={"path": str(paths.sft_model)}, output_dir=str(out / "dpo"), seed=seed,
                    progress=progress, resume="never")
    settings["data"] = dict(settings["data"], path=str(paths.datasets / "pairs.jsonl"))
    config = load_config(None, **settings)
    pairs = sum(1 for line in Path(config.data.path).open() if line.strip())
    steps = math.ceil(config.epochs * math.ceil(pairs / (config.batch_size * config.grad_accum)))
    config.save_steps = math.ceil(steps / CHECKPOINTS)
    config.save_total_limit = CHECKPOINTS + 1
    write_text(out / "dpo.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    result = train(config)
    say(f"[demo]     {result.steps} steps in {result.seconds:.0f}s; rerun with: alignkit train --config {out / 'dpo.yaml'}")

    say(f"[demo] 3/4 evaluating DPO checkpoints against the SFT policy on {eval_prompts} held-out prompts")
    checkpoints = {f"dpo@{int(p.name.split('-')[1])}": str(p / "model") for p in list_checkpoints(config.output_dir)}
    prompts = read_prompts(paths.world / "data" / "prompts_eval.jsonl")[:eval_prompts]
    judge = SandboxGoldJudge()
    report_dir = out / "report"
    report = evaluate(checkpoints, str(paths.sft_model), prompts, judge, out_dir=report_dir, baseline_name="sft",
                      sampling=SamplingConfig(max_new_tokens=64, batch_size=300, seed=seed), progress=progress)

    say("[demo] 4/4 plots and summary")
    plot_training_curves(Path(config.output_dir) / "metrics.jsonl", report_dir / "training_curves.png",
                         keys=["loss", "rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected",
                               "logps/chosen", "logps/rejected", "grad_norm"], title="DPO on the sandbox")
    points = [{"name": "DPO", "kl": max(0.0, m["kl"]["mean"]), "reward": m["reward/total"]["mean"],
               "reward_low": m["reward/total"]["low"], "reward_high": m["reward/total"]["high"],
               "label": m["model"]} for m in report["models"]]
    plot_reward_vs_kl(points, report_dir / "reward_vs_kl.png", title="Gold reward vs KL(policy || SFT)")
    final = report["models"][-1]
    passed = final["win_rate"]["rate"] >= WIN_RATE_TARGET and final["win_rate"]["low"] > 0.5
    table = markdown_table(table_rows(report, judge.objectives))
    summary = {"seconds": round(time.time() - began, 1), "final_model": final["model"],
               "win_rate": final["win_rate"], "passed": passed, "report_dir": str(report_dir)}
    write_json(report_dir / "demo.json", summary)
    write_text(report_dir / "README.md", "\n".join([
        "# alignkit demo", "", table, "", "![training curves](training_curves.png)",
        "![reward vs KL](reward_vs_kl.png)", "![objectives](objectives.png)", ""]))
    say("\n" + table + "\n")
    say(f"[demo] DPO ({final['model']}) beats SFT by the gold judge: win rate {final['win_rate']['rate']:.3f} "
        f"[{final['win_rate']['low']:.3f}, {final['win_rate']['high']:.3f}] "
        f"-> {'PASS' if passed else 'FAIL'} (target >= {WIN_RATE_TARGET}, CI low > 0.5)")
    say(f"[demo] done in {summary['seconds']:.0f}s; report: {report_dir}/README.md")
    return {"summary": summary, "report": report}
