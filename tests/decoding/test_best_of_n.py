"""Best-of-n selection and its analytic KL bound (Stiennon et al. 2020; Beirami et al. 2024)."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.decoding.best_of_n import best_of_n, best_of_n_kl


def test_best_of_n_picks_argmax_with_lowest_index_on_ties():
    rewards = torch.tensor([[0.1, 0.9, 0.3], [2.0, 2.0, 1.0], [float("nan"), -1.0, -1.0],
                            [float("nan")] * 3, [-5.0, 3.0, 3.0]])
    assert best_of_n(rewards).tolist() == [1, 0, 1, 0, 1]
    with pytest.raises(ValueError):
        best_of_n(torch.zeros(3))


def exact_best_of_n_kl(p: torch.Tensor, n: int) -> float:
    """KL(BoN || p) for a discrete p whose items are sorted by increasing (distinct) reward:
    P_BoN(i) = F(i)^n - F(i-1)^n with F the CDF."""
    cdf = p.double().cumsum(0)
    bon = cdf ** n - torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]]) ** n
    keep = bon > 0
    return float((bon[keep] * (bon[keep] / p.double()[keep]).log()).sum())


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_best_of_n_kl_bounds_the_exact_kl_and_is_tight_for_a_large_support(n):
    bound = best_of_n_kl(n)
    assert bound == pytest.approx(math.log(n) - (n - 1) / n)
    g = torch.Generator().manual_seed(n)
    for support in (3, 10, 50):
        p = torch.rand(support, generator=g, dtype=torch.float64) + 0.1
        assert exact_best_of_n_kl(p / p.sum(), n) <= bound + 1e-12
    uniform = torch.full((200_000,), 1 / 200_000, dtype=torch.float64)
    assert exact_best_of_n_kl(uniform, n) == pytest.approx(bound, abs=2e-3)


def test_best_of_n_distribution_by_monte_carlo():
    """best_of_n over n draws from p picks item i with probability F(i)^n - F(i-1)^n."""
    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    reward = torch.tensor([3.0, 0.0, 2.0, 1.0])  # item order by reward: 1, 3, 2, 0
    n, draws = 3, 40_000
    g = torch.Generator().manual_seed(0)
    items = torch.multinomial(p, draws * n, replacement=True, generator=g).view(draws, n)
    chosen = items.gather(1, best_of_n(reward[items])[:, None])[:, 0]
    freq = torch.bincount(chosen, minlength=4).double() / draws
    order = torch.argsort(reward)
    cdf = p[order].cumsum(0)
    exact_sorted = cdf ** n - torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]]) ** n
    exact = torch.empty(4, dtype=torch.float64)
    exact[order] = exact_sorted
    assert torch.allclose(freq, exact, atol=0.01)
    assert exact_best_of_n_kl(p[order], n) <= best_of_n_kl(n)
