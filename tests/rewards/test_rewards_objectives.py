"""Reward-model objectives against independent computations (plain-Python loops) and against TRL's RewardTrainer."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignkit.rewards.objectives import bradley_terry_loss, implied_pairs, plackett_luce_loss, regression_loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def padded(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(map(len, rows))
    values = torch.tensor([r + [0.0] * (k - len(r)) for r in rows], dtype=torch.float64)
    valid = torch.tensor([[j < len(r) for j in range(k)] for r in rows])
    return values, valid


def test_bradley_terry_pairs_match_a_loop_with_margin_and_centring() -> None:
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(6, 2, generator=gen, dtype=torch.float64) * 3
    margin = torch.rand(6, generator=gen, dtype=torch.float64)
    got = bradley_terry_loss(r, torch.ones(6, 2, dtype=torch.bool), torch.full((6,), 2), margin, center_coef=0.05)
    for b in range(6):
        c, rj = r[b].tolist()
        expected = -log_sigmoid(c - rj - margin[b].item()) + 0.05 * (c + rj) ** 2
        assert got[b].item() == pytest.approx(expected, rel=1e-12)


def test_bradley_terry_on_rankings_averages_every_implied_pair() -> None:
    rows = [[2.0, 0.5, -1.0, 0.3], [1.0, 3.0], [0.2, -0.4, 0.9]]
    ranked = torch.tensor([4, 2, 1])  # full ranking; pair; top-1 of 3 (the first beats both others)
    values, valid = padded(rows)
    got = bradley_terry_loss(values, valid, ranked, center_coef=0.1)
    for b, row in enumerate(rows):
        pairs = [(i, j) for i in range(int(ranked[b])) for j in range(i + 1, len(row))]
        bt = sum(-log_sigmoid(row[i] - row[j]) for i, j in pairs) / len(pairs)
        centre = 0.1 * sum((row[i] + row[j]) ** 2 for i, j in pairs) / len(pairs)
        assert got[b].item() == pytest.approx(bt + centre, rel=1e-12)
    assert implied_pairs(valid, ranked).sum().item() == 6 + 1 + 2


def plackett_luce_probability(order_rewards: list[float], ranked: int) -> float:
    """P(the first ``ranked`` responses were picked in this order), each pick among all not yet picked."""
    p = 1.0
    for j in range(min(ranked, len(order_rewards) - 1)):
        p *= math.exp(order_rewards[j]) / sum(math.exp(x) for x in order_rewards[j:])
    return p


def test_plackett_luce_matches_the_ranking_probability() -> None:
    rows = [[2.0, 0.5, -1.0, 0.3], [1.0, 3.0], [0.2, -0.4, 0.9, 1.5]]
    ranked = torch.tensor([4, 2, 2])  # the last record is a top-2 ranking of 4 responses
    values, valid = padded(rows)
    got = plackett_luce_loss(values, valid, ranked)
    for b, row in enumerate(rows):
        assert got[b].item() == pytest.approx(-math.log(plackett_luce_probability(row, int(ranked[b]))), rel=1e-12)
    # the probabilities of all K! orders of a record sum to one: the loss is a proper likelihood
    row = rows[0]
    total = sum(plackett_luce_probability([row[i] for i in perm], 4) for perm in itertools.permutations(range(4)))
    assert total == pytest.approx(1.0, rel=1e-12)
    total_alignkit = sum(math.exp(-plackett_luce_loss(torch.tensor([[row[i] for i in perm]], dtype=torch.float64),
                                                       torch.ones(1, 4, dtype=torch.bool), torch.tensor([4])).item())
                         for perm in itertools.permutations(range(4)))
    assert total_alignkit == pytest.approx(1.0, rel=1e-12)


def test_plackett_luce_on_pairs_is_bradley_terry() -> None:
    r = torch.randn(5, 2, dtype=torch.float64)
    valid, ranked = torch.ones(5, 2, dtype=torch.bool), torch.full((5,), 2)
    torch.testing.assert_close(plackett_luce_loss(r, valid, ranked, 0.2), bradley_terry_loss(r, valid, ranked,
                                                                                              center_coef=0.2))


def test_regression_is_squared_error_over_real_responses() -> None:
    values, valid = padded([[1.0, 2.0, 3.0], [0.5]])
    targets = torch.tensor([[0.0, 2.5, 3.0], [2.5, 99.0, 99.0]], dtype=torch.float64)
    assert regression_loss(values, targets, valid).tolist() == pytest.approx([1.0 + 0.25, 4.0])


# ------------------------------------------------------------------------------------------------ TRL
trl = pytest.importorskip("trl")


def trl_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None,
                    center: float | None) -> torch.Tensor:
    """TRL's own ``RewardTrainer.compute_loss`` with a stand-in trainer and a model that returns given rewards."""
    from trl import RewardTrainer

    standin = SimpleNamespace(model=SimpleNamespace(training=False), args=SimpleNamespace(
        center_rewards_coefficient=center), accelerator=SimpleNamespace(gather=lambda t: t,
                                                                        gather_for_metrics=lambda t: t),
        _metrics={"eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    logits = torch.cat([chosen, rejected])[:, None]
    inputs = {"input_ids": torch.zeros(len(logits), 1, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    return RewardTrainer.compute_loss(standin, lambda **kw: SimpleNamespace(logits=logits), inputs)


@pytest.mark.parametrize("with_margin,center", [(False, None), (True, None), (True, 0.01), (False, 0.3)])
def test_bradley_terry_equals_trl_reward_trainer(with_margin: bool, center: float | None) -> None:
    gen = torch.Generator().manual_seed(3)
    chosen, rejected = torch.randn(8, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen,
                                                                                       dtype=torch.float64)
    margin = torch.rand(8, generator=gen, dtype=torch.float64) if with_margin else None
    ours = bradley_terry_loss(torch.stack([chosen, rejected], 1), torch.ones(8, 2, dtype=torch.bool),
                              torch.full((8,), 2), margin, center or 0.0).mean()
    theirs = trl_reward_loss(chosen, rejected, margin, center)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
