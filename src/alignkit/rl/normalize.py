"""Masked statistics, whitening and running moments for policy-gradient RLHF.

Conventions (all of :mod:`alignkit.rl`): token tensors are ``[B, T]`` with a ``mask`` ``[B, T]`` (bool or 0/1 float)
that marks the response tokens. Values at masked-out positions never change a result, even when they are NaN or inf
(they are replaced by 0 with ``torch.where`` before any arithmetic, never multiplied by the mask).

Distributed runs: every statistic that spans the batch takes an optional ``reduce_sum(tensor) -> tensor`` that sums a
tensor over all processes (e.g. ``lambda t: accelerator.reduce(t, "sum")`` or an ``all_reduce`` wrapper); with it,
each process gets the statistics of the global batch, so N processes give the numbers one process would give on the
concatenated batch. ``None`` means "this process only".

Formulas confirmed against TRL < 0.12 ``trl/core.py`` (``masked_mean``, ``masked_var`` with Bessel's correction by
default, ``masked_whiten`` = ``(x - mean) * rsqrt(var + 1e-8)``) and its ``RunningMoments`` (Chan et al.'s parallel
update; the running std is the unbiased one). TRL 1.16 no longer ships any of them (the PPO trainer was removed), so
the tests compare against independent numpy computations; a one-off run of TRL 0.11.4's own functions on the same
inputs agreed exactly (RunningMoments to ~1e-7: TRL 0.11 keeps its moments in float32).

Reward normalisation follows PPO-max (Zheng et al. 2023, "Secrets of RLHF in Large Language Models Part I: PPO",
arXiv:2307.04964, and its code MOSS-RLHF): update the running moments with the batch's rewards first, then
``r' = clip((r - mean) / std, -clip, clip)`` (``shift_mean=False``: ``r / std``, "reward scaling"); MOSS-RLHF's default
clip is 10.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ReduceSum = Callable[[torch.Tensor], torch.Tensor]


def as_mask(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``mask`` as bool, broadcast to ``values``' shape (a [B, 1] mask broadcasts over tokens)."""
    m = mask if mask.dtype == torch.bool else mask != 0
    try:
        return m.expand_as(values)
    except RuntimeError:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match values shape {tuple(values.shape)}") from None


