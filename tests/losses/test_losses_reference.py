"""Every registered loss against an independent, straightforward computation (Python floats, one example at a
time), with gradients (gradcheck in float64 where the loss is smooth) and numerical safety at extreme margins."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import LOSSES, PairInputs, RankedInputs, TokenLogps, UnpairedInputs, get_loss
from alignkit.losses.state import RunningMean


def ls(z: float) -> float:
    """log sigmoid(z), stable."""
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


# --------------------------------------------------------------------------------------- pairwise losses
def ref_pair(name, pc, pr, rc, rr, nll, p, **extra):
    c, r = pc - rc, pr - rr
    d = c - r
    b = p.get("beta")
    if name == "dpo":
        return -ls(b * d)
    if name == "cdpo":
        e = p["label_smoothing"]
        return -(1 - e) * ls(b * d) - e * ls(-b * d)
    if name == "robust":
        e = p["label_smoothing"]
        return (-(1 - e) * ls(b * d) + e * ls(-b * d)) / (1 - 2 * e)
    if name in ("ipo", "ipo_sum"):
        return (d - 1 / (2 * b)) ** 2
    if name == "ln_dpo":
        return -ls(b * d)
    if name == "hinge":
        return max(0.0, 1 - b * d)
    if name == "nca_pair":
        return -ls(b * c) - 0.5 * ls(-b * c) - 0.5 * ls(-b * r)
    if name == "exo_pair":
        e = p["epsilon"]
        return sig(b * d) * (ls(b * d) - math.log(1 - e)) + sig(-b * d) * (ls(-b * d) - math.log(e))
    if name == "apo_zero":
        return (1 - sig(b * c)) + sig(b * r)
    if name == "apo_down":
        return sig(b * c) + (1 - sig(b * d))
    if name == "slic":
        return max(0.0, p["delta"] - pc + pr) - p["lam"] * pc
    if name == "simpo":
        return -ls(b * (pc - pr) - p["gamma"])
    if name == "cpo":
        return -ls(b * (pc - pr)) + p["alpha"] * nll
    if name == "orpo":
        odds = (pc - pr) - (math.log(1 - math.exp(pc)) - math.log(1 - math.exp(pr)))
        return nll - p["lam"] * ls(odds)
    if name == "discopop":
        z = b * d
        m = sig(z / p["tau"])
        return (1 - m) * -ls(z) + m * math.exp(-z)
    if name == "modpo":
        shift = sum(w * (extra["sc"][k] - extra["sr"][k]) for k, w in p["margins"].items())
        return -ls((b * d - shift) / p["weight"])
    raise KeyError(name)


PAIR_CASES = {
    "dpo": {"beta": 0.3}, "cdpo": {"beta": 0.2, "label_smoothing": 0.15}, "robust": {"beta": 0.2, "label_smoothing": 0.2},
    "ipo": {"beta": 0.5}, "ipo_sum": {"beta": 0.1}, "ln_dpo": {"beta": 2.0}, "hinge": {"beta": 0.05},
    "nca_pair": {"beta": 0.1}, "exo_pair": {"beta": 0.3, "epsilon": 0.01}, "apo_zero": {"beta": 0.2},
    "apo_down": {"beta": 0.2}, "slic": {"delta": 1.0, "lam": 0.1}, "simpo": {"beta": 2.0, "gamma": 1.0},
    "cpo": {"beta": 0.1, "alpha": 1.0}, "orpo": {"lam": 0.1},
    "modpo": {"beta": 0.1, "weight": 0.6, "margins": {"concise": 0.3, "safe": 0.1}},
    "discopop": {"beta": 0.05, "tau": 0.05},
}
SMOOTH = {"dpo", "cdpo", "robust", "ipo", "ipo_sum", "ln_dpo", "nca_pair", "exo_pair", "apo_zero", "apo_down",
          "simpo", "cpo", "orpo", "modpo", "discopop"}


def pair_inputs(name, n=24, seed=0, dtype=torch.float64, scale=None):
    g = torch.Generator().manual_seed(seed)
    spec = get_loss(name)
    mean = spec.reduction == "mean"
    scale = scale if scale is not None else (1.0 if mean else 20.0)
    draw = lambda: (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    pc, pr, rc, rr = draw(), draw(), draw(), draw()
    if mean:  # per-token-mean log-probs are negative
        pc, pr, rc, rr = -pc.abs() - 0.05, -pr.abs() - 0.05, -rc.abs() - 0.05, -rr.abs() - 0.05
    if not mean:
        pc[0], pr[0] = rc[0] + 2, rr[0] + 2  # a tie: D = 0
    nll = torch.rand(n, generator=g, dtype=torch.float64).to(dtype) * 3
    sc = {"concise": torch.rand(n, generator=g, dtype=torch.float64).to(dtype),
          "safe": torch.rand(n, generator=g, dtype=torch.float64).to(dtype)}
    sr = {k: torch.rand(n, generator=g, dtype=torch.float64).to(dtype) for k in sc}
    return PairInputs(pc, pr, rc if spec.needs_reference else None, rr if spec.needs_reference else None, nll, sc, sr)


@pytest.mark.parametrize("name", sorted(PAIR_CASES))
def test_pair_loss_matches_independent_computation(name):
    x = pair_inputs(name)
    params = PAIR_CASES[name]
    out = get_loss(name)(x, **params)
    for i in range(len(x.policy_chosen)):
        expected = ref_pair(name, float(x.policy_chosen[i]), float(x.policy_rejected[i]),
                            float(x.ref_chosen[i]) if x.ref_chosen is not None else 0.0,
                            float(x.ref_rejected[i]) if x.ref_rejected is not None else 0.0,
                            float(x.chosen_nll[i]), params,
                            sc={k: float(v[i]) for k, v in x.scores_chosen.items()},
                            sr={k: float(v[i]) for k, v in x.scores_rejected.items()})
        assert out.losses[i].item() == pytest.approx(expected, rel=1e-10, abs=1e-10), (name, i)


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_pair_loss_gradcheck(name):
    x = pair_inputs(name, n=6, seed=1, scale=0.5 if get_loss(name).reduction == "mean" else 3.0)
    params = PAIR_CASES[name]

    def fn(pc, pr):
        y = PairInputs(pc, pr, x.ref_chosen, x.ref_rejected, x.chosen_nll, x.scores_chosen, x.scores_rejected)
        return get_loss(name)(y, **params).losses

    assert torch.autograd.gradcheck(fn, (x.policy_chosen.clone().requires_grad_(),
                                         x.policy_rejected.clone().requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(n for n, s in LOSSES.items() if s.data_kind == "pairs"))
def test_pair_losses_are_finite_at_extreme_margins(name, dtype):
    spec = get_loss(name)
    if spec.reduction == "mean":
        big = torch.tensor([-1e-7, -30.0, -1e-7, -60.0, -3.0], dtype=dtype)
        other = torch.tensor([-30.0, -1e-7, -1e-7, -1e-7, -3.0], dtype=dtype)
    else:
        big = torch.tensor([1e4, -1e4, 0.0, 3e4, -5.0], dtype=dtype)
        other = -big
    pc, pr = big.clone().requires_grad_(), other.clone().requires_grad_()
    zeros = torch.zeros(5, dtype=dtype)
    flags = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=dtype)  # XPO / SELM: which response the reference sampled
    scores = {"concise": zeros, "safe": zeros}
    x = PairInputs(pc, pr, zeros if spec.needs_reference else None, zeros if spec.needs_reference else None,
                   zeros + 1, {**scores, "is_reference_sample": flags}, {**scores, "is_reference_sample": 1 - flags},
                   state=RunningMean() if spec.stateful else None)
    params = {"margins": {"concise": 0.5}} if name == "modpo" else {}
    if spec.token_level:
        ones = torch.ones(5, 1, dtype=dtype)
        x.tokens_chosen = TokenLogps(pc[:, None], zeros[:, None], ones.bool(), -pc.abs()[:, None], ones, ones)
        x.tokens_rejected = TokenLogps(pr[:, None], zeros[:, None], ones.bool(), -pr.abs()[:, None], ones, ones)
    out = spec(x, **params)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all(), name
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all(), name


def test_batch_coupled_losses_sort_within_the_batch():
    x = pair_inputs("aot", n=8)
    out = get_loss("aot")(x, beta=0.1)
    delta = torch.sort(x.policy_chosen - x.policy_rejected).values - torch.sort(x.ref_chosen - x.ref_rejected).values
    assert torch.allclose(out.losses, torch.tensor([-ls(0.1 * float(v)) for v in delta], dtype=torch.float64))
    out = get_loss("aot_pair")(x, beta=0.1, label_smoothing=0.1)
    delta = torch.sort(x.chosen_logratios).values - torch.sort(x.rejected_logratios).values
    expected = [-0.9 * ls(0.1 * float(v)) - 0.1 * ls(-0.1 * float(v)) for v in delta]
    assert torch.allclose(out.losses, torch.tensor(expected, dtype=torch.float64))
    assert get_loss("aot").batch_coupled and not get_loss("dpo").batch_coupled


def test_bco_pair_keeps_a_running_mean_of_rewards():
    state = RunningMean()
    first, second = pair_inputs("bco_pair", n=4, seed=2), pair_inputs("bco_pair", n=6, seed=3)
    seen = []
    for x in (first, second):
        x.state = state
        out = get_loss("bco_pair")(x, beta=0.1)
        seen += (0.1 * x.chosen_logratios).tolist() + (0.1 * x.rejected_logratios).tolist()
        delta = sum(seen) / len(seen)
        for i in range(len(x.policy_chosen)):
            c, r = 0.1 * float(x.chosen_logratios[i]), 0.1 * float(x.rejected_logratios[i])
            assert out.losses[i].item() == pytest.approx(-ls(c - delta) - ls(-(r - delta)), abs=1e-10)
    assert state.count == 20 and state.mean == pytest.approx(sum(seen) / 20)


# ----------------------------------------------------------------------------------------- listwise
def ranked_inputs(seed=0, with_scores=True):
    g = torch.Generator().manual_seed(seed)
    policy = torch.randn(4, 5, generator=g, dtype=torch.float64) * 3
    reference = torch.randn(4, 5, generator=g, dtype=torch.float64) * 3
    sizes = [5, 3, 2, 4]
    valid = torch.arange(5)[None] < torch.tensor(sizes)[:, None]
    scores = torch.sort(torch.rand(4, 5, generator=g, dtype=torch.float64) * 4, dim=-1, descending=True).values
    nll = torch.rand(4, generator=g, dtype=torch.float64)
    return RankedInputs(-policy.abs(), valid, -reference.abs(), scores if with_scores else None, nll, nll * 7), sizes


def test_plackett_luce_matches_loop_and_reduces_to_dpo_for_pairs():
    x, sizes = ranked_inputs()
    out = get_loss("plackett_luce")(x, beta=0.5)
    for b, k in enumerate(sizes):
        z = [0.5 * float(x.policy[b, i] - x.reference[b, i]) for i in range(k)]
        expected = sum(-z[i] + math.log(sum(math.exp(v) for v in z[i:])) for i in range(k))
        assert out.losses[b].item() == pytest.approx(expected, rel=1e-10)
    two = RankedInputs(x.policy[:, :2], torch.ones(4, 2, dtype=torch.bool), x.reference[:, :2])
    pair = PairInputs(x.policy[:, 0], x.policy[:, 1], x.reference[:, 0], x.reference[:, 1])
    assert torch.allclose(get_loss("plackett_luce")(two, beta=0.5).losses, get_loss("dpo")(pair, beta=0.5).losses)


@pytest.mark.parametrize("with_scores", [True, False])
def test_pro_matches_loop(with_scores):
    x, sizes = ranked_inputs(1, with_scores)
    out = get_loss("pro")(x, sft_weight=0.05)
    for b, k in enumerate(sizes):
        s = [float(v) for v in x.policy[b, :k]]
        r = [float(v) for v in x.scores[b, :k]] if with_scores else None
        total = 0.0
        for i in range(k - 1):
            t = (lambda j: r[i] - r[j]) if r else (lambda j: 1.0)  # noqa: E731
            own = max(t(j) for j in range(i + 1, k)) if r else 1.0
            num = s[i] * own
            den = math.exp(num) + sum(math.exp(s[j] * t(j)) for j in range(i + 1, k))
            total += -(num - math.log(den))
        total += 0.05 * (k - 1) ** 2 * float(x.best_nll_sum[b])
        assert out.losses[b].item() == pytest.approx(total, rel=1e-10), b


@pytest.mark.parametrize("hard", [False, True])
def test_sppo_matches_loop(hard):
    x, sizes = ranked_inputs(2)
    beta = 0.5
    out = get_loss("sppo")(x, beta=beta, hard=hard)
    for b, k in enumerate(sizes):
        s = [float(v) for v in x.scores[b, :k]]
        total = 0.0
        for i in range(k):
            p = (1 - i / (k - 1)) if hard else sum(sig(s[i] - s[j]) for j in range(k)) / k
            rho = float(x.policy[b, i] - x.reference[b, i])
            total += (rho - (p - 0.5) / beta) ** 2
        assert out.losses[b].item() == pytest.approx(total / k, rel=1e-10)


def test_ranked_gradcheck():
    x, _ = ranked_inputs(3)
    for name, params in (("plackett_luce", {"beta": 0.3}), ("pro", {}), ("sppo", {"beta": 0.5})):
        fn = lambda p: get_loss(name)(RankedInputs(p, x.valid, x.reference, x.scores, x.best_nll,  # noqa: E731
                                                   x.best_nll_sum),
                                      **params).losses
        assert torch.autograd.gradcheck(fn, (x.policy.clone().requires_grad_(),)), name


# ----------------------------------------------------------------------------------------- unpaired
def unpaired_inputs(seed=0, n=10):
    g = torch.Generator().manual_seed(seed)
    draw = lambda: torch.randn(n, generator=g, dtype=torch.float64) * 5  # noqa: E731
    labels = (torch.arange(n) % 3 != 0).double()
    return UnpairedInputs(draw(), labels, draw(), draw(), draw(), torch.rand(n, generator=g, dtype=torch.float64) + 0.5)


def test_kto_matches_loop():
    x = unpaired_inputs()
    out = get_loss("kto")(x, beta=0.2, desirable_weight=1.3, undesirable_weight=0.7)
    z0 = max(0.0, sum(float(a - b) for a, b in zip(x.kl_policy, x.kl_reference)) / len(x.policy))
    for i in range(len(x.policy)):
        rho = float(x.policy[i] - x.reference[i])
        expected = 1.3 * (1 - sig(0.2 * (rho - z0))) if x.labels[i] else 0.7 * (1 - sig(0.2 * (z0 - rho)))
        assert out.losses[i].item() == pytest.approx(expected, rel=1e-10)
    assert out.metrics["kl"][0].item() == pytest.approx(z0)


@pytest.mark.parametrize("udm", [False, True])
def test_bco_matches_loop(udm):
    x = unpaired_inputs(1)
    x.state = RunningMean(mean=0.3, count=10)
    out = get_loss("bco")(x, beta=0.1, udm=udm)
    rewards = [0.1 * float(a - b) for a, b in zip(x.policy, x.reference)]
    delta = (0.3 * 10 + sum(rewards)) / (10 + len(rewards))
    for i, r in enumerate(rewards):
        w = float(x.weights[i]) if udm else 1.0
        expected = -ls(r - delta) if x.labels[i] else -w * ls(-(r - delta))
        assert out.losses[i].item() == pytest.approx(expected, rel=1e-10)
    assert x.state.count == 20


def test_unpaired_gradcheck():
    x = unpaired_inputs(2, n=6)
    fn = lambda p: get_loss("kto")(UnpairedInputs(p, x.labels, x.reference, x.kl_policy, x.kl_reference),  # noqa
                                   beta=0.1).losses
    assert torch.autograd.gradcheck(fn, (x.policy.clone().requires_grad_(),))


# --------------------------------------------------------------------------------- numerical safety, others
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ranked_unpaired_negatives_losses_are_finite_at_extremes(dtype):
    from alignkit.losses import NegativesInputs

    big = torch.tensor([[3e4, -3e4, 0.0], [-1e4, 1e4, 5.0]], dtype=dtype)
    valid = torch.ones(2, 3, dtype=torch.bool)
    for name, params in (("plackett_luce", {}), ("sppo", {"beta": 0.001}), ("pro", {})):
        p = (big if name != "pro" else -big.abs()).clone().requires_grad_()
        x = RankedInputs(p, valid, torch.zeros_like(big), torch.tensor([[3.0, 1.0, 0.0]] * 2, dtype=dtype),
                         torch.ones(2, dtype=dtype), torch.ones(2, dtype=dtype))
        out = get_loss(name)(x, **params)
        out.losses.sum().backward()
        assert torch.isfinite(out.losses).all() and torch.isfinite(p.grad).all(), name
    p = big.flatten().clone().requires_grad_()
    labels = torch.tensor([1, 0, 1, 0, 1, 0], dtype=dtype)
    zeros = torch.zeros(6, dtype=dtype)
    for name in ("kto", "bco"):
        x = UnpairedInputs(p, labels, zeros, zeros + 1e4, zeros, state=RunningMean())
        out = get_loss(name)(x)
        out.losses.sum().backward()
        assert torch.isfinite(out.losses).all() and torch.isfinite(p.grad).all(), name
    n = big[:, 0].clone().requires_grad_()
    x = NegativesInputs(n, torch.zeros(2, dtype=dtype), big, torch.zeros_like(big), valid)
    out = get_loss("d2o")(x)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(n.grad).all()


def test_d2o_matches_loop():
    from alignkit.losses import NegativesInputs

    g = torch.Generator().manual_seed(5)
    draw = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 4  # noqa: E731
    valid = torch.tensor([[True, True, True], [True, False, False]])
    x = NegativesInputs(draw(2), draw(2), draw(2, 3), draw(2, 3), valid)
    out = get_loss("d2o")(x, beta=0.2, alpha=0.3)
    for b in range(2):
        k = int(valid[b].sum())
        samples = sum(float(x.samples_policy[b, i] - x.samples_reference[b, i]) for i in range(k))
        z = 0.2 / k * samples - 0.3 * float(x.negative_policy[b] - x.negative_reference[b])
        assert out.losses[b].item() == pytest.approx(-ls(z), rel=1e-10)


def test_data_shape_rules():
    from alignkit.data.records import DataError, DataReport, PreferenceRecord
    from alignkit.recipes.preference import prepare_records

    pair = PreferenceRecord.pair("p", "good", "bad", source="f:1")
    ranked = PreferenceRecord(prompt="p", responses=["a", "b", "c"], ranking=[2, 0, 1], source="f:2")
    unpaired = PreferenceRecord(prompt="p", responses=["a"], labels=[True], source="f:3")
    negatives = PreferenceRecord(prompt="p", responses=["a", "b"], labels=[False, False], source="f:4")
    report = DataReport()
    assert prepare_records(get_loss("plackett_luce"), {}, [pair, ranked], report) == [pair, ranked]
    converted = prepare_records(get_loss("kto"), {}, [pair, negatives], report)
    assert [(r.responses, r.labels) for r in converted] == [(["good"], [True]), (["bad"], [False]),
                                                             (["a"], [False]), (["b"], [False])]
    assert report.converted == {"pairs_to_unpaired": 2, "negatives_to_unpaired": 2}
    assert [r.responses for r in prepare_records(get_loss("d2o"), {}, [negatives], DataReport())] == [["a"], ["b"]]
    with pytest.raises(DataError, match=r"f:2: loss 'dpo' needs pairs .* kind 'ranked'"):
        prepare_records(get_loss("dpo"), {}, [ranked], DataReport())
    with pytest.raises(DataError, match=r"f:3: loss 'plackett_luce' needs rankings"):
        prepare_records(get_loss("plackett_luce"), {}, [unpaired], DataReport())
    with pytest.raises(DataError, match=r"f:1: loss 'd2o' needs negatives only"):
        prepare_records(get_loss("d2o"), {}, [pair], DataReport())
    with pytest.raises(DataError, match=r"f:1 field 'scores': loss 'modpo' uses the score 'concise'"):
        prepare_records(get_loss("modpo"), {"margins": {"concise": 0.5}}, [pair], DataReport())


def test_negatives_and_token_level_gradcheck():
    from alignkit.losses import NegativesInputs

    g = torch.Generator().manual_seed(9)
    draw = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    valid = torch.tensor([[True, True, False], [True, True, True]])
    neg_ref, samples_ref = draw(2), draw(2, 3)
    fn = lambda n, s: get_loss("d2o")(NegativesInputs(n, neg_ref, s, samples_ref, valid)).losses  # noqa: E731
    assert torch.autograd.gradcheck(fn, (draw(2).requires_grad_(), draw(2, 3).requires_grad_()))

    mask = torch.ones(2, 4, dtype=torch.bool)
    ref_c, ref_r, w = draw(2, 4), draw(2, 4), torch.rand(2, 4, generator=g, dtype=torch.float64)

    def sparse(pc, pr, kc, kr):
        x = PairInputs(pc.sum(-1), pr.sum(-1), ref_c.sum(-1), ref_r.sum(-1),
                       tokens_chosen=TokenLogps(pc, ref_c, mask, kc, w, w),
                       tokens_rejected=TokenLogps(pr, ref_r, mask, kr, w, w))
        return get_loss("sparsepo")(x, beta=0.5).losses

    assert torch.autograd.gradcheck(sparse, tuple(draw(2, 4).requires_grad_() for _ in range(4)))
