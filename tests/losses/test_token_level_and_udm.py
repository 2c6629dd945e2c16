"""SparsePO (token-level inputs, masks) and BCO's distribution-matching weights."""

from __future__ import annotations


import pytest
import torch
from transformers import AutoTokenizer

from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord
from alignkit.data.tokenize import tokenize_records
from alignkit.losses import PairInputs, TokenLogps, get_loss
from alignkit.models.loading import load_causal_lm
from alignkit.models.token_masks import LearnedTokenMask, activation_mask
from alignkit.recipes.common.distribution_matching import attach_udm_weights, fit_logistic
from alignkit.recipes.common.preference_objective import PreferenceObjective

from shared.tiny import random_batch, tiny_llama  # noqa: E402
from shared.runs import assert_same_weights, straight_and_resumed  # noqa: E402


def random_tokens(b=4, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=g) > 0.3
    draw = lambda: -torch.rand(b, t, generator=g, dtype=torch.float64) * 4 * mask  # noqa: E731
    return TokenLogps(draw(), draw(), mask, -torch.rand(b, t, generator=g, dtype=torch.float64) * mask,
                      torch.rand(b, t, generator=g, dtype=torch.float64) * mask,
                      torch.rand(b, t, generator=g, dtype=torch.float64) * mask)


def test_sparsepo_matches_loop_and_reduces_to_dpo():
    c, r = random_tokens(seed=1), random_tokens(seed=2)
    x = PairInputs(c.policy.sum(-1), r.policy.sum(-1), c.reference.sum(-1), r.reference.sum(-1),
                   tokens_chosen=c, tokens_rejected=r)
    out = get_loss("sparsepo")(x, beta=0.3, mask="learned", l1=0.01)
    for i in range(4):
        def side(t):
            u = sum(float(t.weights[i, j] * (t.policy[i, j] - t.reference[i, j])) for j in range(7) if t.mask[i, j])
            d = sum(float(t.kl_weights[i, j] * t.kl[i, j]) for j in range(7) if t.mask[i, j])
            l1 = sum(float(t.weights[i, j] + t.kl_weights[i, j]) for j in range(7) if t.mask[i, j])
            return u, d, l1
        (uc, dc, lc), (ur, dr, lr) = side(c), side(r)
        z = 0.3 * ((uc - ur) - (dc - dr))
        expected = torch.nn.functional.softplus(torch.tensor(-z, dtype=torch.float64)).item() + 0.5 * 0.01 * (lc + lr)
        assert out.losses[i].item() == pytest.approx(expected, rel=1e-10)
    for t in (c, r):
        t.weights, t.kl_weights = t.mask.double(), torch.zeros_like(t.kl)
    plain = get_loss("sparsepo")(x, beta=0.3).losses
    assert torch.allclose(plain, get_loss("dpo")(x, beta=0.3).losses, atol=1e-12)


def test_token_kl_term_equals_naive_computation():
    policy, reference = tiny_llama(), tiny_llama()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = random_batch(3)
    objective = PreferenceObjective(get_loss("sparsepo"), {"beta": 0.1, "mask": "activations", "independent": False,
                                                            "l1": 0.0}, 0, [], reference=reference)
    chosen, rejected = objective.token_inputs(policy, batch)
    for rows, side in ((range(0, 10, 2), chosen), (range(1, 10, 2), rejected)):
        for b, i in enumerate(rows):
            n = int(batch.attention_mask[i].sum())
            ids = batch.input_ids[i, :n][None]
            lp, lr = (torch.log_softmax(m(input_ids=ids).logits[0], -1) for m in (policy, reference))
            for t in range(1, n):
                if batch.response_mask[i, t]:
                    expected = (lr[t - 1].exp() * (lp[t - 1] - lr[t - 1])).sum()
                    assert side.kl[b, t].item() == pytest.approx(expected.item(), abs=1e-10)
                    assert side.policy[b, t].item() == pytest.approx(lp[t - 1, ids[0, t]].item(), abs=1e-10)
                else:
                    assert side.kl[b, t] == 0 and side.weights[b, t] == 0
    assert (chosen.kl <= 1e-12).all(), "k_t = -KL(ref || policy) <= 0"


def test_activation_mask_is_rescaled_per_sequence():
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(3, 9, 16, generator=g) for _ in range(2)]
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[:, 4:] = True
    weights = activation_mask(hidden, mask)
    assert (weights[~mask] == 0).all()
    assert ((weights >= 0) & (weights <= 1)).all()
    single = activation_mask(hidden[:1], mask)
    assert torch.allclose(single[mask].view(3, -1).amax(-1), torch.ones(3))
    assert torch.allclose(single[mask].view(3, -1).amin(-1), torch.zeros(3))


def test_learned_mask_is_trained_checkpointed_and_resumed(tiny_world, tiny_pairs, tmp_path):
    straight, resumed = straight_and_resumed(
        tiny_world, tiny_pairs, tmp_path, loss="sparsepo", reference={"mode": "copy"},
        loss_params={"mask": "learned", "l1": 0.01, "independent": True},
        model={"path": str(tiny_world / "base"), "dtype": "float64"})
    assert_same_weights(straight.model_dir, resumed.model_dir, atol=1e-9)
    heads_a = torch.load(tmp_path / "a/checkpoints/step-0000006/objective.pt", weights_only=True)["mask_heads"]
    heads_b = torch.load(tmp_path / "b/checkpoints/step-0000006/objective.pt", weights_only=True)["mask_heads"]
    fresh = LearnedTokenMask(96, 3).state_dict()
    assert set(heads_a) == {f"{h}.{k}" for h in ("reward", "kl") for k in fresh}
    assert not torch.equal(heads_a["reward.per_layer.0.bias"], fresh["per_layer.0.bias"]), "the mask was trained"
    for key in heads_a:
        assert torch.allclose(heads_a[key], heads_b[key], atol=1e-9), key


def test_logistic_fit_separates_and_folds_standardisation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([0.0, 10.0, 3.0])
    y = (x[:, 0] + 0.2 * (x[:, 1] - 10) > 0).float()
    model = fit_logistic(x, y)
    accuracy = ((model(x).squeeze(-1) > 0).float() == y).float().mean()
    assert accuracy > 0.95


def test_udm_weights_undesirable_prompts_by_density_ratio(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world / "base")
    model = load_causal_lm(str(tiny_world / "base"))
    food = ["soup", "bread", "cheese", "pasta", "salad", "pie"]
    tech = ["laptop", "robot", "phone", "server", "screen", "chip"]
    rows = [(f"describe the {n} .", True) for n in food * 4]
    rows += [(f"describe the {n} .", False) for n in food * 2] + [(f"describe the {n} .", False) for n in tech * 2]
    records = [PreferenceRecord(prompt=p, responses=["the thing is great ."], labels=[label]) for p, label in rows]
    items = tokenize_records(tok, records)
    weights = attach_udm_weights(model, items, tok.pad_token_id)
    assert torch.all(weights[:24] == 1.0)
    assert ((weights >= 0.5) & (weights <= 10.0)).all()
    food_bad, tech_bad = weights[24:36].mean(), weights[36:].mean()
    assert food_bad > 1.5 * tech_bad, (food_bad, tech_bad)
    assert all("udm_weight" in item.extra for item in items)
    _ = collate(items[:2], tok.pad_token_id)
