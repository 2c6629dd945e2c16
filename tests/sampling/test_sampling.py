"""Sampling: per-token log-probs of `generate`, seeding and batching, the vLLM error path, truncation and the draw.

(The Nash-MD mixture, best-of-n and RSO are tested in tests/decoding/.)"""

from __future__ import annotations

import sys

import pytest
import torch

from alignkit.sampling.generate import SamplingConfig, generate, sample_next, truncate_logits
from alignkit.sampling.vllm_backend import generate_vllm
from shared.decoding import teacher_forced


# ------------------------------------------------------------------------------------------ generate
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_generate_logprobs_equal_teacher_forced_forward(lm, temperature):
    tok, policy, _, prompts = lm
    config = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=temperature, top_k=40, top_p=0.9,
                            batch_size=4, seed=3)
    samples = generate(policy, tok, prompts, config)
    assert [s.prompt_index for s in samples] == [i for i in range(len(prompts)) for _ in range(2)]
    if temperature == 0:  # the greedy policy stops early on some prompts (see `decisive`)
        assert any(s.finished for s in samples) and not all(s.finished for s in samples)
    for s in samples:
        assert len(s.logprobs) == len(s.response_ids) and s.finished == (s.response_ids[-1] == tok.eos_token_id)
        expected = teacher_forced([policy], [1.0], s, temperature)
        assert torch.allclose(torch.tensor(s.logprobs, dtype=torch.float64), expected, atol=1e-4)


def test_generate_is_seeded_and_batching_keeps_greedy_results(lm):
    tok, policy, _, prompts = lm
    config = SamplingConfig(num_samples=3, max_new_tokens=8, seed=5, batch_size=4)
    a, b = generate(policy, tok, prompts, config), generate(policy, tok, prompts, config)
    c = generate(policy, tok, prompts, SamplingConfig(num_samples=3, max_new_tokens=8, seed=6, batch_size=4))
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.logprobs for s in a] == [s.logprobs for s in b]
    assert [s.response_ids for s in a] != [s.response_ids for s in c]
    greedy = [generate(policy, tok, prompts, SamplingConfig(max_new_tokens=8, temperature=0, batch_size=bs))
              for bs in (1, 3, 16)]  # left padding must not change what a row decodes
    assert [s.response_ids for s in greedy[0]] == [s.response_ids for s in greedy[1]] == \
        [s.response_ids for s in greedy[2]]
    assert policy.training is False


def test_generate_restores_train_mode_and_validates_config(lm):
    tok, policy, _, prompts = lm
    policy.train()
    try:
        generate(policy, tok, prompts[:1], SamplingConfig(max_new_tokens=2))
        assert policy.training
    finally:
        policy.eval()
    with pytest.raises(ValueError, match="unknown sampling backend"):
        SamplingConfig(backend="sglang")


def test_vllm_backend_without_vllm_names_the_extra(lm, monkeypatch):
    tok, policy, _, prompts = lm
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed (it is not, here)
    config = SamplingConfig(max_new_tokens=4, backend="vllm")
    with pytest.raises(ImportError, match=r"pip install alignkit\[vllm\]; needs a GPU"):
        generate_vllm(policy.name_or_path, tok, prompts, config)
    with pytest.raises(ImportError, match=r"alignkit\[vllm\]"):
        generate(policy, tok, prompts, config)  # dispatches: the model's own directory is passed on
    monkeypatch.setattr(policy, "name_or_path", "not/a/model/dir")
    with pytest.raises(ValueError, match="must be a local model directory"):
        generate(policy, tok, prompts, config)


def test_truncation_and_sampling_step():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isinf(truncate_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    # nucleus: the smallest set with mass >= 0.8 is {0.5, 0.2, 0.15}
    assert torch.isinf(truncate_logits(logits, top_p=0.8)).tolist() == [[False, False, False, True, True]]
    assert torch.isinf(truncate_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True, True]]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits.expand(2000, 5), 1.0, top_k=2, generator=g)[0] for _ in range(5)])
    freq = torch.bincount(draws.flatten(), minlength=5).double() / draws.numel()
    assert freq[2:].sum() == 0 and abs(freq[0].item() - 0.5 / 0.7) < 0.02
    token, logp = sample_next(logits, 0.5, top_k=1)
    assert token.item() == 0 and abs(logp.item() - torch.log_softmax(logits / 0.5, -1)[0, 0].item()) < 1e-6
