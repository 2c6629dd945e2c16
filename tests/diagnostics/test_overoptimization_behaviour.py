"""Over-optimisation is visible in the sandbox (slow): RLOO on a proxy reward model trained on 128 noisy pairs keeps
raising the proxy reward while the gold reward peaks earlier and falls behind (measured: proxy +1.46, gold peak +0.81
at step 10, +0.71 at step 30), and the gold curve is fitted with d (a - b log d)
(Gao et al. 2023) and plotted. The longer run with its numbers is benchmarks/rl_overoptimization.py."""

from __future__ import annotations

import json

import pytest

from alignkit.recipes import load_config, train
from alignkit.diagnostics.overoptimization import fit_overoptimization, plot_overoptimization


@pytest.mark.slow
def test_proxy_reward_keeps_rising_while_gold_falls_behind(sandbox, tmp_path):
    rm = train(load_config(None, recipe="reward", model={"path": str(sandbox.sft_model)},
                           data={"path": str(sandbox.datasets / "pairs.jsonl"), "limit": 128, "max_length": 128,
                                 "max_prompt_length": 32},
                           optim={"lr": 1e-3, "warmup_ratio": 0.1}, batch_size=16, max_steps=40,
                           output_dir=str(tmp_path / "proxy"), progress=False, resume="never", seed=sandbox.spec.seed))
    data = sandbox.world / "data"
    train(load_config(None, recipe="rl", model={"path": str(sandbox.sft_model)},
                      data={"path": str(data / "prompts_train.jsonl"), "eval_path": str(data / "prompts_eval.jsonl")},
                      online={"reward": f"rm:{rm.model_dir}", "gold": "sandbox-gold", "max_new_tokens": 24,
                              "eval_every": 5, "eval_prompts": 48},
                      rl={"advantage": "rloo", "kl_coef": 0.0}, batch_size=8, max_steps=30,
                      optim={"lr": 1e-3, "warmup_ratio": 0.0, "schedule": "constant"},
                      output_dir=str(tmp_path / "rl"), progress=False, resume="never", log_steps=5,
                      seed=sandbox.spec.seed))
    evals = json.loads((tmp_path / "rl" / "summary.json").read_text())["online_eval"]
    kl = [max(0.0, r["kl"]) for r in evals]
    proxy = [r["proxy"] - evals[0]["proxy"] for r in evals]
    gold = [r["gold"] - evals[0]["gold"] for r in evals]
    fit = fit_overoptimization(kl, gold)
    png = plot_overoptimization(kl, proxy, gold, tmp_path / "overoptimization.png")
    print("step  KL     proxy   gold")
    for r, p, g in zip(evals, proxy, gold):
        print(f"{r['step']:4d} {r['kl']:6.2f} {p:+.3f} {g:+.3f}")
    print(f"fit d (a - b log d): a={fit.a:.3f} b={fit.b:.3f} R^2={fit.r2:.3f} d*={fit.d_star:.2f}")
    assert [r["step"] for r in evals] == [0, 5, 10, 15, 20, 25, 30]
    assert proxy[-1] > 0.5, "the proxy reward is optimised"
    assert proxy[-1] - gold[-1] > 0.4, "the gold reward falls behind the proxy it is optimised through"
    assert proxy[-1] >= max(proxy) - 0.05, "the proxy is still at its best at the end"
    assert gold.index(max(gold)) < len(gold) - 1, "while the gold reward peaked earlier"
    assert png.exists() and png.stat().st_size > 0 and fit.n == len(evals)
