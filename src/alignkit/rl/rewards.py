"""Rewards for policy-gradient RLHF: per-token PPO rewards, the missing-EOS penalty, and multi-head combinations.

**Per-token PPO reward** (Ziegler et al. 2019; Stiennon et al. 2020, "Learning to summarize from human feedback";
Ouyang et al. 2022, InstructGPT): every response token t gets ``r_t = -kl_coef * kl_t`` (``kl_t`` a per-token
estimator from :mod:`alignkit.rl.kl`, k1 = ``logp - ref`` by default, as in those papers and TRL's old PPO trainer),
and the last response token also gets the sequence score: ``r_T += score``. Summed over the response this is
``score - kl_coef * KL_seq``, the KL-regularised objective.

**Missing EOS**: a response that never produced EOS (truncated at the length limit) gets ``score - penalty``.
alignkit *subtracts* the penalty, as TRL 1.16 does (``trl/experimental/online_dpo/online_dpo_trainer.py``:
``rewards[~contain_eos_token] -= missing_eos_penalty``); it does not replace the score.

**Multi-head combinations** take ``rewards [B, H]`` (one column per ensemble head or per group reward model):

* :func:`reward_robust` (Yan et al. 2024, "Reward-Robust RLHF in LLMs", arXiv:2409.15360): the objective
  ``J = lam * J_perform + (1 - lam) * J_robust`` mixes the nominal reward with the minimum over the uncertainty set of
  reward functions (the ensemble heads), i.e. per sample ``lam * r_nominal + (1 - lam) * min_h r_h``. The abstract
  (arXiv HTML v3) confirms "integrate both nominal performance and minimum reward signals"; the lam-mixture form is
  the paper's objective as METHODS.md records it. What counts as nominal is a choice here: the head mean by default;
  pass ``stds`` (each head's predicted std, as BRME heads output a mean and a std) to take the most confident head's
  reward (our reading of BRME — not confirmed from the paper's text with the sources available), or an explicit
  ``nominal`` tensor.
* :func:`maxmin_reward` (Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with Diverse Human Preferences",
  arXiv:2402.08925): the policy maximises ``min_u E[r_u]``, the expected reward of the worst-off group. ``mode="batch"``
  (default) follows that objective: pick the group whose mean reward over the (global) batch is lowest and use its
  reward for every sample, so the policy gradient is that of ``E[r_{u_min}]``. ``mode="sample"`` takes the per-sample
  minimum ``min_u r_u(x, y)`` instead, a more pessimistic surrogate (it is Coste et al. 2024's worst-case optimisation
  for ensembles) and always <= the batch mode's reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from alignkit.rl.kl import Estimator, token_kl
from alignkit.rl.normalize import ReduceSum, as_mask


@dataclass
class TokenRewards:
    rewards: torch.Tensor  # [B, T]: -kl_coef * kl_t on response tokens, + score at the last one; 0 elsewhere
    kl: torch.Tensor       # [B, T]: the per-token KL estimate on response tokens; 0 elsewhere
    last: torch.Tensor     # [B] long: index of each row's last response token (where the score went)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last set position in each row of ``mask`` ``[B, T]``; an empty row is an error."""
    m = mask if mask.dtype == torch.bool else mask != 0
    empty = ~m.any(-1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows[:10]} have no response tokens: there is no token to put their score on")
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    return torch.where(m, positions, torch.full_like(positions, -1)).max(-1).values


def ppo_token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float, estimator: Estimator = "k1") -> TokenRewards:
    """Per-token PPO rewards ``[B, T]``: ``-kl_coef * kl_t`` on every response token, plus ``scores`` ``[B]`` at the
    last response token of each row. Positions off the mask are 0 whatever ``logp`` / ``ref`` hold there."""
    m = as_mask(mask, logp)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    kl = torch.where(m, token_kl(torch.where(m, logp, zero), torch.where(m, ref.to(logp.dtype), zero), estimator), zero)
    rewards = -kl_coef * kl
    last = last_token_index(m)
    rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))
    return TokenRewards(rewards, kl, last)


def contains_eos(token_ids: torch.Tensor, mask: torch.Tensor, eos_token_ids: int | Sequence[int]) -> torch.Tensor:
    """``[B]`` bool: whether any response token of the row is one of ``eos_token_ids``."""
    ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    is_eos = torch.isin(token_ids, torch.tensor(ids, device=token_ids.device))
    return (is_eos & as_mask(mask, token_ids)).any(-1)


def apply_missing_eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """``scores - penalty`` where ``has_eos`` is False (TRL's rule: subtract, not replace); ``None`` is a no-op."""
    if penalty is None:
        return scores
    return torch.where(has_eos.bool(), scores, scores - penalty)


def reward_robust(rewards: torch.Tensor, lam: float = 0.5, nominal: torch.Tensor | None = None,
                  stds: torch.Tensor | None = None) -> torch.Tensor:
    """Reward-robust RLHF (Yan et al. 2024): ``lam * r_nominal + (1 - lam) * min_h r_h`` per sample, ``[B]``.

    ``rewards`` ``[B, H]`` are the heads' rewards. ``r_nominal`` is ``nominal`` ``[B]`` if given, else the reward of
    the head with the smallest ``stds`` ``[B, H]`` if given, else the head mean. ``lam = 1`` is the nominal reward,
    ``lam = 0`` the worst case over heads.
    """
    if rewards.dim() != 2:
        raise ValueError(f"reward_robust: rewards must be [B, H], got shape {tuple(rewards.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"reward_robust: lam must be in [0, 1], got {lam}")
    if nominal is not None and stds is not None:
        raise ValueError("reward_robust: pass nominal or stds, not both")
    if nominal is None:
        if stds is not None:
            if stds.shape != rewards.shape:
                raise ValueError(f"reward_robust: stds shape {tuple(stds.shape)} != rewards {tuple(rewards.shape)}")
            nominal = rewards.gather(1, stds.argmin(1, keepdim=True)).squeeze(1)
        else:
            nominal = rewards.mean(1)
    return lam * nominal + (1.0 - lam) * rewards.min(1).values


def worst_group(rewards: torch.Tensor, reduce_sum: ReduceSum | None = None) -> int:
    """Index of the column of ``rewards`` ``[B, H]`` with the lowest mean over the (global) batch."""
    sums = rewards.detach().double().sum(0)
    count = torch.tensor([float(rewards.shape[0])], dtype=torch.float64, device=rewards.device)
    stats = torch.cat([sums, count])
    if reduce_sum is not None:
        stats = reduce_sum(stats)
    return int((stats[:-1] / stats[-1]).argmin())


def maxmin_reward(rewards: torch.Tensor, mode: Literal["batch", "sample"] = "batch",
                  reduce_sum: ReduceSum | None = None) -> torch.Tensor:
    """MaxMin-RLHF reward ``[B]`` from per-group rewards ``[B, H]``.

    ``batch``: every sample gets the reward of :func:`worst_group` (the group with the lowest mean reward over the
    batch; all processes' batch with ``reduce_sum``). ``sample``: each sample's minimum over groups.
    """
    if rewards.dim() != 2:
        raise ValueError(f"maxmin_reward: rewards must be [B, H], got shape {tuple(rewards.shape)}")
    if mode == "batch":
        return rewards[:, worst_group(rewards, reduce_sum)]
    if mode == "sample":
        return rewards.min(1).values
    raise ValueError(f"maxmin_reward: mode must be 'batch' or 'sample', got '{mode}'")
