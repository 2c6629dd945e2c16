"""PPO-style policy and value losses, loss aggregation, entropy and explained variance.

**Clipped policy loss** (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347):
``L = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)`` per token, with the importance ratio ``rho`` taken at
one of three levels (``ratio_level``):

* ``token``: ``rho_t = exp(logp_t - old_logp_t)`` (PPO; TRL GRPO ``importance_sampling_level="token"``).
* ``sequence``: the length-normalised (geometric-mean) sequence ratio ``rho = exp(mean_t (logp_t - old_logp_t))``
  over the response tokens, shared by every token of the sequence (GSPO: Zheng et al. 2025, "Group Sequence Policy
  Optimization", arXiv:2507.18071; TRL GRPO ``importance_sampling_level="sequence"``). GSPO clips it with much
  smaller ranges than token PPO (the paper uses 3e-4 / 4e-4).
* ``sequence_product``: the full sequence likelihood ratio ``exp(sum_t (logp_t - old_logp_t))`` (what TRL 1.16's
  RLOOTrainer clips); its variance grows with length.

``clip_eps_high`` (default: ``clip_eps``) gives DAPO-style asymmetric clipping. ``advantages`` may be ``[B]``
(broadcast over the response) or ``[B, T]``.

**Aggregation** of a per-token loss ``[B, T]`` (:func:`aggregate`):

* ``token_mean``: sum over all response tokens of the batch / their number (TRL GRPO ``bnpo``; DAPO). Pass
  ``normalizer`` (e.g. the global token count over processes and accumulation steps) to divide by that instead.
* ``sequence_mean``: each sequence's token mean, then the mean over sequences (TRL GRPO ``grpo``; RLOO).
* ``sequence_sum``: each sequence's token sum, then the mean over sequences (verl ``seq-mean-token-sum``; dividing it by
  a fixed maximum length gives Dr. GRPO's normaliser).

Metrics: ``clip_fraction`` = share of response tokens (``sequence*`` levels: of sequences, each weighted equally) where
the clipped branch is the one taken (``rho > 1 + eps_high`` with ``A > 0`` or ``rho < 1 - eps_low`` with ``A < 0`` —
TRL's ``clip_ratio/region_mean``); ``approx_kl`` = token mean of the k3 estimate of KL(pi_old || pi),
``rho - 1 - log rho`` with the per-token ``rho`` (>= 0, unbiased under samples from pi_old).

Checked against TRL 1.16's ``GRPOTrainer._compute_loss`` (loss types ``grpo``/``bnpo``, token and sequence importance
sampling, ``epsilon``/``epsilon_high``, k3 KL term) and ``RLOOTrainer._compute_loss`` on identical inputs, values and
gradients (tests/rl/test_rl_math.py).

**Clipped value loss** (PPO2 / OpenAI baselines; TRL < 0.12 PPO): ``0.5 * max((V - R)^2, (clip(V, V_old - eps_v,
V_old + eps_v) - R)^2)``, aggregated like the policy loss; ``clip_eps=None`` is the plain squared error.

**Entropy**: ``H_t = logsumexp(z) - sum softmax(z) * z`` from logits ``[B, T, V]`` (equal to TRL's
``entropy_from_logits``); :func:`masked_entropy` is its mean over response tokens.

**Explained variance**: ``1 - Var[R - V] / Var[R]`` over response tokens (NaN when the returns are constant).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from alignkit.rl.normalize import as_mask, masked_mean, masked_sum, masked_var

Aggregation = Literal["token_mean", "sequence_mean", "sequence_sum"]
RatioLevel = Literal["token", "sequence", "sequence_product"]


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor                                           # scalar
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # scalars, detached


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: Aggregation = "token_mean",
              normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar over the response tokens (see the module docstring)."""
    m = as_mask(mask, loss)
    if mode == "token_mean":
        total = masked_sum(loss, m)
        return total / (normalizer if normalizer is not None else m.sum().clamp(min=1))
    if normalizer is not None:
        raise ValueError("aggregate: normalizer applies to token_mean only")
    if mode == "sequence_mean":
        return (masked_sum(loss, m, dim=-1) / m.sum(-1).clamp(min=1)).mean()
    if mode == "sequence_sum":
        return masked_sum(loss, m, dim=-1).mean()
    raise ValueError(f"aggregate: mode must be 'token_mean', 'sequence_mean' or 'sequence_sum', got '{mode}'")


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_eps: float = 0.2, clip_eps_high: float | None = None, ratio_level: RatioLevel = "token",
                    aggregation: Aggregation = "token_mean",
                    normalizer: float | torch.Tensor | None = None) -> PolicyLossOutput:
    """Clipped surrogate loss ``-min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A)``, aggregated over the response.

    ``logp`` (carries gradients) and ``old_logp`` are per-token log-probs of the sampled tokens ``[B, T]``.
    """
    m = as_mask(mask, logp)
    eps_low, eps_high = clip_eps, clip_eps if clip_eps_high is None else clip_eps_high
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    log_ratio = torch.where(m, logp - old_logp, zero)
    if ratio_level == "token":
        ratio = torch.exp(log_ratio)
    elif ratio_level == "sequence":
        ratio = torch.exp(log_ratio.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1))
    elif ratio_level == "sequence_product":
        ratio = torch.exp(log_ratio.sum(-1, keepdim=True))
    else:
        raise ValueError(f"ppo_policy_loss: ratio_level must be 'token', 'sequence' or 'sequence_product', "
                         f"got '{ratio_level}'")
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    adv = torch.where(m, adv.to(logp.dtype), zero)  # padding never reaches the loss or its gradient, even if NaN
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv).expand_as(logp)
    loss = aggregate(per_token, m, aggregation, normalizer)

    with torch.no_grad():
        is_clipped = (((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - eps_low) & (adv < 0))).expand_as(logp)
        frac_mode: Aggregation = "token_mean" if ratio_level == "token" else "sequence_mean"
        metrics = {
            "clip_fraction": aggregate(is_clipped.to(logp.dtype), m, frac_mode),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, m),
            "ratio_mean": masked_mean(ratio.detach().expand_as(logp), m),
        }
    return PolicyLossOutput(loss, metrics)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_eps: float | None = 0.2, aggregation: Aggregation = "token_mean",
                       normalizer: float | torch.Tensor | None = None) -> PolicyLossOutput:
    """PPO2 value loss ``0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2)`` over response tokens."""
    m = as_mask(mask, values)
    dtype = values.dtype
    zero = torch.zeros((), dtype=dtype, device=values.device)
    # padding never reaches the loss or its gradient, even if it holds NaN
    values, old_values, returns = [torch.where(m, x.to(dtype), zero) for x in (values, old_values, returns)]
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        per_token = unclipped
        frac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        v_clipped = torch.max(torch.min(values, old_values + clip_eps), old_values - clip_eps)
        clipped = (v_clipped - returns) ** 2
        per_token = torch.max(unclipped, clipped)
        frac = masked_mean((clipped > unclipped).to(values.dtype), mask).detach()
    loss = 0.5 * aggregate(per_token, mask, aggregation, normalizer)
    return PolicyLossOutput(loss, {"value_clip_fraction": frac})


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax over the last axis: ``[..., V] -> [...]`` (finite logits; half precision is
    computed in float32)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy over the response tokens: logits ``[B, T, V]``, mask ``[B, T]``."""
    return masked_mean(token_entropy(logits), mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over response tokens: 1 is a perfect critic, 0 no better than a constant."""
    var_r = masked_var(returns, mask, unbiased=False)
    var_res = masked_var(returns - values, mask, unbiased=False)
    if float(var_r) == 0:
        return torch.full((), float("nan"), dtype=values.dtype, device=values.device)
    return 1 - var_res / var_r
