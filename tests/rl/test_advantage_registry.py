"""The advantage registry is open: an estimator registered by a user (here a "sign" advantage) works with ``recipe: rl``
through its spec (samples, group size, KL placement, whitening, value model); ``rl.advantage_params`` reach it; the
older ``rl.*`` keys set the built-in estimators' parameters exactly as before; mistakes are one-line ConfigErrors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from shared.decoding import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from alignkit.config import ConfigError, Range
from alignkit.recipes import load_config
from alignkit.recipes.rl import (
    RLObjective,
    RLRollout,
    RLState,
    advantage_params,
    kl_placement,
    num_samples,
)
from alignkit.rl import ADVANTAGE_SPECS, ADVANTAGES, Advantages, advantage_rows, get_advantage_spec, grpo, rloo
from alignkit.rl.advantages import broadcast_to_tokens, register_advantage, sequence_returns

ONE_PROCESS = SimpleNamespace(process_index=0, num_processes=1)
CALLS: list[dict] = []


@pytest.fixture
def sign():
    """A user's estimator: ``A_i = scale * sign(R_i - group mean)``, registered for the test only."""

    @register_advantage("sign", paper="a test", min_group_size=2, default_samples=2,
                        param_ranges={"scale": Range(gt=0)}, param_choices={"centre": ("mean", "zero")})
    def sign_advantage(rewards: torch.Tensor, mask: torch.Tensor, *, group_size: int, scale: float = 1.0,
                       centre: str = "mean") -> Advantages:
        """Sign of the reward relative to its group's mean, times ``scale``."""
        returns = sequence_returns(rewards, mask)
        grouped = returns.view(-1, group_size)
        base = grouped.mean(1, keepdim=True) if centre == "mean" else torch.zeros_like(grouped[:, :1])
        adv = scale * torch.sign(grouped - base).reshape(-1)
        CALLS.append({"group_size": group_size, "scale": scale, "centre": centre})
        return Advantages(broadcast_to_tokens(adv, mask), broadcast_to_tokens(returns, mask), adv)

    CALLS.clear()
    yield sign_advantage
    ADVANTAGES.pop("sign", None)
    ADVANTAGE_SPECS.pop("sign", None)


def rl_config(world, tmp_path, rl=None, online=None, **extra):
    values = {"recipe": "rl", "model": {"path": str(world / "base")},
              "data": {"path": str(world / "data" / "prompts_train.jsonl")},
              "online": {"reward": "sandbox-gold", "max_new_tokens": 6, "eval_prompts": 4, **(online or {})},
              "rl": rl or {}, "batch_size": 2, "max_steps": 2, "output_dir": str(tmp_path / "run"),
              "progress": False, "resume": "never"}
    values.update(extra)
    return load_config(None, **values)


def hook_for(config):
    state = RLState(config, None, None, 1)
    return RLRollout(config, None, None, None, state, RLObjective(config, state), [], [], ONE_PROCESS), state


