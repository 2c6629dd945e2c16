#!/usr/bin/env python
"""Reward over-optimisation in the sandbox (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization"):
optimise a proxy reward model trained on little data with ``recipe: rl`` and watch the held-out gold reward.

1. A proxy reward model (``recipe: reward``, Bradley-Terry, initialised from the SFT policy) is trained on a small
   slice (``--pairs``) of the sandbox's noisy preference pairs; its agreement with the gold reward is measured on
   500 other pairs.
2. ``recipe: rl`` (``--advantage``, default RLOO, KL coefficient ``--kl-coef``) optimises that proxy; every
   ``--eval-every`` steps the online Evaluator samples held-out prompts and records proxy reward, gold reward and
   KL(pi || pi_init).
3. Gold gains over step 0 are fitted with ``gold(d) = d (a - b log d)``, ``d = sqrt(KL)``
   (:func:`alignkit.diagnostics.overoptimization.fit_overoptimization`), and proxy and gold are plotted against d.

    .venv/bin/python benchmarks/rl_overoptimization.py --sandbox /tmp/sb --out /tmp/overopt   # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sandbox", required=True, help="sandbox directory (built there when missing)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--pairs", type=int, default=128, help="preference pairs the proxy is trained on")
    parser.add_argument("--rm-steps", type=int, default=40)
    parser.add_argument("--advantage", default="rloo")
    parser.add_argument("--rl-steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--kl-coef", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from alignkit.recipes import load_config
    from alignkit.data.formats import load_records
    from alignkit.diagnostics.overoptimization import (
        fit_overoptimization,
        plot_overoptimization,
    )
    from alignkit.models.loading import load_tokenizer
    from alignkit.rewards.model import load_reward_model, score
    from alignkit.apps.sandbox_build import SandboxSpec, build
    from alignkit.recipes import train

    began = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = SandboxSpec(seed=0, train_prompts=1200, eval_prompts=200, corpus_size=4000, sft_steps=300)
    sandbox = build(args.sandbox, spec, progress=False, log=lambda *_: None)
    pairs = sandbox.datasets / "pairs.jsonl"

    # 1. the proxy reward model, on a small slice of the noisy pairs
    rm_config = load_config(None, recipe="reward", model={"path": str(sandbox.sft_model)},
                            data={"path": str(pairs), "limit": args.pairs, "max_length": 128,
                                  "max_prompt_length": 32},
                            optim={"lr": 1e-3, "warmup_ratio": 0.1}, batch_size=16, max_steps=args.rm_steps,
                            seed=args.seed, output_dir=str(out / "proxy_rm"), progress=False, resume="never")
    rm_dir = train(rm_config).model_dir
    held = load_records(pairs)[0][-500:]
    rows = [json.loads(line) for line in pairs.read_text().splitlines()][-500:]
    tokenizer = load_tokenizer(str(rm_dir))
    rm = load_reward_model(str(rm_dir), tokenizer, device="cpu")
    chosen = score(rm, tokenizer, [r.prompt for r in held], [r.responses[r.ranking[0]] for r in held])
    rejected = score(rm, tokenizer, [r.prompt for r in held], [r.responses[r.ranking[1]] for r in held])
    gold_order = [row["gold_chosen"] > row["gold_rejected"] for row in rows]
    agree = [(float(c) > float(r)) == g for c, r, g, row in zip(chosen, rejected, gold_order, rows)
             if row["gold_chosen"] != row["gold_rejected"]]
    rm_accuracy = sum(agree) / len(agree)

    # 2. optimise the proxy
    data = sandbox.world / "data"
    rl_config = load_config(
        None, recipe="rl", model={"path": str(sandbox.sft_model)},
        data={"path": str(data / "prompts_train.jsonl"), "eval_path": str(data / "prompts_eval.jsonl")},
        online={"reward": f"rm:{rm_dir}", "gold": "sandbox-gold", "max_new_tokens": args.max_new_tokens,
                "eval_every": args.eval_every, "eval_prompts": args.eval_prompts, "generation_batch_size": 128},
        rl={"advantage": args.advantage, "kl_coef": args.kl_coef}, batch_size=8, max_steps=args.rl_steps,
        optim={"lr": args.lr, "warmup_ratio": 0.0, "schedule": "constant"}, seed=args.seed,
        output_dir=str(out / "rl"), progress=False, resume="never", log_steps=5)
    train(rl_config)
    evals = json.loads((out / "rl" / "summary.json").read_text())["online_eval"]

    # 3. fit and plot (gains over the initial policy; the fit is anchored at d = 0)
    kl = [max(0.0, row["kl"]) for row in evals]
    proxy = [row["proxy"] - evals[0]["proxy"] for row in evals]
    gold = [row["gold"] - evals[0]["gold"] for row in evals]
    fit = fit_overoptimization(kl, gold)
    title = f"{args.advantage} on a proxy RM from {args.pairs} pairs (gold agreement {rm_accuracy:.2f})"
    png = plot_overoptimization(kl, proxy, gold, out / "rl_overoptimization.png", title=title)
    peak = max(range(len(gold)), key=gold.__getitem__)
    result = {"pairs": args.pairs, "rm_gold_agreement": rm_accuracy, "advantage": args.advantage,
              "max_new_tokens": args.max_new_tokens,
              "kl_coef": args.kl_coef, "lr": args.lr, "rl_steps": args.rl_steps,
              "evals": [{"step": r["step"], "kl": r["kl"], "proxy": r["proxy"], "gold": r["gold"]} for r in evals],
              "fit": {"a": fit.a, "b": fit.b, "r2": fit.r2, "d_star": fit.d_star, "kl_star": fit.d_star ** 2,
                      "gold_star": fit.gold_star, "n": fit.n},
              "observed_gold_peak_step": evals[peak]["step"], "seconds": round(time.time() - began, 1)}
    (out / "rl_overoptimization.json").write_text(json.dumps(result, indent=2))
    print(f"proxy RM: {args.pairs} pairs, gold agreement {rm_accuracy:.3f} on {len(agree)} held-out pairs")
    print(f"{'step':>5s} {'KL':>7s} {'d':>6s} {'proxy':>7s} {'gold':>7s}   (gains over step 0)")
    for row, p, g in zip(evals, proxy, gold):
        print(f"{row['step']:5d} {row['kl']:7.2f} {max(0.0, row['kl']) ** 0.5:6.2f} {p:+7.3f} {g:+7.3f}")
    print(f"fit gold = d (a - b log d): a={fit.a:.4f} b={fit.b:.4f} R^2={fit.r2:.3f}; peak d*={fit.d_star:.2f} "
          f"(KL {fit.d_star ** 2:.2f}), fitted gold gain {fit.gold_star:+.3f}; observed gold peak at step "
          f"{evals[peak]['step']}; plot {png}; {result['seconds']} s")


if __name__ == "__main__":
    main()
