"""Statistical rejection sampling (Liu et al. 2024, RSO): the accepted candidates follow pi_sft * exp(r / beta)."""

from __future__ import annotations

import random

import pytest
import torch

from alignkit.decoding.rso import rso_select


@pytest.mark.parametrize("make_rng", [lambda s: random.Random(s), lambda s: torch.Generator().manual_seed(s)])
def test_rso_large_beta_accepts_uniformly_small_beta_accepts_the_best(make_rng):
    rewards = [0.3, -1.0, 2.5, 0.0, 1.7, -0.2, 0.9, 2.0]
    rng = make_rng(0)
    counts = [0] * len(rewards)
    for _ in range(3000):
        picked = rso_select(rewards, beta=1e6, num_accept=2, generator=rng)
        assert len(picked) == 2 and len(set(picked)) == 2
        for i in picked:
            counts[i] += 1
    assert all(abs(c / 3000 - 2 / 8) < 0.04 for c in counts)
    assert rso_select(rewards, beta=1e-3, num_accept=3, generator=rng) == [2, 7, 4]
    assert sorted(rso_select(rewards, beta=0.5, num_accept=100, generator=rng)) == list(range(8))  # all, eventually
    assert rso_select(rewards, beta=1.0, num_accept=0, generator=rng) == []
    assert rso_select([float("-inf"), float("-inf")], beta=1.0, num_accept=1, generator=rng) in ([0], [1])
    with pytest.raises(ValueError):
        rso_select(rewards, beta=0.0, num_accept=1, generator=rng)


def test_rso_accepted_samples_follow_the_tilted_target():
    """Candidates drawn from pi_sft over 3 responses; accepted ones should follow pi_sft * exp(r / beta)."""
    reward, beta = [0.0, 1.0, 2.0], 1.0
    rng = random.Random(1)

    def frequencies(pi_sft, num_accept, draws=5000, n=48):  # n: the best response is (almost) always a candidate
        first, accepted = [0] * 3, [0] * 3
        for _ in range(draws):
            items = rng.choices(range(3), weights=pi_sft, k=n)
            picked = rso_select([reward[i] for i in items], beta, num_accept, generator=rng)
            first[items[picked[0]]] += 1
            for k in picked:
                accepted[items[k]] += 1
        return torch.tensor(first) / sum(first), torch.tensor(accepted) / sum(accepted)

    pi_sft = torch.tensor([0.5, 0.3, 0.2])
    target = pi_sft * torch.exp(torch.tensor(reward) / beta)
    target /= target.sum()
    first, accepted = frequencies(pi_sft.tolist(), num_accept=4)
    assert torch.allclose(first, target, atol=0.02) and torch.allclose(accepted, target, atol=0.015)
    # a uniform pi_sft: the softmax(r / beta) of the RSO paper
    first, _ = frequencies([1.0, 1.0, 1.0], num_accept=1)
    assert torch.allclose(first, torch.softmax(torch.tensor(reward) / beta, 0), atol=0.02)
