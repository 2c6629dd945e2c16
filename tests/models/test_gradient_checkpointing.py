"""gradient_checkpointing (TRL's name): the policy (sft, preference, LoRA too) and the reward model really
recompute their activations in the backward pass, and training with it gives the plain run's weights (float64,
to 1e-9): non-reentrant checkpointing changes memory, not gradients."""

from __future__ import annotations

import pytest

from shared.runs import assert_same_weights, dpo_config

from alignkit.config import ConfigError
from alignkit.recipes import load_config, train

FLOAT64 = {"dtype": "float64"}


def checkpointing_on(model) -> bool:
    """transformers' own flag (``is_activation_checkpointing`` since 5.0, ``is_gradient_checkpointing`` before)."""
    flag = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else \
        "is_gradient_checkpointing"
    return bool(getattr(model, flag))


def run_pair(make_config, tmp_path, **settings):
    """The same run without and with gradient checkpointing; returns both results and the flag the loop's model
    had at every step of each."""
    flags = {False: [], True: []}
    results = {}
    for on in (False, True):
        config = make_config(tmp_path / f"gc-{on}", gradient_checkpointing=on, max_steps=2, **settings)
        results[on] = train(config, on_step=lambda step, model, on=on: flags[on].append(
            (checkpointing_on(model), model.training)))
    assert flags[False] == [(False, True)] * 2
    assert flags[True] == [(True, True)] * 2, "checkpointing is on, in train mode, at every step"
    return results[False], results[True]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_weights_equal_the_plain_run(tiny_world, tiny_pairs, tmp_path, lora):
    model = {"path": str(tiny_world / "base"), **FLOAT64}
    extra = {"lora": {"enabled": True, "r": 4, "alpha": 8.0}} if lora else {}
    plain, checkpointed = run_pair(lambda out, **v: dpo_config(tiny_world, tiny_pairs, out, model=model, **extra, **v),
                                   tmp_path)
    assert_same_weights(plain.model_dir, checkpointed.model_dir, atol=1e-9)
    assert plain.metrics[-1]["loss"] == pytest.approx(checkpointed.metrics[-1]["loss"], abs=1e-9)


def test_sft_weights_equal_the_plain_run(tiny_world, tmp_path):
    def config(out, **values):
        return load_config(None, recipe="sft", model={"path": str(tiny_world / "base"), **FLOAT64},
                           data={"path": str(tiny_world / "data" / "sft.jsonl"), "max_length": 128,
                                 "max_prompt_length": 32, "limit": 32},
                           optim={"lr": 3e-3}, batch_size=8, output_dir=str(out), progress=False, log_steps=1,
                           resume="never", **values)

    plain, checkpointed = run_pair(config, tmp_path)
    assert_same_weights(plain.model_dir, checkpointed.model_dir, atol=1e-9)


def test_reward_model_weights_equal_the_plain_run(tiny_world, tiny_pairs, tmp_path):
    model = {"path": str(tiny_world / "base"), **FLOAT64}
    plain, checkpointed = run_pair(
        lambda out, **v: dpo_config(tiny_world, tiny_pairs, out, recipe="reward", model=model, **v), tmp_path)
    assert_same_weights(plain.model_dir, checkpointed.model_dir, atol=1e-9)


def test_recipes_that_do_not_apply_it_refuse_it(tiny_world, tiny_pairs, tmp_path):
    with pytest.raises(ConfigError, match="gradient_checkpointing: recipe online does not use this setting"):
        dpo_config(tiny_world, tiny_pairs, tmp_path, recipe="online", online={"reward": "sandbox-gold"},
                   gradient_checkpointing=True)
