"""Losses against independent computations; the registry's contract."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import LOSSES, PairInputs, get_loss
from alignkit.apps.methods import methods_table


def independent_dpo(pc, pr, rc, rr, beta):
    """-log(1 / (1 + exp(-beta * margin))) written out element by element in Python floats."""
    out = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        z = beta * ((a - c) - (b - d))
        out.append(math.log1p(math.exp(-z)) if z > -30 else -z + math.log1p(math.exp(z)))
    return out


def random_inputs(n=64, scale=20.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in range(4)]


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
def test_dpo_matches_independent_computation(beta):
    pc, pr, rc, rr = random_inputs()
    pc[0], pr[0] = rc[0] + 3, rr[0] + 3  # a tie: margin exactly zero
    out = get_loss("dpo")(PairInputs(pc, pr, rc, rr), beta=beta)
    expected = torch.tensor(independent_dpo(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta),
                            dtype=torch.float64)
    assert torch.allclose(out.losses, expected, atol=1e-12, rtol=1e-12)
    assert out.losses[0].item() == pytest.approx(math.log(2), abs=1e-12)
    assert torch.equal(out.metrics["rewards/accuracy"], ((pc - rc) > (pr - rr)).double())


def test_dpo_gradient_matches_analytic_form_and_gradcheck():
    pc, pr, rc, rr = random_inputs(n=16, scale=3.0)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    beta = 0.3
    get_loss("dpo")(PairInputs(pc, pr, rc, rr), beta=beta).losses.sum().backward()
    margin = (pc - rc) - (pr - rr)
    analytic = -beta * torch.sigmoid(-beta * margin.detach())  # d/dpc of -logsigmoid(beta*margin)
    assert torch.allclose(pc.grad, analytic, atol=1e-12)
    assert torch.allclose(pr.grad, -analytic, atol=1e-12)
    fn = lambda a, b: get_loss("dpo")(PairInputs(a, b, rc, rr), beta=beta).losses  # noqa: E731
    assert torch.autograd.gradcheck(fn, (pc.detach().requires_grad_(), pr.detach().requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dpo_is_finite_at_extreme_margins(dtype):
    pc = torch.tensor([1e4, -1e4, 0.0, 3e4], dtype=dtype, requires_grad=True)
    pr = torch.tensor([-1e4, 1e4, 0.0, -3e4], dtype=dtype, requires_grad=True)
    zeros = torch.zeros(4, dtype=dtype)
    out = get_loss("dpo")(PairInputs(pc, pr, zeros, zeros), beta=1.0)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all()
    assert out.losses[0].item() == 0.0
    assert out.losses[1].item() == pytest.approx(2e4, rel=1e-2)


def test_registry_contract():
    for spec in LOSSES.values():
        assert spec.reduction in ("sum", "mean")
        assert spec.paper and spec.summary, spec.name
        assert spec.fn.__doc__ and "L =" in spec.fn.__doc__, f"{spec.name} must document its formula"
    spec = get_loss("dpo")
    assert spec.needs_reference and spec.data_kind == "pairs" and spec.defaults == {"beta": 0.1}
    with pytest.raises(KeyError, match="did you mean 'dpo'"):
        get_loss("dpp")
    with pytest.raises(KeyError, match="did you mean 'beta'"):
        spec.params({"betta": 1})


def test_methods_table_lists_every_registered_loss():
    table = methods_table()
    for name in LOSSES:
        assert f"| {name} |" in table
