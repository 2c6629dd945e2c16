"""EM mixture of BT reward models over annotators (MaxMin-RLHF step 1) on sandbox data from two annotator groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignkit.models.loading import load_tokenizer
from alignkit.rewards import (
    HeadLayout,
    cluster_purity,
    embedding_features,
    fit_bt_mixture,
    load_reward_model,
    score,
    token_count_features,
)
from alignkit.sandbox import world

from shared.rows import sandbox_rows  # noqa: E402


def test_cluster_purity_by_hand() -> None:
    # clusters {a: x x y}, {b: y y}, {c: z}: majorities 2 + 2 + 1 of 6
    assert cluster_purity(list("aaabbc"), list("xxyyyz")) == pytest.approx(5 / 6)
    assert cluster_purity([0, 0, 1, 1], ["w", "w", "t", "t"]) == 1.0
    with pytest.raises(ValueError):
        cluster_purity([0], [])


def test_mixture_recovers_the_two_annotator_groups(tiny_world: Path) -> None:
    """10 annotators (5 "warm", 5 "terse"), ~80 pairs each, labelled under BT noise 0.1 by their group's gold.
    Components: linear BT on token-count features of the responses."""
    rows = sandbox_rows(800, seed=5, noise=0.1)["annotators"]
    tokenizer = load_tokenizer(str(tiny_world / "base"))
    prompts = [r["prompt"] for r in rows]
    diffs = (token_count_features(tokenizer, prompts, [r["chosen"] for r in rows])
             - token_count_features(tokenizer, prompts, [r["rejected"] for r in rows]))
    mixture = fit_bt_mixture(diffs, [r["annotator"] for r in rows], components=2, l2=30.0, restarts=2, seed=0)
    assignments = mixture.assignments()
    truth = [name.split("-")[0] for name in mixture.annotators]
    assert set(truth) == set(world.GROUP_WEIGHTS) and len(truth) == 10
    purity = cluster_purity([assignments[a] for a in mixture.annotators], truth)
    assert purity >= 0.9, (purity, assignments)
    assert mixture.prior.sum().item() == pytest.approx(1.0, abs=1e-5)
    # each component ranks its own group's held-out pairs better than the other component does
    held_out = sandbox_rows(300, seed=6, noise=0.0)["annotators"]
    feats = [token_count_features(tokenizer, [r["prompt"] for r in held_out], [r[k] for r in held_out])
             for k in ("chosen", "rejected")]
    margins = mixture.rewards(feats[0]) - mixture.rewards(feats[1])          # [N, K]
    group_of = {truth[i]: assignments[a] for i, a in enumerate(mixture.annotators)}
    for group, component in group_of.items():
        mine = torch.tensor([r["gold_group"] == group for r in held_out])
        accuracy = (margins[mine] > 0).float().mean(0)
        assert accuracy[component] > accuracy[1 - component], (group, accuracy)


def test_embedding_features_are_what_the_reward_head_reads(tiny_world: Path) -> None:
    """The scalar head is linear on the last token's final hidden state, so head(features) must equal the reward."""
    tokenizer = load_tokenizer(str(tiny_world / "base"))
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_world / "base"), tokenizer, HeadLayout(), device="cpu").eval()
    rows = sandbox_rows(7, seed=3, noise=0.0)["pairs"]
    prompts, responses = [r["prompt"] for r in rows], [r["rejected"] for r in rows]
    features = embedding_features(model, tokenizer, prompts, responses, batch_size=3)
    assert features.shape == (len(rows), model.config.hidden_size)
    torch.testing.assert_close(model.score(features)[:, 0], score(model, tokenizer, prompts, responses),
                               atol=1e-5, rtol=0)
