"""KL between the policy and the reference from sampled-token log-probs, and KL-coefficient controllers.

Per-token estimators of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020, "Approximating KL Divergence",
http://joschu.net/blog/kl-approx.html). With ``logp = log pi(y_t)``, ``ref = log pi_ref(y_t)`` and
``log r = ref - logp``:

* ``k1 = logp - ref`` (``-log r``): unbiased, high variance, can be negative per token. TRL 1.16's RLOOTrainer
  sums it over the response for its sequence penalty; classic PPO-RLHF puts ``-kl_coef * k1`` in every token's reward.
* ``k2 = 0.5 * (logp - ref)^2``: biased, low variance, >= 0 (verl's ``mse``).
* ``k3 = exp(ref - logp) - (ref - logp) - 1`` (``r - 1 - log r``): unbiased, >= 0, low variance when pi is close to
  pi_ref. TRL 1.16's GRPOTrainer adds ``beta * k3`` to its per-token loss (``trl/trainer/grpo_trainer.py``,
  ``_compute_loss``); verl calls it ``low_var_kl``.

Controllers hold the coefficient ``value`` (beta) and ``update(current_kl, n_steps)`` after each batch:

* :class:`FixedKL`: constant.
* :class:`AdaptiveKL` (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593,
  section 2.2): ``e = clip(KL / target - 1, -0.2, 0.2)``, ``value *= 1 + e * n_steps / horizon`` where ``KL`` is the
  batch's mean sequence KL and ``n_steps`` the number of samples (episodes) in the batch. Confirmed against TRL < 0.12
  ``AdaptiveKLController`` (a one-off run of TRL 0.11.4's class gave identical values) and verl's
  ``core_algos.AdaptiveKLController`` (same rule); TRL 1.16 has no KL controller any more.
"""

from __future__ import annotations

from typing import Literal

import torch

from alignkit.rl.normalize import masked_mean, masked_sum

Estimator = Literal["k1", "k2", "k3"]
ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


def token_kl(logp: torch.Tensor, ref: torch.Tensor, estimator: Estimator = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate from sampled-token log-probs (same shape as the inputs, no masking)."""
    if estimator == "k1":
        return logp - ref
    if estimator == "k2":
        return 0.5 * (logp - ref) ** 2
    if estimator == "k3":
        d = ref - logp
        return torch.expm1(d) - d  # exp(d) - 1 - d, without cancellation for small d
    raise ValueError(f"unknown KL estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}")


def sequence_kl(logp: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, estimator: Estimator = "k1",
                reduction: Literal["sum", "mean"] = "sum") -> torch.Tensor:
    """Per-sequence KL estimate ``[B]``: the token estimates summed (default) or averaged over the response tokens.

    The sum estimates the sequence-level KL(pi(.|x) || pi_ref(.|x)) (what RLOO's ``R - beta * KL`` and the PPO
    reward's total penalty use); the mean is a per-token KL for logging.
    """
    kl = token_kl(logp, ref, estimator)
    if reduction == "sum":
        return masked_sum(kl, mask, dim=-1)
    if reduction == "mean":
        return masked_mean(kl, mask, dim=-1)
    raise ValueError(f"sequence_kl: reduction must be 'sum' or 'mean', got '{reduction}'")


class FixedKL:
    """A constant KL coefficient (``update`` does nothing)."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"FixedKL: coef must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKL:
    """Ziegler et al. 2019's proportional controller that steers the sequence KL towards ``target``.

    After each batch: ``e = clip(current_kl / target - 1, -0.2, 0.2)``; ``value *= 1 + e * n_steps / horizon``.
    Ziegler et al. used ``horizon = 10000`` (samples) and targets of a few nats.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKL needs init_coef >= 0, target > 0 and horizon > 0; got {init_coef}, "
                             f"{target}, {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), float(state["horizon"])
