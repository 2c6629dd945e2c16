"""Listwise losses over K ranked responses (best first): Plackett-Luce DPO, PRO, SPPO.

Inputs are ``[B, K]`` tensors padded to the largest K with a ``valid`` mask; pairs are rankings with K = 2.
"""

from __future__ import annotations

import torch

from alignkit.losses.registry import LossOutput, RankedInputs, register_loss

NEG = -1e30  # stands in for -inf in masked log-sum-exps without producing NaN gradients


def suffix_logsumexp(z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """out[b, k] = log sum_{j >= k, valid} exp(z[b, j])."""
    z = torch.where(valid, z, torch.full_like(z, NEG))
    return torch.logcumsumexp(z.flip(-1), dim=-1).flip(-1)


def ranked_metrics(x: RankedInputs, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    rewards = rewards.detach()
    last = x.valid.sum(-1) - 1
    best, worst = rewards[:, 0], rewards.gather(1, last[:, None]).squeeze(1)
    return {"rewards/best": best, "rewards/worst": worst, "rewards/margin": best - worst,
            "rewards/accuracy": (best > worst).to(best.dtype)}


@register_loss("plackett_luce", data_kind="ranked", reduction="sum", needs_reference=True,
               paper="Rafailov et al. 2023, Direct Preference Optimization (arXiv:2305.18290), Appendix A.3: "
                     "the Plackett-Luce generalisation", aliases=("pl_dpo",))
def plackett_luce(x: RankedInputs, beta: float = 0.1) -> LossOutput:
    """Plackett-Luce DPO: L = sum_k -log( exp(beta*rho(y_k)) / sum_{j>=k} exp(beta*rho(y_j)) ).

    rho = l - l_ref (summed log-probs), responses y_1 > ... > y_K. With K = 2 this is DPO.
    """
    z = beta * (x.policy - x.reference)
    terms = (suffix_logsumexp(z, x.valid) - z) * x.valid
    return LossOutput(terms.sum(-1), ranked_metrics(x, z))


@register_loss("pro", data_kind="ranked", reduction="mean", needs_reference=False,
               paper="Song et al. 2024, Preference Ranking Optimization for Human Alignment (PRO, arXiv:2306.17492)")
def pro(x: RankedInputs, sft_weight: float = 0.05) -> LossOutput:
    """PRO: L = sum_{k<K} -log( exp(s_k*T_kk) / (exp(s_k*T_kk) + sum_{j>k} exp(s_j*T_kj)) ) - w*(K-1)^2*l(y_1).

    s = per-token-mean log-prob; with rewards r (the records' ``score``), T_kj = r_k - r_j and
    T_kk = max_{j>k} T_kj (reward gaps act as inverse temperatures). The SFT term is the summed log-likelihood
    of the best response with weight w * (K-1)^2 (w = 0.05), as in the authors' code. Without rewards the
    authors' temperatures are all zero (no ranking gradient); alignkit uses T = 1 there, i.e. plain
    Plackett-Luce over s (an extension, documented).
    """
    s, valid = x.policy, x.valid
    b, k = s.shape
    if x.scores is not None:
        r = x.scores
        gaps = (r[:, :, None] - r[:, None, :])                       # T[b, k, j] = r_k - r_j
        later = torch.triu(torch.ones(k, k, dtype=torch.bool, device=s.device), diagonal=1)[None] \
            & valid[:, None, :] & valid[:, :, None]
        own = torch.where(later, gaps, torch.full_like(gaps, NEG)).amax(-1).clamp(min=0)   # T_kk
        logits = torch.where(later, s[:, None, :] * gaps, torch.full_like(gaps, NEG))
        logits = torch.where(torch.eye(k, dtype=torch.bool, device=s.device)[None], (s * own)[:, :, None], logits)
        denominators = torch.logsumexp(logits, dim=-1)
        numerators = s * own
        has_later = later.any(-1)
    else:
        denominators = suffix_logsumexp(s, valid)
        numerators = s
        has_later = valid & (torch.arange(k, device=s.device)[None] < (valid.sum(-1, keepdim=True) - 1))
    terms = (denominators - numerators) * has_later
    sizes = valid.sum(-1).to(s.dtype)
    losses = terms.sum(-1) + sft_weight * (sizes - 1) ** 2 * x.best_nll_sum
    return LossOutput(losses, ranked_metrics(x, s))


@register_loss("sppo", data_kind="ranked", reduction="sum", needs_reference=True,
               paper="Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment "
                     "(SPPO, arXiv:2405.00675)")
def sppo(x: RankedInputs, beta: float = 0.001, hard: bool = False) -> LossOutput:
    """SPPO: L = mean_i (rho(y_i) - eta * (P_i - 1/2))^2, eta = 1/beta.

    rho = l - l_ref with the reference being the previous iterate. P_i is response i's estimated win
    probability against the policy's samples: with scores s (soft), P_i = mean_j sigma(s_i - s_j) over all K
    samples, itself included (its term is 1/2), as in the authors' code; hard (or without scores) P falls
    linearly with the rank, from 1 for the best to 0 for the worst (pairs: P_w = 1, P_l = 0). The mean over
    responses is the paper's 1/2 for pairs; TRL's ``sppo_hard`` omits it (twice this loss).
    """
    valid = x.valid
    n = valid.sum(-1, keepdim=True).to(x.policy.dtype)
    if x.scores is not None and not hard:
        s = x.scores
        pair = torch.sigmoid(s[:, :, None] - s[:, None, :])
        p = (pair * valid[:, None, :]).sum(-1) / n
    else:
        rank = torch.arange(valid.shape[1], device=valid.device, dtype=x.policy.dtype)[None]
        p = 1 - rank / (n - 1).clamp(min=1)
    rho = x.policy - x.reference
    terms = ((rho - (p - 0.5) / beta) ** 2) * valid
    return LossOutput(terms.sum(-1) / n.squeeze(-1), {**ranked_metrics(x, rho), "win_prob/best": p[:, 0].detach()})