def rollout_inputs(prompts: int = 3, k: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([2, 4, 3, 1, 4, 2, 3, 3][: prompts * k])
    mask = torch.arange(4)[None] < lengths[:, None]
    old = -torch.rand(prompts * k, 4, generator=g)
    ref = -torch.rand(prompts * k, 4, generator=g)
    values = torch.randn(prompts * k, 4, generator=g)
    scores = torch.randn(prompts * k, generator=g, dtype=torch.float64)
    return scores, old, ref, values, mask, torch.ones(prompts * k, dtype=torch.bool)


# ------------------------------------------------------------------------------------------------ the spec
def test_builtin_specs_carry_what_the_recipe_needs():
    gae, rl, gr, rb = (get_advantage_spec(n) for n in ("gae", "rloo", "grpo", "reinforce_baseline"))
    assert gae.defaults == {"gamma": 1.0, "lam": 0.95} and gae.runtime == ("values",)
    assert gae.needs_values and gae.whiten_by_default and not gae.kl_in_loss_by_default and gae.default_samples == 1
    assert rl.min_group_size == 2 and rl.default_samples == 4 and not rl.needs_values
    assert gr.kl_in_loss_by_default and gr.choices["scale_rewards"] == ("group", "batch", "none")
    assert rb.runtime == ("running", "reduce_sum") and rb.defaults == {"baseline": "batch"}
    assert gae.params({"gamma": 1}) == {"gamma": 1.0, "lam": 0.95}
    for overrides, error, text in [({"gama": 0.9}, KeyError, "did you mean 'gamma'"),
                                   ({"lam": 2.0}, ValueError, r"in \[0, 1\]"),
                                   ({"lam": "x"}, ValueError, "expects a number"),
                                   ({"values": 1}, KeyError, "the recipe supplies")]:
        with pytest.raises(error, match=text) as caught:
            gae.params(overrides)
        assert "rl.advantage_params." in caught.value.args[0] and "\n" not in caught.value.args[0]
    rows = {row["name"]: row for row in advantage_rows()}
    assert rows["gae"]["params"] == "gamma=1, lam=0.95" and "arXiv:1506.02438" in rows["gae"]["paper"]
    assert rows["grpo"]["summary"].startswith("GRPO")


def test_registration_needs_defaults_for_settings():
    with pytest.raises(ValueError, match="needs a default"):
        register_advantage("no_default")(lambda rewards, mask, *, scale: None)
    assert "no_default" not in ADVANTAGES and "no_default" not in ADVANTAGE_SPECS


# ------------------------------------------------------------------------------------------------ a user's estimator
def test_custom_estimator_reads_its_spec_and_params(sign, tiny_world, tmp_path):
    config = rl_config(tiny_world, tmp_path, rl={"advantage": "sign", "advantage_params": {"scale": 0.5}})
    assert num_samples(config) == 2 and kl_placement(config) == ("reward", "k1")
    assert advantage_params(config) == {"scale": 0.5, "centre": "mean"}
    hook, state = hook_for(config)
    assert state.value is None and state.baseline is None
    scores, old, ref, _, mask, valid = rollout_inputs()
    config.rl.kl_coef = 0.0
    adv, returns, _ = hook.advantages(scores, old, ref, None, mask, valid)
    expected = 0.5 * torch.sign(scores.float().view(-1, 2) - scores.float().view(-1, 2).mean(1, keepdim=True))
    torch.testing.assert_close(adv, broadcast_to_tokens(expected.reshape(-1), mask))  # not whitened by default
    assert CALLS[-1] == {"group_size": 2, "scale": 0.5, "centre": "mean"}


def test_custom_estimator_trains_end_to_end(sign, tiny_world, tmp_path):
    from alignkit.recipes import train

    result = train(rl_config(tiny_world, tmp_path, rl={"advantage": "sign",
                                                      "advantage_params": {"scale": 2.0, "centre": "zero"}}))
    assert CALLS and all(call == {"group_size": 2, "scale": 2.0, "centre": "zero"} for call in CALLS)
    assert result.metrics[-1]["step"] == 2
    assert not any("rl/value_loss" in row for row in result.metrics)  # no value model for this estimator


@pytest.mark.parametrize("rl, message", [
    ({"advantage": "sgin"}, r"rl.advantage: unknown advantage estimator 'sgin' \(did you mean 'sign'\?\)"),
    ({"advantage": "sign", "advantage_params": {"scael": 1.0}},
     r"rl.advantage_params.scael: advantage 'sign' has no parameter 'scael' \(did you mean 'scale'\?\)"),
    ({"advantage": "sign", "advantage_params": {"scale": 0}}, r"rl.advantage_params.scale: .* > 0, got 0"),
    ({"advantage": "sign", "advantage_params": {"centre": "median"}}, r"rl.advantage_params.centre: .*one of mean"),
    ({"advantage": "sign", "num_samples": 1}, "it needs at least 2"),
    ({"advantage": "sign", "critic_path": "x"}, r"uses no value function \(only gae does\)"),
    ({"advantage": "gae", "advantage_params": {"lam": 1.5}}, r"rl.advantage_params.lam: .* in \[0, 1\], got 1.5"),
    ({"advantage": "gae", "advantage_params": {"values": 2}}, "an input the recipe supplies"),
    ({"advantage": "grpo", "advantage_params": {"scale_rewards": "grop"}}, "did you mean 'group'"),
    ({"advantage": "gae", "gamma": 0.9, "advantage_params": {"gamma": 0.9}},
     r"rl.gamma and rl.advantage_params.gamma both set"),
    ({"advantage": "grpo", "grpo_scale": "none", "advantage_params": {"scale_rewards": "batch"}},
     r"rl.grpo_scale and rl.advantage_params.scale_rewards"),
])
def test_config_errors_are_one_line(sign, tiny_world, tmp_path, rl, message):
    with pytest.raises(ConfigError, match=message) as caught:
        rl_config(tiny_world, tmp_path, rl=rl)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("rl, key", [({"advantage": "grpo", "gamma": 0.5}, "gamma"),
                                     ({"advantage": "gae", "rloo_normalize": True}, "rloo_normalize"),
                                     ({"advantage": "rloo", "grpo_scale": "none"}, "grpo_scale")])
def test_legacy_keys_of_other_estimators_are_refused(tiny_world, tmp_path, rl, key):
    with pytest.raises(ConfigError, match=rf"^rl\.{key}: advantage {rl['advantage']} does not use it") as caught:
        rl_config(tiny_world, tmp_path, rl=rl)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------------ same numbers
@pytest.mark.parametrize("advantage, legacy, params", [
    ("gae", {"gamma": 0.9, "lam": 0.8}, {"gamma": 0.9, "lam": 0.8}),
    ("rloo", {"rloo_normalize": True}, {"normalize": True}),
    ("grpo", {"grpo_scale": "batch"}, {"scale_rewards": "batch"}),
    ("grpo", {"grpo_scale": "none"}, {"scale_rewards": "none"}),
    ("reinforce_baseline", {"baseline": "running"}, {"baseline": "running"}),
])
def test_legacy_keys_equal_advantage_params(tiny_world, tmp_path, advantage, legacy, params):
    k = 1 if advantage in ("gae", "reinforce_baseline") else 2
    outputs = []
    for rl in ({"advantage": advantage, "num_samples": k, **legacy},
               {"advantage": advantage, "num_samples": k, "advantage_params": params}):
        hook, state = hook_for(rl_config(tiny_world, tmp_path, rl=rl))
        scores, old, ref, values, mask, valid = rollout_inputs()
        values = values if advantage == "gae" else None
        first = hook.advantages(scores, old, ref, values, mask, valid)[:2]
        second = hook.advantages(scores + 1, old, ref, values, mask, valid)[:2]  # the running baseline moved
        outputs.append(first + second)
    for a, b in zip(*outputs):
        assert torch.equal(a, b)


def test_defaults_are_the_old_explicit_calls(tiny_world, tmp_path):
    scores, old, ref, values, mask, valid = rollout_inputs()
    for advantage, expected in [("rloo", lambda r: rloo(r, mask, group_size=2, normalize=False)),
                                ("grpo", lambda r: grpo(r, mask, group_size=2, scale_rewards="group"))]:
        config = rl_config(tiny_world, tmp_path, rl={"advantage": advantage, "num_samples": 2, "kl_coef": 0.0,
                                                     "kl_in": "reward"})
        hook, _ = hook_for(config)
        adv, returns, _ = hook.advantages(scores, old, ref, None, mask, valid)
        ref_out = expected(scores.float())
        assert torch.equal(adv, ref_out.advantages) and torch.equal(returns, ref_out.returns)
