"""Reward-model training objectives: pure functions of rewards (no model inside), one per method.

Rewards of a batch come as ``[B, K]`` tensors, one row per record with its K responses in collate order (ranked
responses first, best first, then any unranked ones), padded to the largest K; ``valid`` marks real responses and
``ranked`` says how many leading responses the record's ranking orders (2 for a pair). Every function returns
per-record losses ``[B]``; the recipe sums them and the loop divides by the number of records in the step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignkit.losses.listwise import suffix_logsumexp


def implied_pairs(valid: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
    """``pairs[b, i, j]``: response i is preferred to response j — i is ranked and j comes after it.

    A full ranking of K implies K(K-1)/2 pairs; a top-m ranking says each of its m responses beats every later
    one, the unranked responses included; a pair implies one pair."""
    k = valid.shape[1]
    later = torch.triu(torch.ones(k, k, dtype=torch.bool, device=valid.device), diagonal=1)[None]
    positions = torch.arange(k, device=valid.device)
    is_ranked = positions[None] < ranked[:, None]
    return later & is_ranked[:, :, None] & valid[:, None, :] & valid[:, :, None]


def reward_centering(rewards: torch.Tensor, pairs: torch.Tensor, coef: float) -> torch.Tensor:
    """Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward
    Hacking" (arXiv:2312.09244), auxiliary loss: ``coef * (r_i + r_j)^2``, averaged over a record's implied
    pairs (for a pair: ``coef * (r_c + r_r)^2``, TRL's ``center_rewards_coefficient``). BT is invariant to a
    shift of all rewards; this pins their mean near zero so rewards of different prompts are comparable."""
    if coef == 0:
        return rewards.new_zeros(rewards.shape[0])
    sums = (rewards[:, :, None] + rewards[:, None, :]) ** 2
    return coef * (sums * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)


def bradley_terry_loss(rewards: torch.Tensor, valid: torch.Tensor, ranked: torch.Tensor,
                       margin: torch.Tensor | None = None, center_coef: float = 0.0) -> torch.Tensor:
    """Bradley & Terry 1952; as a reward-model loss Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155), eq. 1:

        L = -log sigmoid(r_c - r_r - m) [+ coef * (r_c + r_r)^2]

    per implied pair (``implied_pairs``), averaged over a record's pairs. ``margin`` ``[B]`` (Llama 2, Touvron
    et al. 2023, arXiv:2307.09288, sec. 3.2.2: a larger required gap for clearer preferences) applies to pairs
    (K = 2); ``center_coef`` adds :func:`reward_centering`. For a pair this is TRL's ``RewardTrainer`` loss."""
    pairs = implied_pairs(valid, ranked)
    diff = rewards[:, :, None] - rewards[:, None, :]
    if margin is not None:
        diff = diff - margin[:, None, None]
    terms = torch.where(pairs, -F.logsigmoid(diff), torch.zeros_like(diff))
    losses = terms.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)
    return losses + reward_centering(rewards, pairs, center_coef)


def plackett_luce_loss(rewards: torch.Tensor, valid: torch.Tensor, ranked: torch.Tensor,
                       center_coef: float = 0.0) -> torch.Tensor:
    """Plackett 1975 / Luce 1959 ranking likelihood (as a reward-model loss: Zhu et al. 2023, "Principled
    Reinforcement Learning with Human Feedback from Pairwise or K-wise Comparisons", arXiv:2301.11270):

        L = -sum_{j < m} [ r_j - log sum_{l >= j} exp(r_l) ]

    for responses ordered best first, m = ranked positions (a top-m ranking: each ranked response is chosen
    among all that follow it, unranked ones included); the last response of a full ranking adds nothing. With
    K = 2 it is Bradley-Terry. ``center_coef`` adds :func:`reward_centering` over the implied pairs."""
    k = rewards.shape[1]
    positions = torch.arange(k, device=rewards.device)[None]
    chosen_at = (positions < ranked[:, None]) & (positions < valid.sum(-1, keepdim=True) - 1)
    terms = (suffix_logsumexp(rewards, valid) - rewards) * chosen_at
    return terms.sum(-1) + reward_centering(rewards, implied_pairs(valid, ranked), center_coef)


def regression_loss(rewards: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Regression on scalar scores (e.g. Wang et al. 2024, HelpSteer2, arXiv:2406.08673; Nvidia's SteerLM RMs):
    ``L = sum_k (r_k - s_k)^2`` over a record's scored responses (the recipe divides by the number of responses,
    so the step loss is the MSE)."""
    return (((rewards - targets) ** 2) * valid).sum(-1)