def _masked_sum_count(values: torch.Tensor, mask: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    m = as_mask(mask, values)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    filled = torch.where(m, values, zero)
    if dim is None:
        return filled.sum(), m.sum().to(values.dtype)
    return filled.sum(dim), m.sum(dim).to(values.dtype)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set (over everything, or along ``dim``)."""
    return _masked_sum_count(values, mask, dim)[0]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None,
                reduce_sum: ReduceSum | None = None) -> torch.Tensor:
    """``sum(values * mask) / sum(mask)`` over everything (``dim=None``) or along ``dim``.

    An empty mask gives NaN (0/0) rather than a silent 0. ``reduce_sum`` (only with ``dim=None``) makes it the mean
    over all processes' tokens.
    """
    total, count = _masked_sum_count(values, mask, dim)
    if reduce_sum is not None:
        if dim is not None:
            raise ValueError("reduce_sum needs dim=None (a per-row mean is local by definition)")
        total, count = reduce_sum(torch.stack([total, count])).unbind()
    return total / count


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True,
               reduce_sum: ReduceSum | None = None) -> torch.Tensor:
    """Variance of the masked values: ``mean((x - mean)^2)``, times ``n / (n - 1)`` when ``unbiased``.

    Two passes (mean first, then squared deviations), so it stays accurate when the mean is large. Raises on an
    empty mask, and on a single value when ``unbiased`` (Bessel's correction would divide by zero).
    """
    total, count = _masked_sum_count(values, mask, None)
    if reduce_sum is not None:
        total, count = reduce_sum(torch.stack([total, count])).unbind()
    n = float(count)
    if n == 0:
        raise ValueError("masked_var: the mask selects no values")
    if unbiased and n < 2:
        raise ValueError("masked_var: the unbiased variance needs at least two values (the mask selects one)")
    mean = total / count
    sq = masked_sum((values - mean) ** 2, mask)
    if reduce_sum is not None:
        sq = reduce_sum(sq)
    var = sq / count
    return var * (n / (n - 1)) if unbiased else var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  unbiased: bool = True, reduce_sum: ReduceSum | None = None) -> torch.Tensor:
    """Whiten the masked values: ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back.

    ``var`` is unbiased by default and ``eps = 1e-8`` (as TRL's old ``masked_whiten``). Masked-out positions of the
    result are 0 (TRL's returned whitened padding; nothing downstream should read it).
    """
    m = as_mask(mask, values)
    mean = masked_mean(values, m, reduce_sum=reduce_sum)
    var = masked_var(values, m, unbiased=unbiased, reduce_sum=reduce_sum)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


class RunningMoments:
    """Running mean and variance of every value seen so far (Chan et al.'s parallel update), optionally global.

    ``update(x)`` folds a batch in: with ``n_a, mean_a, M2_a`` the running count, mean and sum of squared
    deviations and ``n_b, mean_b, M2_b`` the batch's, ``delta = mean_b - mean_a``, ``n = n_a + n_b``,
    ``mean = mean_a + delta * n_b / n``, ``M2 = M2_a + M2_b + delta^2 * n_a * n_b / n``. With ``reduce_sum`` the batch
    statistics are those of all processes' values (two reductions: count and sum, then squared deviations from the
    global batch mean), so every process holds the same moments. State is kept in Python float64.

    ``var`` is the population variance ``M2 / n``; ``std`` is the unbiased ``sqrt(M2 / (n - 1))`` (TRL's and
    MOSS-RLHF's convention; 0 until two values were seen).
    """

    def __init__(self, reduce_sum: ReduceSum | None = None) -> None:
        self.reduce_sum = reduce_sum
        self.count = 0.0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count > 0 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    def _batch_stats(self, values: torch.Tensor) -> tuple[float, float, float]:
        x = values.detach().reshape(-1).double()
        stats = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device), x.sum()])
        if self.reduce_sum is not None:
            stats = self.reduce_sum(stats)
        n, total = float(stats[0]), float(stats[1])
        if n == 0:
            return 0.0, 0.0, 0.0
        mean = total / n
        m2 = ((x - mean) ** 2).sum()
        if self.reduce_sum is not None:
            m2 = self.reduce_sum(m2)
        return n, mean, float(m2)

    def update(self, values: torch.Tensor) -> tuple[float, float]:
        """Fold ``values`` (any shape, all counted) in; returns this batch's (global) mean and unbiased std."""
        n_b, mean_b, m2_b = self._batch_stats(values)
        if n_b == 0:
            return math.nan, math.nan
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n
        return mean_b, (math.sqrt(m2_b / (n_b - 1)) if n_b > 1 else 0.0)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])


class RewardNormalizer:
    """PPO-max reward normalisation and clipping with running statistics (Zheng et al. 2023).

    ``normalizer(scores)`` first folds the batch into the running moments, then returns
    ``clip((r - mean) / std, -clip, clip)`` (``shift_mean=False``: ``clip(r / std, ...)``, the "reward scaling"
    variant; ``clip=None``: no clipping). Until the moments have a positive std (fewer than two values, or all equal)
    the scores are only centred / passed through unscaled. ``state_dict`` / ``load_state_dict`` checkpoint the moments.
    """

    def __init__(self, clip: float | None = 10.0, shift_mean: bool = True, reduce_sum: ReduceSum | None = None,
                 eps: float = 1e-8) -> None:
        if clip is not None and clip <= 0:
            raise ValueError(f"RewardNormalizer: clip must be positive or None, got {clip}")
        self.clip = clip
        self.shift_mean = shift_mean
        self.eps = eps
        self.moments = RunningMoments(reduce_sum)

    def __call__(self, scores: torch.Tensor, update: bool = True) -> torch.Tensor:
        if update:
            self.moments.update(scores)
        out = scores - self.moments.mean if self.shift_mean else scores
        std = self.moments.std
        if std > self.eps:
            out = out / std
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out

    def state_dict(self) -> dict[str, float]:
        return self.moments.state_dict()

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.moments.load_state_dict(state)
