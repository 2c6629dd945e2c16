"""LoRA: adapters train, the reference is the adapter-disabled policy (no second copy), resume is exact, and the
saved model is the base with the adapter merged."""

from __future__ import annotations


import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from shared.runs import assert_same_weights, dpo_config, straight_and_resumed, weights  # noqa: E402

from alignkit.recipes import preference, train  # noqa: E402

LORA = {"enabled": True, "r": 4, "alpha": 8.0}


def test_reference_is_the_adapter_disabled_policy(tiny_world, tiny_pairs, tmp_path, monkeypatch):
    loaded = []
    real = preference.load_reference
    monkeypatch.setattr(preference, "load_reference", lambda *a: loaded.append(1) or real(*a))
    copy = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "copy", lora=LORA, reference={"mode": "copy"},
                            model={"path": str(tiny_world / "base"), "dtype": "float64"}))
    cached = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "cached", lora=LORA,
                              model={"path": str(tiny_world / "base"), "dtype": "float64"}))
    assert loaded == [], "no second model is loaded for the reference"
    assert copy.metrics[0]["loss"] == pytest.approx(0.693147, abs=1e-6)
    assert_same_weights(copy.model_dir, cached.model_dir, atol=1e-9)


def test_only_adapted_modules_change_and_merged_model_matches_adapter(tiny_world, tiny_pairs, tmp_path):
    result = train(dpo_config(tiny_world, tiny_pairs, tmp_path, lora=LORA))
    base, merged = weights(tiny_world / "base"), weights(result.model_dir)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed), changed
    adapter = load_file(str(result.model_dir / "adapter" / "adapter_model.safetensors"))
    assert all("lora_" in k for k in adapter)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_world / "base"),
                                             result.model_dir / "adapter")
    plain = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert torch.allclose(with_adapter(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5)


def test_lora_resume_is_exact(tiny_world, tiny_pairs, tmp_path):
    straight, resumed = straight_and_resumed(tiny_world, tiny_pairs, tmp_path, lora=LORA,
                                             model={"path": str(tiny_world / "base"), "dtype": "float64"})
    assert_same_weights(straight.model_dir, resumed.model_dir, atol=1e-9)
