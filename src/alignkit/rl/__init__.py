"""Pure-tensor building blocks of policy-gradient RLHF (PPO, RLOO, GRPO, REINFORCE, MaxMin-RLHF, reward-robust RLHF).

No models and no training loop here: functions of per-token log-probs, values, rewards and masks that a rollout
recipe calls. Conventions shared by every module:

* token tensors are ``[B, T]`` with a ``mask`` ``[B, T]`` (bool or 0/1) marking the response tokens; values at
  masked-out positions never change a result or a gradient (even NaN);
* groups of samples of one prompt are laid out prompt-major: ``B = P * G``, rows ``p*G .. p*G + G - 1`` belong to
  prompt p, and functions take ``group_size = G``;
* batch-wide statistics take an optional ``reduce_sum(tensor) -> tensor`` that sums over processes, so several
  processes compute what one process would on the concatenated batch.

Modules: :mod:`~alignkit.rl.kl` (KL estimators k1/k2/k3, fixed and adaptive KL controllers),
:mod:`~alignkit.rl.rewards` (per-token PPO rewards, missing-EOS penalty, reward-robust and MaxMin combinations),
:mod:`~alignkit.rl.normalize` (masked statistics, whitening, running moments, PPO-max reward normalisation),
:mod:`~alignkit.rl.advantages` (registry of :class:`AdvantageSpec`: gae, rloo, grpo, reinforce_baseline),
:mod:`~alignkit.rl.policy_loss` (clipped policy loss at token / sequence level, clipped value loss, aggregation,
entropy, explained variance).
"""

from alignkit.rl.advantages import (
    ADVANTAGE_SPECS,
    ADVANTAGES,
    AdvantageSpec,
    Advantages,
    advantage_rows,
    broadcast_to_tokens,
    gae,
    get_advantage,
    get_advantage_spec,
    grpo,
    register_advantage,
    reinforce_baseline,
    rloo,
    sequence_returns,
)
from alignkit.rl.kl import AdaptiveKL, FixedKL, sequence_kl, token_kl
from alignkit.rl.normalize import (
    RewardNormalizer,
    RunningMoments,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from alignkit.rl.policy_loss import (
    PolicyLossOutput,
    aggregate,
    clipped_value_loss,
    explained_variance,
    masked_entropy,
    ppo_policy_loss,
    token_entropy,
)
from alignkit.rl.rewards import (
    TokenRewards,
    apply_missing_eos_penalty,
    contains_eos,
    last_token_index,
    maxmin_reward,
    ppo_token_rewards,
    reward_robust,
    worst_group,
)

__all__ = [
    "ADVANTAGES", "ADVANTAGE_SPECS", "AdaptiveKL", "AdvantageSpec", "Advantages", "advantage_rows", "FixedKL", "PolicyLossOutput", "RewardNormalizer", "RunningMoments",
    "TokenRewards", "aggregate", "apply_missing_eos_penalty", "broadcast_to_tokens", "clipped_value_loss",
    "contains_eos", "explained_variance", "gae", "get_advantage", "get_advantage_spec", "grpo", "last_token_index", "masked_entropy",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten", "maxmin_reward", "ppo_policy_loss",
    "ppo_token_rewards", "register_advantage", "reinforce_baseline", "reward_robust", "rloo", "sequence_kl",
    "sequence_returns", "token_entropy", "token_kl", "worst_group",
]
