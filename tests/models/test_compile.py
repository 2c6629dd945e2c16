"""``compile: true``: the policy's decoder layers run through torch.compile and train to the same weights."""

from __future__ import annotations

import pytest
import torch

from alignkit.models.compiled import compile_decoder_layers
from alignkit.models.loading import load_causal_lm
from alignkit.recipes import train
from shared.runs import assert_same_weights, dpo_config

pytestmark = pytest.mark.slow  # compilation takes tens of seconds on a CPU core


def test_compiled_training_matches_eager(tiny_world, tiny_pairs, tmp_path):
    # float64, so that float32 rounding (which AdamW magnifies on near-zero gradients) stays out of the weights;
    # Llama's RMSNorm still computes in float32, and fused kernels round it differently, hence 1e-6 on the losses
    common = {"max_steps": 3, "model": {"path": str(tiny_world / "base"), "dtype": "float64"}}
    eager = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "eager", **common))
    compiled = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "compiled", compile=True, **common))
    assert [m["loss"] for m in compiled.metrics] == pytest.approx([m["loss"] for m in eager.metrics], abs=1e-6)
    assert_same_weights(eager.model_dir, compiled.model_dir, atol=5e-5)  # steps move weights ~3e-3
    names = set(load_causal_lm(str(compiled.model_dir), "float32").state_dict())
    assert names == set(load_causal_lm(str(eager.model_dir), "float32").state_dict())  # no _orig_mod. prefixes


def test_compile_decoder_layers_finds_the_layers_or_changes_nothing(tiny_world):
    model = load_causal_lm(str(tiny_world / "base"), "float32")
    assert compile_decoder_layers(model) == len(model.model.layers) > 0  # compiled lazily, on the first call
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    assert compile_decoder_layers(torch.nn.Linear(2, 2)) == 0


@pytest.mark.parametrize("setting", [{"recipe": "reward"}, {"distributed": "fsdp"}])
def test_compile_refuses_what_it_does_not_cover(tiny_world, tiny_pairs, tmp_path, setting):
    from alignkit.config import ConfigError

    with pytest.raises(ConfigError, match="compile=true covers"):
        train(dpo_config(tiny_world, tiny_pairs, tmp_path / "x", compile=True, **setting))
