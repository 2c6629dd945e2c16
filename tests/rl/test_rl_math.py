"""alignkit.rl against independent computations: plain-Python loops and numpy on random inputs, float64.

Every function is also checked for mask handling: padding filled with NaN must not change any value or gradient.
Batch-wide statistics with ``reduce_sum`` are checked by running two "processes" as threads that sum through a
barrier (:class:`ThreadWorld`): each must get what one process gets on the concatenated batch.

The comparisons with TRL 1.16 on identical inputs are at the end of the file (see the note there).
"""

from __future__ import annotations

import math
import statistics
import threading
from typing import Any, Callable

import numpy as np
import pytest
import torch

from alignkit import rl
from alignkit.rl import (
    AdaptiveKL,
    FixedKL,
    RewardNormalizer,
    RunningMoments,
    aggregate,
    apply_missing_eos_penalty,
    clipped_value_loss,
    contains_eos,
    explained_variance,
    get_advantage,
    masked_entropy,
    masked_mean,
    masked_var,
    masked_whiten,
    maxmin_reward,
    ppo_policy_loss,
    ppo_token_rewards,
    register_advantage,
    reward_robust,
    sequence_kl,
    token_entropy,
    token_kl,
    worst_group,
)

F64 = torch.float64


# ---------------------------------------------------------------------------------------------------------- helpers


def right_padded_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def random_mask(gen: torch.Generator, B: int, T: int, holes: bool = False) -> torch.Tensor:
    lengths = torch.randint(1, T + 1, (B,), generator=gen).tolist()
    mask = right_padded_mask(lengths, T)
    if holes:  # knock out some interior tokens (tool outputs), keeping the first token of each row
        drop = torch.rand(B, T, generator=gen) < 0.25
        drop[:, 0] = False
        mask &= ~drop
    return mask


def with_nan_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.full_like(x, float("nan")))


def close(actual: Any, expected: Any, what: str = "", rtol: float = 1e-10, atol: float = 1e-10) -> None:
    actual = torch.as_tensor(actual, dtype=F64)
    expected = torch.as_tensor(expected, dtype=F64)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


class ThreadWorld:
    """``n`` simulated processes (threads) whose ``reduce_sum`` sums a tensor over all of them, in rank order."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.barrier = threading.Barrier(n, timeout=20)
        self.slots: list[torch.Tensor | None] = [None] * n

    def reducer(self, rank: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def reduce_sum(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            total = self.slots[0].clone()
            for other in self.slots[1:]:
                total = total + other
            self.barrier.wait()  # nobody overwrites a slot before everyone has read it
            return total
        return reduce_sum

    def run(self, fn: Callable[[int, Callable[[torch.Tensor], torch.Tensor]], Any]) -> list[Any]:
        results: list[Any] = [None] * self.n
        errors: list[BaseException] = []

        def target(rank: int) -> None:
            try:
                results[rank] = fn(rank, self.reducer(rank))
            except BaseException as exc:  # noqa: BLE001  (re-raised below)
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ------------------------------------------------------------------------------------------------------------- KL


def test_token_kl_estimators_match_formulas(gen):
    logp = -torch.rand(5, 7, generator=gen, dtype=F64) * 3
    ref = -torch.rand(5, 7, generator=gen, dtype=F64) * 3
    for estimator, formula in [("k1", lambda a, b: a - b), ("k2", lambda a, b: 0.5 * (a - b) ** 2),
                               ("k3", lambda a, b: math.exp(b - a) - (b - a) - 1)]:
        got = token_kl(logp, ref, estimator)
        expected = [[formula(float(a), float(b)) for a, b in zip(ra, rb)] for ra, rb in zip(logp, ref)]
        close(got, expected, estimator)
    assert (token_kl(logp, ref, "k3") >= 0).all() and (token_kl(logp, ref, "k2") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        token_kl(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_estimators_of_kl():
    """E_{y~p}[k] over a categorical distribution, computed exactly, equals KL(p || q) for k1 and k3 (not k2)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(50, generator=gen, dtype=F64), 0)
    q = torch.softmax(torch.randn(50, generator=gen, dtype=F64), 0)
    kl = float((p * (p.log() - q.log())).sum())
    for estimator in ("k1", "k3"):
        assert float((p * token_kl(p.log(), q.log(), estimator)).sum()) == pytest.approx(kl, rel=1e-12)
    assert float((p * token_kl(p.log(), q.log(), "k2")).sum()) != pytest.approx(kl, rel=1e-3)


def test_sequence_kl_sums_and_means_over_the_mask(gen):
    B, T = 6, 9
    mask = random_mask(gen, B, T, holes=True)
    logp = with_nan_padding(-torch.rand(B, T, generator=gen, dtype=F64), mask)
    ref = with_nan_padding(-torch.rand(B, T, generator=gen, dtype=F64), mask)
    for estimator in ("k1", "k2", "k3"):
        per_token = token_kl(torch.nan_to_num(logp), torch.nan_to_num(ref), estimator)
        sums = [sum(float(per_token[b, t]) for t in range(T) if mask[b, t]) for b in range(B)]
        counts = [int(mask[b].sum()) for b in range(B)]
        close(sequence_kl(logp, ref, mask, estimator), sums, f"sum {estimator}")
        close(sequence_kl(logp, ref, mask.double(), estimator, "mean"), [s / c for s, c in zip(sums, counts)])


