"""Reward models and reward sources: scalar-head models on any causal LM backbone, their training objectives
(Bradley-Terry with margin and centring, Plackett-Luce, regression), ensembles with uncertainty, annotator-aware
heads, an EM mixture over annotators (MaxMin-RLHF step 1) and calibration. Training runs through the one loop
(``recipe: reward``).

Everything that scores or compares responses is named by one spec grammar with one open registry of kinds
(:mod:`alignkit.rewards.spec`) and built by :func:`get_reward_source`, :func:`get_preference_source` and
:func:`get_judge` (:mod:`alignkit.rewards.sources`). Inside this folder: ``base`` (protocols) and ``spec``
(grammar, registry) at the bottom, the kinds (``gold``, ``rm``, ``llm_judge``, ``verifiers``) and their helpers
above, ``sources`` (the ``get_*``) at the top."""

from alignkit.rewards.sources import (
    PreferenceSource,
    Rewards,
    RewardSource,
    RewardSpec,
    available_sources_help,
    get_judge,
    get_preference_source,
    get_reward_source,
    parse_spec,
    register_reward_kind,
    reward_kinds,
)
from alignkit.stats.calibration import Reliability, reliability
from alignkit.rewards.ensemble import EnsembleScores, score_ensemble
from alignkit.rewards.mixture import (
    BTMixture,
    cluster_purity,
    embedding_features,
    fit_bt_mixture,
    token_count_features,
)
from alignkit.rewards.model import HeadLayout, head_layout, head_rewards, load_reward_model, score, score_heads
from alignkit.rewards.objectives import bradley_terry_loss, plackett_luce_loss, regression_loss, reward_centering

__all__ = ["BTMixture", "EnsembleScores", "HeadLayout", "PreferenceSource", "Reliability", "RewardSource",
           "RewardSpec", "Rewards", "available_sources_help", "bradley_terry_loss", "cluster_purity",
           "embedding_features", "fit_bt_mixture", "get_judge", "get_preference_source", "get_reward_source",
           "head_layout", "head_rewards", "load_reward_model", "parse_spec", "plackett_luce_loss",
           "register_reward_kind", "regression_loss", "reliability", "reward_centering", "reward_kinds", "score",
           "score_ensemble", "score_heads", "token_count_features"]
