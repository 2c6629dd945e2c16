"""Every online method raises the sandbox's gold reward, with KL(pi || pi_init) reported (slow: trains each method).

Each run starts from the sandbox SFT policy, labels its samples with the gold reward, and compares the held-out
gold reward (all 200 held-out prompts, 4 samples each at temperature 1, the same prompts and seed before and after:
common random numbers) at step 0 and at the end. The claim is statistical: the paired gain over prompts must
exceed 0.05 and its one-sided 97.7% lower bound (gain - 2 se) must be above zero. Measured with 12 steps and one
sample of 128 prompts, the gain's standard error was ~0.09 against gains of 0.03-0.45, so a draw could fail
(iterative_dpo: +0.03 on one machine, +0.22 on another); with 4 samples of 200 prompts it is ~0.04, and 24 steps
give every method a gain of 0.16-0.54 (seed 0), far from that noise. tests/seed_table.py runs it for seeds 0-4.
"""

from __future__ import annotations

import json

import pytest

from alignkit.recipes import load_config, train
from alignkit.recipes.common.online_methods import ONLINE_METHODS

STEPS = 24
# methods whose paper defaults are tuned for 7B models and need a sandbox-sized step
SETTINGS = {
    "sppo": {"loss_params": {"beta": 0.1}},
    # lr 3e-4 (the others') took selm to KL 4.17 of the 5 allowed on seed 0 in 24 steps; 2e-4: KL 0.34-0.59 and
    # gains +0.16..+0.34 (gain/se >= 4.3) over seeds 0-4
    "selm": {"loss_params": {"beta": 0.1}, "optim": {"lr": 2e-4}},
    "nash_md": {"optim": {"lr": 5e-4}},  # 1e-3 (tuned for 12 steps) reached KL 5.8 in 24 steps on seed 4
    # best vs worst of 4 samples (K=2 is covered by iterative_dpo, apo and online_ipo)
    "online_dpo": {"online": {"num_samples": 4}},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(ONLINE_METHODS))
def test_online_method_raises_gold_reward(sandbox, tmp_path, method):
    world = sandbox.world / "data"
    settings = dict(recipe="online", model={"path": str(sandbox.sft_model)},
                    data={"path": str(world / "prompts_train.jsonl"), "eval_path": str(world / "prompts_eval.jsonl")},
                    online={"method": method, "reward": "sandbox-gold", "gold": "sandbox-gold", "max_new_tokens": 24,
                            "eval_prompts": 200, "eval_samples": 4, "rounds": 3},
                    optim={"lr": 3e-4, "warmup_ratio": 0.0}, batch_size=8, max_steps=STEPS, output_dir=str(tmp_path),
                    progress=False, resume="never", log_steps=4, seed=sandbox.spec.seed)
    for key, value in SETTINGS.get(method, {}).items():
        settings[key] = {**settings.get(key, {}), **value}
    train(load_config(None, **settings))
    curve = json.loads((tmp_path / "summary.json").read_text())["online_eval"]
    before, after = curve[0], curve[-1]
    gain, se = after["gold_gain"], after["gold_gain_se"]
    numbers = (f"{method}: gold {before['gold']:.3f} -> {after['gold']:.3f}, gain {gain:+.3f} ± {se:.3f} (paired se), "
               f"KL {after['kl']:.3f}")
    print(numbers)
    assert before["step"] == 0 and after["step"] == STEPS
    assert gain == pytest.approx(after["gold"] - before["gold"], abs=1e-9), "the same prompts, paired"
    assert gain > 0.05 and gain - 2 * se > 0, numbers
    assert 0 < after["kl"] < 5, numbers


@pytest.mark.slow
def test_best_of_n_baseline_raises_gold_within_its_kl_bound(sandbox):
    """The Best-of-N baseline the online methods are compared with: gold of the best of 4 SFT samples beats a single
    sample, at KL(BoN || pi) <= log 4 - 3/4 = 0.636 nats."""
    import torch

    from alignkit.rewards.judges import plain_text
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.decoding.best_of_n import best_of_n, best_of_n_kl
    from alignkit.sampling.generate import SamplingConfig, generate
    from alignkit.sandbox import world as gold_world
    from alignkit.data.prompts import load_prompt_rows

    prompts = [r.prompt for r in load_prompt_rows(sandbox.world / "data" / "prompts_eval.jsonl")[:128]]
    model, tokenizer = load_causal_lm(str(sandbox.sft_model)), load_tokenizer(str(sandbox.sft_model))
    samples = generate(model, tokenizer, prompts, SamplingConfig(num_samples=4, max_new_tokens=24, seed=3 + sandbox.spec.seed))
    gold = torch.tensor([gold_world.gold_reward(plain_text(prompts[s.prompt_index]), s.text) for s in samples])
    table = gold.view(len(prompts), 4)
    best = table.gather(1, best_of_n(table)[:, None]).squeeze(1)
    print(f"best-of-4: gold {table[:, 0].mean():.3f} -> {best.mean():.3f}, KL <= {best_of_n_kl(4):.3f}")
    assert best.mean() > table[:, 0].mean() + 0.2
    assert best_of_n_kl(4) == pytest.approx(0.6363, abs=1e-4)
