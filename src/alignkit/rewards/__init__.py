"""Reward models: scalar-head models on any causal LM backbone, their training objectives (Bradley-Terry with
margin and centring, Plackett-Luce, regression), ensembles with uncertainty, annotator-aware heads, an EM mixture
over annotators (MaxMin-RLHF step 1) and calibration. Training runs through the one loop (``recipe: reward``)."""

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
from alignkit.rewards.sources import (
    PreferenceSource,
    Rewards,
    RewardSource,
    available_sources_help,
    get_preference_source,
    get_reward_source,
)

__all__ = ["BTMixture", "EnsembleScores", "HeadLayout", "PreferenceSource", "Reliability", "RewardSource", "Rewards",
           "available_sources_help", "bradley_terry_loss", "cluster_purity", "embedding_features", "fit_bt_mixture",
           "get_preference_source", "get_reward_source", "head_layout", "head_rewards", "load_reward_model",
           "plackett_luce_loss", "regression_loss", "reliability", "reward_centering", "score", "score_ensemble",
           "score_heads", "token_count_features"]