def test_fixed_kl_controller():
    ctl = FixedKL(0.05)
    assert ctl.update(100.0, 64) == 0.05 and ctl.value == 0.05
    other = FixedKL(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
    with pytest.raises(ValueError):
        FixedKL(-1)


def test_adaptive_kl_controller_follows_ziegler_rule():
    ctl = AdaptiveKL(init_coef=0.2, target=6.0, horizon=10000)
    value = 0.2
    for kl, n in [(6.0, 64), (12.0, 64), (6.3, 128), (1.0, 32), (0.0, 64), (4.5, 256), (30.0, 512)]:
        error = min(max(kl / 6.0 - 1, -0.2), 0.2)
        value *= 1 + error * n / 10000
        assert ctl.update(kl, n) == pytest.approx(value, rel=1e-15)
    # KL above target raises the coefficient, below lowers it, and the error is clipped at +-0.2
    up, down = AdaptiveKL(1.0, 1.0, 10), AdaptiveKL(1.0, 1.0, 10)
    assert up.update(100.0, 1) == pytest.approx(1.02) and down.update(0.0, 1) == pytest.approx(0.98)
    restored = AdaptiveKL(1.0, 1.0, 1.0)
    restored.load_state_dict(ctl.state_dict())
    assert restored.update(7.0, 64) == ctl.update(7.0, 64)
    with pytest.raises(ValueError):
        AdaptiveKL(0.1, 0.0, 100)


# ------------------------------------------------------------------------------------------------------- normalize


def test_masked_mean_var_whiten_match_numpy(gen):
    B, T = 5, 8
    mask = random_mask(gen, B, T, holes=True)
    x = torch.randn(B, T, generator=gen, dtype=F64) * 3 + 2
    xp = with_nan_padding(x, mask)
    sel = x[mask].numpy()
    close(masked_mean(xp, mask), sel.mean(), "mean")
    close(masked_mean(xp, mask.double(), dim=-1), [x[b][mask[b]].numpy().mean() for b in range(B)], "row means")
    close(masked_var(xp, mask), sel.var(ddof=1), "unbiased var")
    close(masked_var(xp, mask, unbiased=False), sel.var(ddof=0), "biased var")
    white = masked_whiten(xp, mask)
    expected = (sel - sel.mean()) / np.sqrt(sel.var(ddof=1) + 1e-8)
    close(white[mask], expected, "whiten")
    assert (white[~mask] == 0).all()
    close(masked_whiten(xp, mask, shift_mean=False)[mask], expected + sel.mean(), "whiten, mean kept")
    close(white[mask].mean(), 0.0, atol=1e-12)
    close(white[mask].var(), 1.0, rtol=1e-6)


def test_masked_stats_edge_cases():
    x = torch.tensor([[1.0, 2.0]], dtype=F64)
    with pytest.raises(ValueError, match="no values"):
        masked_var(x, torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least two"):
        masked_var(x, torch.tensor([[True, False]]))
    assert masked_var(x, torch.tensor([[True, False]]), unbiased=False) == 0
    assert torch.isnan(masked_mean(x, torch.zeros(1, 2)))
    with pytest.raises(ValueError, match="shape"):
        masked_mean(x, torch.ones(3, 3))


def test_masked_stats_across_processes_equal_the_concatenated_batch(gen):
    x = torch.randn(6, 5, generator=gen, dtype=F64) + 1.5
    mask = random_mask(gen, 6, 5)
    shards = [(x[:2], mask[:2]), (x[2:], mask[2:])]  # unequal token counts on the two "processes"

    def per_process(rank, reduce_sum):
        xs, ms = shards[rank]
        return (masked_mean(xs, ms, reduce_sum=reduce_sum), masked_var(xs, ms, reduce_sum=reduce_sum),
                masked_whiten(xs, ms, reduce_sum=reduce_sum))

    results = ThreadWorld(2).run(per_process)
    for rank, (mean, var, white) in enumerate(results):
        close(mean, masked_mean(x, mask), f"mean rank {rank}")
        close(var, masked_var(x, mask), f"var rank {rank}")
    close(torch.cat([results[0][2], results[1][2]]), masked_whiten(x, mask), "whiten")


def test_running_moments_match_numpy_over_everything_seen(gen):
    rm = RunningMoments()
    seen: list[float] = []
    for size in (1, 7, 3, 50, 2):
        batch = torch.randn(size, generator=gen, dtype=F64) * 4 + 1e4  # a large offset tests the stability
        batch_mean, batch_std = rm.update(batch)
        seen.extend(batch.tolist())
        assert batch_mean == pytest.approx(float(batch.mean()), rel=1e-12)
        assert batch_std == pytest.approx(statistics.stdev(batch.tolist()) if size > 1 else 0.0, rel=1e-9)
        assert rm.count == len(seen)
        assert rm.mean == pytest.approx(np.mean(seen), rel=1e-13)
        assert rm.var == pytest.approx(np.var(seen), rel=1e-8)
        assert rm.std == pytest.approx(np.std(seen, ddof=1) if len(seen) > 1 else 0.0, rel=1e-8)
    clone = RunningMoments()
    clone.load_state_dict(rm.state_dict())
    extra = torch.randn(5, generator=gen, dtype=F64)
    rm.update(extra)
    clone.update(extra)
    assert clone.state_dict() == rm.state_dict()


def test_running_moments_across_processes(gen):
    batches = [torch.randn(n, generator=gen, dtype=F64) for n in (3, 8, 5, 4)]  # rank 0 gets 0, 2; rank 1 gets 1, 3

    def per_process(rank, reduce_sum):
        rm = RunningMoments(reduce_sum)
        for step in range(2):
            rm.update(batches[2 * step + rank])
        return rm.state_dict()

    states = ThreadWorld(2).run(per_process)
    allv = torch.cat(batches).numpy()
    for state in states:
        assert state["count"] == allv.size
        assert state["mean"] == pytest.approx(allv.mean(), rel=1e-12)
        assert state["m2"] / state["count"] == pytest.approx(allv.var(), rel=1e-10)


def test_reward_normalizer_update_then_normalise_and_clip(gen):
    norm = RewardNormalizer(clip=1.5)
    seen: list[float] = []
    for _ in range(3):
        r = torch.randn(16, generator=gen, dtype=F64) * 2 + 3
        seen.extend(r.tolist())
        expected = np.clip((r.numpy() - np.mean(seen)) / np.std(seen, ddof=1), -1.5, 1.5)
        close(norm(r), expected)
    scaled = RewardNormalizer(clip=None, shift_mean=False)
    r = torch.tensor([1.0, 2.0, 10.0], dtype=F64)
    close(scaled(r), r.numpy() / np.std(r.numpy(), ddof=1))
    first = RewardNormalizer(clip=None)
    close(first(torch.tensor([5.0], dtype=F64)), [0.0])  # one value: centred, not scaled
    restored = RewardNormalizer(clip=1.5)
    restored.load_state_dict(norm.state_dict())
    r = torch.randn(4, generator=gen, dtype=F64)
    close(restored(r), norm(r))


# --------------------------------------------------------------------------------------------------------- rewards


def test_ppo_token_rewards_match_a_loop(gen):
    B, T, coef = 5, 8, 0.07
    mask = random_mask(gen, B, T)
    logp = with_nan_padding(-torch.rand(B, T, generator=gen, dtype=F64) * 2, mask)
    ref = with_nan_padding(-torch.rand(B, T, generator=gen, dtype=F64) * 2, mask)
    scores = torch.randn(B, generator=gen, dtype=F64)
    for estimator in ("k1", "k3"):
        out = ppo_token_rewards(scores, logp, ref, mask, coef, estimator)
        for b in range(B):
            positions = [t for t in range(T) if mask[b, t]]
            for t in range(T):
                if not mask[b, t]:
                    assert out.rewards[b, t] == 0 and out.kl[b, t] == 0
                    continue
                a, r = float(logp[b, t]), float(ref[b, t])
                kl = a - r if estimator == "k1" else math.exp(r - a) - (r - a) - 1
                expected = -coef * kl + (float(scores[b]) if t == positions[-1] else 0.0)
                assert float(out.rewards[b, t]) == pytest.approx(expected, abs=1e-12)
            assert int(out.last[b]) == positions[-1]
        # summed over the response: score - coef * sequence KL
        close(out.rewards.sum(-1), scores - coef * sequence_kl(logp, ref, mask, estimator))


def test_ppo_token_rewards_refuse_empty_responses():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        ppo_token_rewards(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2, 2), mask, 0.1)


def test_missing_eos_penalty_subtracts():
    ids = torch.tensor([[5, 9, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]])  # row 3: the EOS is padding
    has_eos = contains_eos(ids, mask, eos_token_ids=[2, 99])
    assert has_eos.tolist() == [True, False, True, False]
    assert contains_eos(ids, mask, 2).tolist() == has_eos.tolist()
    scores = torch.tensor([1.0, 1.0, -0.5, 3.0], dtype=F64)
    close(apply_missing_eos_penalty(scores, has_eos, 1.5), [1.0, -0.5, -0.5, 1.5])
    assert apply_missing_eos_penalty(scores, has_eos, None) is scores


def test_reward_robust_matches_loops(gen):
    rewards = torch.randn(6, 4, generator=gen, dtype=F64)
    stds = torch.rand(6, 4, generator=gen, dtype=F64)
    lam = 0.3
    rows = rewards.tolist()
    close(reward_robust(rewards, lam), [lam * sum(r) / 4 + (1 - lam) * min(r) for r in rows], "mean nominal")
    picked = [r[min(range(4), key=lambda h: float(s[h]))] for r, s in zip(rows, stds)]
    close(reward_robust(rewards, lam, stds=stds), [lam * p + (1 - lam) * min(r) for p, r in zip(picked, rows)])
    nominal = torch.randn(6, generator=gen, dtype=F64)
    close(reward_robust(rewards, 1.0, nominal=nominal), nominal)
    close(reward_robust(rewards, 0.0), rewards.min(1).values)
    with pytest.raises(ValueError):
        reward_robust(rewards, 1.5)
    with pytest.raises(ValueError):
        reward_robust(rewards[0], 0.5)


def test_maxmin_reward_batch_and_sample(gen):
    rewards = torch.randn(10, 3, generator=gen, dtype=F64) + torch.tensor([0.0, -0.8, 0.4], dtype=F64)
    means = [sum(rewards[:, h].tolist()) / 10 for h in range(3)]
    worst = min(range(3), key=lambda h: means[h])
    assert worst_group(rewards) == worst == 1
    close(maxmin_reward(rewards), rewards[:, worst])
    close(maxmin_reward(rewards, "sample"), [min(r) for r in rewards.tolist()])
    assert float(maxmin_reward(rewards, "sample").mean()) <= float(maxmin_reward(rewards).mean())
    # across processes the worst group is chosen on the global batch: rank 1 alone would pick another group
    shard0 = torch.tensor([[0.0, -5.0], [0.0, -5.0]], dtype=F64)
    shard1 = torch.tensor([[-1.0, 0.0]], dtype=F64)
    assert worst_group(shard1) == 0
    picks = ThreadWorld(2).run(lambda rank, rs: worst_group([shard0, shard1][rank], rs))
    assert picks == [1, 1]
    with pytest.raises(ValueError):
        maxmin_reward(rewards, "median")


# ------------------------------------------------------------------------------------------------------ advantages


def test_registry():
    assert {"gae", "rloo", "grpo", "reinforce_baseline"} <= set(rl.ADVANTAGES)
    assert get_advantage("rloo") is rl.rloo
    with pytest.raises(KeyError, match="did you mean 'grpo'"):
        get_advantage("gpro")
    with pytest.raises(ValueError, match="twice"):
        register_advantage("gae")(lambda rewards, mask: None)


def gae_loop(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
             lam: float) -> tuple[list[list[float]], list[list[float]]]:
    """Reference GAE: keep each row's response tokens, run the textbook reversed loop, put the results back."""
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        positions = [t for t in range(T) if mask[b, t]]
        next_value, last = 0.0, 0.0
        for t in reversed(positions):
            r, v = float(rewards[b, t]), float(values[b, t])
            delta = r + gamma * next_value - v
            last = delta + gamma * lam * last
            adv[b][t], ret[b][t] = last, last + v
            next_value = v
    return adv, ret


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0)])
def test_gae_matches_reversed_loop(gen, holes, gamma, lam):
    B, T = 6, 10
    mask = random_mask(gen, B, T, holes=holes)
    rewards = with_nan_padding(torch.randn(B, T, generator=gen, dtype=F64), mask)
    values = with_nan_padding(torch.randn(B, T, generator=gen, dtype=F64), mask)
    out = get_advantage("gae")(rewards, mask, values=values, gamma=gamma, lam=lam)
    adv, ret = gae_loop(rewards, values, mask, gamma, lam)
    close(out.advantages, adv, "advantages")
    close(out.returns, ret, "returns")


def test_gae_with_gamma_lam_one_is_monte_carlo_return_minus_value(gen):
    mask = right_padded_mask([4, 2, 6], 6)
    rewards = torch.randn(3, 6, generator=gen, dtype=F64) * mask
    values = torch.randn(3, 6, generator=gen, dtype=F64) * mask
    out = rl.gae(rewards, mask, values=values, gamma=1.0, lam=1.0)
    togo = rewards.flip(-1).cumsum(-1).flip(-1)
    close(out.advantages, (togo - values) * mask)
    close(out.returns, togo * mask)


def test_gae_padding_does_not_matter(gen):
    mask = right_padded_mask([3, 5], 6)
    r = torch.randn(2, 6, generator=gen, dtype=F64)
    v = torch.randn(2, 6, generator=gen, dtype=F64)
    a = rl.gae(r, mask, values=v)
    b = rl.gae(torch.where(mask, r, 1e6), mask, values=torch.where(mask, v, -7.0))
    close(a.advantages, b.advantages)
    close(a.returns, b.returns)


def token_mask_and_rewards(gen, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = random_mask(gen, B, T)
    token_rewards = with_nan_padding(torch.randn(B, T, generator=gen, dtype=F64), mask)
    seq = torch.tensor([sum(float(token_rewards[b, t]) for t in range(T) if mask[b, t]) for b in range(B)],
                       dtype=F64)
    return mask, token_rewards, seq


def assert_broadcast(per_token: torch.Tensor, per_seq: list[float], mask: torch.Tensor, what: str) -> None:
    expected = [[per_seq[b] if mask[b, t] else 0.0 for t in range(mask.shape[1])] for b in range(mask.shape[0])]
    close(per_token, expected, what)


@pytest.mark.parametrize("G", [2, 3, 4])
def test_rloo_is_leave_one_out(gen, G):
    P, T = 3, 6
    mask, token_rewards, R = token_mask_and_rewards(gen, P * G, T)
    expected = []
    for i in range(P * G):
        p = i // G
        others = [float(R[j]) for j in range(p * G, p * G + G) if j != i]
        expected.append(float(R[i]) - sum(others) / len(others))
    out = get_advantage("rloo")(R, mask, group_size=G)
    assert_broadcast(out.advantages, expected, mask, "rloo from scores")
    close(out.sequence, expected, "rloo per sequence")
    assert_broadcast(out.returns, R.tolist(), mask, "rloo returns")
    close(rl.rloo(token_rewards, mask, group_size=G).advantages, out.advantages)  # token rewards are summed
    group_means = R.view(P, G).mean(1).repeat_interleave(G)
    assert_broadcast(out.advantages, (G / (G - 1) * (R - group_means)).tolist(), mask, "G/(G-1) identity")
    normed = rl.rloo(R, mask, group_size=G, normalize=True).advantages
    mean, sd = statistics.fmean(expected), statistics.stdev(expected)
    assert_broadcast(normed, [(e - mean) / (sd + 1e-4) for e in expected], mask, "normalized")


def test_group_layout_errors(gen):
    mask = torch.ones(6, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="prompt-major"):
        rl.rloo(torch.zeros(6), mask, group_size=4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        rl.rloo(torch.zeros(6), mask, group_size=1)
    with pytest.raises(ValueError, match="scale_rewards"):
        rl.grpo(torch.zeros(6), mask, group_size=2, scale_rewards="global")


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_matches_loops(gen, scale):
    P, G, T = 4, 5, 6
    mask, token_rewards, R = token_mask_and_rewards(gen, P * G, T)
    R[5:10] = 0.7  # a group with zero std
    rows = R.tolist()
    expected = []
    for i, r in enumerate(rows):
        group = rows[(i // G) * G:(i // G) * G + G]
        centred = r - statistics.fmean(group)
        if scale == "group":
            centred /= statistics.stdev(group) + 1e-4
        elif scale == "batch":
            centred /= statistics.stdev(rows) + 1e-4
        expected.append(centred)
    out = get_advantage("grpo")(R, mask, group_size=G, scale_rewards=scale)
    assert_broadcast(out.advantages, expected, mask, f"grpo {scale}")
    assert_broadcast(out.returns, rows, mask, "grpo returns")
    assert (out.advantages[5:10] == 0).all()  # identical rewards: no signal, and no division by zero


def test_grpo_batch_scale_across_processes(gen):
    R = torch.randn(8, generator=gen, dtype=F64)
    mask = torch.ones(8, 3, dtype=torch.bool)
    full = rl.grpo(R, mask, group_size=2, scale_rewards="batch").advantages
    parts = ThreadWorld(2).run(lambda rank, rs: rl.grpo(R[4 * rank:4 * rank + 4], mask[:4], group_size=2,
                                                        scale_rewards="batch", reduce_sum=rs).advantages)
    close(torch.cat(parts), full)


def test_reinforce_baseline_batch_and_running(gen):
    mask, token_rewards, R = token_mask_and_rewards(gen, 6, 5)
    out = get_advantage("reinforce_baseline")(token_rewards, mask)
    assert_broadcast(out.advantages, [r - statistics.fmean(R.tolist()) for r in R.tolist()], mask, "batch")
    running = RunningMoments()
    first = rl.reinforce_baseline(R[:3], mask[:3], baseline="running", running=running)
    assert_broadcast(first.advantages, R[:3].tolist(), mask[:3], "no history: baseline 0")
    second = rl.reinforce_baseline(R[3:], mask[3:], baseline="running", running=running)
    b = statistics.fmean(R[:3].tolist())  # the baseline is the mean of *previous* rewards
    assert_broadcast(second.advantages, [r - b for r in R[3:].tolist()], mask[3:], "running")
    assert running.count == 6
    parts = ThreadWorld(2).run(lambda rank, rs: rl.reinforce_baseline(R[3 * rank:3 * rank + 3],
                                                                      mask[3 * rank:3 * rank + 3],
                                                                      reduce_sum=rs).advantages)
    close(torch.cat(parts), rl.reinforce_baseline(R, mask).advantages)
    with pytest.raises(ValueError, match="RunningMoments"):
        rl.reinforce_baseline(R, mask, baseline="running")


# ---------------------------------------------------------------------------------------------------- policy loss


def policy_loss_loop(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float,
                     eps_high: float, level: str, agg: str) -> tuple[torch.Tensor, float]:
    """Reference clipped loss built token by token from torch scalars (so autograd gives reference gradients)."""
    B, T = logp.shape
    rows, clipped_rows = [], []
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        log_ratios = [logp[b, t] - old[b, t] for t in idx]
        if level == "token":
            ratios = [torch.exp(x) for x in log_ratios]
        else:
            total = sum(log_ratios[1:], log_ratios[0])
            shared = torch.exp(total / len(idx)) if level == "sequence" else torch.exp(total)
            ratios = [shared] * len(idx)
        losses, clipped = [], []
        for t, ratio in zip(idx, ratios):
            a = float(adv[b, t]) if adv.dim() == 2 else float(adv[b])
            losses.append(-torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a))
            clipped.append(float((ratio > 1 + eps_high and a > 0) or (ratio < 1 - eps_low and a < 0)))
        rows.append(losses)
        clipped_rows.append(clipped)
    if agg == "token_mean":
        flat = [x for row in rows for x in row]
        loss = sum(flat[1:], flat[0]) / len(flat)
    elif agg == "sequence_mean":
        loss = sum(sum(row[1:], row[0]) / len(row) for row in rows) / B
    else:
        loss = sum(sum(row[1:], row[0]) for row in rows) / B
    if level == "token":
        flat_c = [c for row in clipped_rows for c in row]
        frac = sum(flat_c) / len(flat_c)
    else:
        frac = sum(sum(row) / len(row) for row in clipped_rows) / B
    return loss, frac


@pytest.mark.parametrize("level", ["token", "sequence", "sequence_product"])
@pytest.mark.parametrize("agg", ["token_mean", "sequence_mean", "sequence_sum"])
@pytest.mark.parametrize("token_adv", [False, True])
def test_ppo_policy_loss_matches_loop(gen, level, agg, token_adv):
    B, T = 5, 6
    mask = random_mask(gen, B, T)
    old = -torch.rand(B, T, generator=gen, dtype=F64) * 2
    scale = 0.4 if level != "sequence_product" else 0.15
    logp_values = old + scale * torch.randn(B, T, generator=gen, dtype=F64)
    adv = torch.randn(B, T, generator=gen, dtype=F64) if token_adv else torch.randn(B, generator=gen, dtype=F64)
    eps_low, eps_high = 0.2, 0.28

    leaf = logp_values.clone().requires_grad_(True)
    nan_old = with_nan_padding(old, mask)
    nan_adv = with_nan_padding(adv, mask) if token_adv else adv
    out = ppo_policy_loss(with_nan_padding(leaf, mask), nan_old, nan_adv, mask, eps_low, eps_high, level, agg)
    out.loss.backward()

    ref_leaf = logp_values.clone().requires_grad_(True)
    ref_loss, ref_frac = policy_loss_loop(ref_leaf, old, adv, mask, eps_low, eps_high, level, agg)
    ref_loss.backward()
    close(out.loss, ref_loss, "loss")
    close(leaf.grad, ref_leaf.grad, "gradient")  # includes 0 at the (NaN) padding
    close(out.metrics["clip_fraction"], ref_frac, "clip fraction")
    lr = (logp_values - old)[mask]
    close(out.metrics["approx_kl"], (torch.exp(lr) - 1 - lr).mean(), "approx kl")
    assert 0 < ref_frac < 1 or level != "token"  # the inputs do exercise clipping


def test_ppo_policy_loss_unclipped_region_is_vanilla_policy_gradient(gen):
    """With ratio 1 (on-policy) the gradient is -A / N per token: the REINFORCE gradient of the token mean."""
    B, T = 3, 4
    mask = right_padded_mask([4, 2, 3], T)
    logp = (-torch.rand(B, T, generator=gen, dtype=F64)).requires_grad_(True)
    adv = torch.randn(B, generator=gen, dtype=F64)
    out = ppo_policy_loss(logp, logp.detach(), adv, mask)
    out.loss.backward()
    close(logp.grad, -adv.unsqueeze(1) * mask / mask.sum())
    close(out.loss, -(adv.unsqueeze(1) * mask).sum() / mask.sum())
    assert out.metrics["clip_fraction"] == 0 and out.metrics["approx_kl"] == 0


def test_aggregate_modes_and_normalizer(gen):
    mask = right_padded_mask([3, 1, 4], 4)
    x = with_nan_padding(torch.randn(3, 4, generator=gen, dtype=F64), mask)
    rows = [[float(x[b, t]) for t in range(4) if mask[b, t]] for b in range(3)]
    flat = [v for r in rows for v in r]
    close(aggregate(x, mask, "token_mean"), sum(flat) / len(flat))
    close(aggregate(x, mask, "token_mean", normalizer=20.0), sum(flat) / 20)
    close(aggregate(x, mask, "sequence_mean"), sum(sum(r) / len(r) for r in rows) / 3)
    close(aggregate(x, mask, "sequence_sum"), sum(sum(r) for r in rows) / 3)
    with pytest.raises(ValueError):
        aggregate(x, mask, "sequence_mean", normalizer=3.0)
    with pytest.raises(ValueError):
        aggregate(x, mask, "mean")


def test_clipped_value_loss_matches_loop(gen):
    B, T, eps = 4, 5, 0.2
    mask = random_mask(gen, B, T)
    old = torch.randn(B, T, generator=gen, dtype=F64)
    values_data = old + 0.5 * torch.randn(B, T, generator=gen, dtype=F64)
    returns = torch.randn(B, T, generator=gen, dtype=F64)
    values = values_data.clone().requires_grad_(True)
    out = clipped_value_loss(with_nan_padding(values, mask), with_nan_padding(old, mask),
                             with_nan_padding(returns, mask), mask, eps)
    out.loss.backward()
    ref_values = values_data.clone().requires_grad_(True)
    terms, clipped = [], []
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            v, o, r = ref_values[b, t], float(old[b, t]), float(returns[b, t])
            vc = torch.clamp(v, o - eps, o + eps)
            terms.append(torch.maximum((v - r) ** 2, (vc - r) ** 2))
            clipped.append(float((vc - r) ** 2 > (v - r) ** 2))
    ref = 0.5 * sum(terms[1:], terms[0]) / len(terms)
    ref.backward()
    close(out.loss, ref, "value loss")
    close(values.grad, ref_values.grad, "value gradient")
    close(out.metrics["value_clip_fraction"], sum(clipped) / len(clipped))
    plain = clipped_value_loss(values_data, old, returns, mask, clip_eps=None)
    close(plain.loss, 0.5 * ((values_data - returns) ** 2)[mask].mean())


def test_entropy_and_explained_variance(gen):
    logits = torch.randn(3, 4, 11, generator=gen, dtype=F64) * 2
    mask = right_padded_mask([4, 1, 2], 4)
    ent = token_entropy(logits)
    for b in range(3):
        for t in range(4):
            p = torch.softmax(logits[b, t], 0).tolist()
            assert float(ent[b, t]) == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-12)
    close(masked_entropy(logits, mask), ent[mask].mean())
    assert token_entropy(torch.zeros(2, 7)).allclose(torch.full((2,), math.log(7)))
    half = token_entropy(logits.to(torch.bfloat16))
    assert half.dtype == torch.float32

    values = torch.randn(3, 4, generator=gen, dtype=F64)
    returns = values + 0.3 * torch.randn(3, 4, generator=gen, dtype=F64)
    r, v = returns[mask].numpy(), values[mask].numpy()
    close(explained_variance(with_nan_padding(values, mask), with_nan_padding(returns, mask), mask),
          1 - np.var(r - v) / np.var(r))
    close(explained_variance(returns, returns, mask), 1.0)
    assert torch.isnan(explained_variance(values, torch.ones(3, 4, dtype=F64), mask))


# ----------------------------------------------------------------------------------------------------------------
# TRL 1.16 on identical inputs.
#
# What TRL 1.16 has, and how it is reached (the trainers' methods are called unbound with a stand-in ``self`` that
# carries only the attributes the method reads, as tests/losses/test_losses_trl.py does for DPO):
#
# * GRPO advantages: inline in ``GRPOTrainer._generate_and_score_completions``; the stand-in's ``_generate`` returns
#   fixed completions and ``_calculate_rewards`` fixed rewards (no model, no generation, beta = 0).
# * RLOO advantages with the KL penalty: ``RLOOTrainer._generate_and_score_completions``, with a stand-in
#   ``_get_per_token_logps_and_entropies`` that returns given old / reference log-probs.
# * The clipped losses: ``GRPOTrainer._compute_loss`` (loss types grpo, bnpo, dr_grpo, dapo; token and sequence
#   importance sampling; k3 KL term) and ``RLOOTrainer._compute_loss`` (sequence-product ratio).
# * Entropy: ``trl.trainer.utils.entropy_from_logits``.
#
# Not in TRL 1.16 (PPOTrainer and its helpers were removed): ``masked_whiten``, ``masked_var``,
# ``AdaptiveKLController``, ``RunningMoments``, PPO's GAE and per-token rewards; :func:`test_trl_ppo_helpers` skips
# with that reason unless a TRL that has them is installed. They are tested above against numpy / loops; in addition,
# a one-off check (not part of this suite) ran TRL 0.11.4's own ``masked_mean/var/whiten``, ``AdaptiveKLController``,
# ``RunningMoments`` and PPOv2's reward + GAE loop on the same inputs as alignkit: identical to float64 round-off
# (RunningMoments to ~1e-7, because TRL 0.11 keeps its moments in float32).
# ----------------------------------------------------------------------------------------------------------------

from collections import defaultdict  # noqa: E402
from types import SimpleNamespace  # noqa: E402


def _trl():
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return pytest.importorskip("trl", reason="TRL is a test-only dependency: pip install trl==1.16.0")


def _standin(**attrs: Any) -> SimpleNamespace:
    accelerator = SimpleNamespace(device=torch.device("cpu"), process_index=0, num_processes=1, is_main_process=True,
                                  gather=lambda t: t, reduce=lambda t, reduction="sum": t,
                                  unwrap_model=lambda m: m)
    base = dict(accelerator=accelerator, model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
                _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, aux_loss_enabled=False,
                use_vllm=False, current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
                top_entropy_quantile=1.0, off_policy_mask_threshold=None, _tokenizer=SimpleNamespace(pad_token_id=0),
                pad_to_multiple_of=None, mask_truncated_completions=False, environment_factories=None, tools=None,
                environments=[], reward_func_names=["r"], _pending_extra_logs={}, _pending_metrics={},
                log_multimodal=False, _logs={"prompt": [], "completion": [], "rewards": defaultdict(list),
                                             "advantages": [], "extra": defaultdict(list)})
    base.update(attrs)
    return SimpleNamespace(**base)


def _args(B: int, **extra: Any) -> SimpleNamespace:
    return SimpleNamespace(per_device_train_batch_size=B, steps_per_generation=1, gradient_accumulation_steps=1,
                           gradient_checkpointing_kwargs=None, delta=None, use_bias_correction_kl=False, **extra)


def _completions(mask: torch.Tensor) -> list[list[int]]:
    return [[7] * int(row.sum()) for row in mask]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(gen, scale):
    trl = _trl()
    P, G, T = 3, 4, 5
    B = P * G
    mask = random_mask(gen, B, T)
    R = torch.randn(B, generator=gen, dtype=F64)
    R[4:8] = 1.0  # one group without variance
    ids = _completions(mask)
    standin = _standin(
        args=_args(B), num_iterations=1, beta=0.0, num_generations=G, scale_rewards=scale,
        multi_objective_aggregation="sum_then_normalize", reward_weights=torch.ones(1, dtype=F64),
        _generate=lambda prompts: ([[1]] * B, ids, None, ["c"] * B, None, {}, None, None),
        _calculate_rewards=lambda inputs, prompts, completions, completion_ids: R.view(-1, 1).clone())
    out = trl.GRPOTrainer._generate_and_score_completions(standin, [{"prompt": f"p{i // G}"} for i in range(B)])
    assert torch.equal(out["completion_mask"].bool(), mask)
    ours = rl.grpo(R, mask, group_size=G, scale_rewards=scale).sequence
    # TRL's nanstd computes Bessel's factor count / (count - 1) from integer counts in float32: ~1e-8 relative
    close(ours, out["advantages"], f"grpo {scale}", rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_rloo_advantages_with_kl_penalty_match_trl(gen, normalize, beta):
    """TRL's R_i = score - beta * sum_t (old_logp - ref_logp) equals the summed alignkit PPO token rewards (k1)."""
    trl = _trl()
    P, G, T = 3, 3, 6
    B = P * G
    mask = random_mask(gen, B, T)
    old = -torch.rand(B, T, generator=gen, dtype=F64) * 2
    ref = -torch.rand(B, T, generator=gen, dtype=F64) * 2
    scores = torch.randn(B, generator=gen, dtype=F64)
    ids = _completions(mask)
    standin = _standin(args=_args(B), ref_model=object(), beta=beta, reward_clip_range=None,
                       normalize_advantages=normalize, num_generations=G, reward_weights=torch.ones(1, dtype=F64),
                       _generate=lambda prompts: ([[1]] * B, ids, ["c"] * B),
                       _calculate_rewards=lambda inputs, prompts, completions, completion_ids: scores.view(-1, 1))
    standin._get_per_token_logps_and_entropies = lambda model, *a, **k: (old if model is standin.model else ref,
                                                                         None, None)
    out = trl.RLOOTrainer._generate_and_score_completions(standin, [{"prompt": f"p{i // G}"} for i in range(B)])
    token_rewards = ppo_token_rewards(scores, old, ref, mask, kl_coef=beta, estimator="k1").rewards
    ours = rl.rloo(token_rewards, mask, group_size=G, normalize=normalize).sequence
    close(ours, out["advantages"], "rloo advantages", rtol=1e-12, atol=1e-12)
    close(masked_sum_rows(old, mask), out["old_logps"], "old sequence log-probs")


def masked_sum_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype)).sum(-1)


def _policy_inputs(gen, B: int, T: int, scale: float = 0.4):
    mask = random_mask(gen, B, T)
    old = -torch.rand(B, T, generator=gen, dtype=F64) * 2
    logp = old + scale * torch.randn(B, T, generator=gen, dtype=F64)
    ref = old + 0.3 * torch.randn(B, T, generator=gen, dtype=F64)
    adv = torch.randn(B, generator=gen, dtype=F64)
    return mask, old, logp, ref, adv


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_loss_matches_trl_grpo(gen, loss_type, level, beta):
    trl = _trl()
    B, T = 6, 7
    mask, old, logp, ref, adv = _policy_inputs(gen, B, T, scale=0.4 if level == "token" else 0.1)
    eps_low, eps_high = 0.2, 0.28
    entropies = torch.rand(B, T, generator=gen, dtype=F64)
    trl_leaf = logp.clone().requires_grad_(True)
    standin = _standin(args=_args(B), importance_sampling_level=level, beta=beta, loss_type=loss_type,
                       epsilon_low=eps_low, epsilon_high=eps_high, max_completion_length=T,
                       _get_per_token_logps_and_entropies=lambda *a, **k: (trl_leaf, entropies, None))
    inputs = {"prompt_ids": torch.ones(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    trl_loss = trl.GRPOTrainer._compute_loss(standin, None, inputs)
    trl_loss.backward()

    leaf = logp.clone().requires_grad_(True)
    agg = {"grpo": "sequence_mean", "bnpo": "token_mean", "dr_grpo": "sequence_sum", "dapo": "token_mean"}[loss_type]
    out = ppo_policy_loss(leaf, old, adv, mask, eps_low, eps_high, ratio_level=level, aggregation=agg)
    loss = out.loss + beta * aggregate(token_kl(leaf, ref, "k3"), mask, agg)
    if loss_type == "dr_grpo":
        loss = loss / T  # Dr. GRPO: the per-sequence sums divided by the maximum completion length
    loss.backward()
    close(loss, trl_loss, f"{loss_type}/{level} loss")
    close(leaf.grad, trl_leaf.grad, f"{loss_type}/{level} gradient")
    metrics = standin._metrics["train"]  # TRL's metrics divide by float32 token counts: compare at 1e-6
    close(out.metrics["clip_fraction"], metrics["clip_ratio/region_mean"][-1], "clip fraction", rtol=1e-6)
    if beta:
        close(masked_mean(token_kl(logp, ref, "k3"), mask), metrics["kl"][-1], "kl metric", rtol=1e-6)
    close(masked_mean(entropies, mask), metrics["entropy"][-1], "entropy metric", rtol=1e-6)


def test_policy_loss_matches_trl_rloo(gen):
    trl = _trl()
    B, T = 8, 5
    mask, old, logp, _, adv = _policy_inputs(gen, B, T, scale=0.25)
    trl_leaf = logp.clone().requires_grad_(True)
    standin = _standin(epsilon_low=0.2, epsilon_high=0.2,
                       _get_per_token_logps_and_entropies=lambda *a, **k: (trl_leaf, torch.zeros(B, T, dtype=F64),
                                                                           None))
    inputs = {"prompt_ids": torch.ones(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": adv, "old_logps": masked_sum_rows(old, mask)}
    trl_loss = trl.RLOOTrainer._compute_loss(standin, None, inputs)
    trl_loss.backward()
    leaf = logp.clone().requires_grad_(True)
    out = ppo_policy_loss(leaf, old, adv, mask, 0.2, ratio_level="sequence_product", aggregation="sequence_mean")
    out.loss.backward()
    close(out.loss, trl_loss, "rloo loss")
    close(leaf.grad, trl_leaf.grad, "rloo gradient")
    frac = standin._metrics["train"]["clip_ratio/region_mean"][-1]
    close(out.metrics["clip_fraction"], frac, "clip fraction", rtol=1e-6)
    assert 0 < frac < 1  # the inputs exercise clipping


def test_entropy_matches_trl(gen):
    _trl()
    from trl.trainer.utils import entropy_from_logits

    logits = torch.randn(3, 5, 17, generator=gen, dtype=F64) * 3
    close(token_entropy(logits), entropy_from_logits(logits), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["masked_whiten", "masked_var", "AdaptiveKLController"])
def test_trl_ppo_helpers(gen, name):
    _trl()
    import importlib

    found = None
    for module in ("trl.trainer.utils", "trl.core", "trl.experimental.ppo", "trl.experimental.utils"):
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if found is not None:
            break
    if found is None:
        import trl

        pytest.skip(f"TRL {trl.__version__} has no {name} (removed with PPOTrainer); checked against numpy and the "
                    f"formula of TRL < 0.12 instead")
    x = torch.randn(4, 6, generator=gen, dtype=F64)
    mask = random_mask(gen, 4, 6)
    if name == "masked_whiten":
        close(masked_whiten(x, mask)[mask], found(x, mask.double())[mask])
    elif name == "masked_var":
        close(masked_var(x, mask), found(x, mask.double()))
    elif name == "AdaptiveKLController":
        theirs, ours = found(0.2, 6.0, 10000), AdaptiveKL(0.2, 6.0, 10000)
        for kl in (3.0, 9.0, 6.5):
            theirs.update(kl, 64)
            ours.update(kl, 64)
        assert ours.value == pytest.approx(theirs.value, rel=1e-12)
