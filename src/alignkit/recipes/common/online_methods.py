"""The online methods: each is a sampler, a labelling rule and a loss, plugged into one recipe.

Every optimizer step of ``recipe: online`` samples responses for the step's prompts, labels them with a reward
source (:mod:`alignkit.rewards.sources`), turns them into records and applies a loss. A method is the choice of
those three parts, listed here; :mod:`alignkit.recipes.online` runs them all with the same code.

Samplers: ``policy`` (K samples of the current policy), ``policy+reference`` (one of each), ``policy+mixture``
(one policy sample and one from the geometric mixture of policy and reference), ``mixture`` (K mixture samples),
``reference`` (K samples of the reference, e.g. the SFT policy).

Labelling rules: ``pairs`` (best vs worst by reward; a tie gives no pair), ``ranked`` (all K ranked by reward,
rewards kept as scores), ``rso_pairs`` (statistical rejection sampling, then consecutive accepted samples
paired), ``best`` (the best response of each prompt, or the top share of the step), ``top_k`` (the k best of each
prompt), ``win_prob`` (the policy sample with its probability of beating the second sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from alignkit.utils.names import did_you_mean

Sampler = Literal["policy", "policy+reference", "policy+mixture", "mixture", "reference"]
Labels = Literal["pairs", "ranked", "rso_pairs", "best", "top_k", "win_prob"]
ObjectiveKind = Literal["preference", "sft", "superhf", "nash_md"]


@dataclass(frozen=True)
class OnlineMethod:
    name: str
    sampler: Sampler
    labels: Labels
    objective: ObjectiveKind
    loss: str | None            # registered preference loss (objective "preference"); users may swap it
    num_samples: int            # default K per prompt
    paper: str
    formula: str
    reference_update: bool = False   # pi_ref <- pi at every round
    extrapolate: bool = False        # APO's momentum step between rounds


ONLINE_METHODS: dict[str, OnlineMethod] = {}


def register_online_method(method: OnlineMethod) -> OnlineMethod:
    if method.name in ONLINE_METHODS:
        raise ValueError(f"online method '{method.name}' is registered twice")
    ONLINE_METHODS[method.name] = method
    return method


def get_online_method(name: str) -> OnlineMethod:
    if name not in ONLINE_METHODS:
        raise KeyError(f"unknown online method '{name}'{did_you_mean(name, ONLINE_METHODS)}; available: {', '.join(sorted(ONLINE_METHODS))}")
    return ONLINE_METHODS[name]


OAIF = "Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback (OAIF, arXiv:2402.04792)"
ONLINE_IPO = ("Calandriello et al. 2024, Human Alignment of Large Language Models through Online Preference "
              "Optimisation (arXiv:2403.08635)")

for _method in (
    OnlineMethod("online_dpo", "policy", "pairs", "preference", "dpo", 2, OAIF,
                 "two samples of pi, labelled by the reward source, L = -ls(beta * D) (any pairwise loss)"),
    OnlineMethod("online_ipo", "policy", "pairs", "preference", "ipo", 2, ONLINE_IPO,
                 "two samples of pi, L = (D - 1/(2 beta))^2"),
    OnlineMethod("iterative_dpo", "policy", "pairs", "preference", "dpo", 2,
                 "Xiong et al. 2024, Iterative Preference Learning from Human Feedback: Bridging Theory and Practice "
                 "for RLHF under KL-Constraint (arXiv:2312.11456)",
                 "online DPO whose reference moves to the policy at every round", reference_update=True),
    OnlineMethod("apo", "policy", "pairs", "preference", "dpo", 2,
                 "He et al. 2024, Accelerated Preference Optimization for Large Language Model Alignment "
                 "(arXiv:2410.06293)",
                 "iterative DPO; between rounds theta <- theta_hat + alpha * (theta_hat - theta_hat_prev)",
                 reference_update=True, extrapolate=True),
    OnlineMethod("nash_md", "policy+mixture", "win_prob", "nash_md", None, 2,
                 "Munos et al. 2023, Nash Learning from Human Feedback (Nash-MD, arXiv:2312.00886)",
                 "y ~ pi, y' ~ mixture (pi^(1-c) pi_ref^c); L = -(P(y > y') - 1/2 - tau * rho(y)) * l(y)"),
    OnlineMethod("ipo_md", "mixture", "pairs", "preference", "ipo", 2, ONLINE_IPO,
                 "IPO on two samples of the geometric mixture of pi and pi_ref"),
    OnlineMethod("xpo", "policy+reference", "pairs", "preference", "xpo", 2,
                 "Xie et al. 2024, Exploratory Preference Optimization (XPO, arXiv:2405.21046)",
                 "pair (y ~ pi, y_ref ~ pi_ref); L = -ls(beta * D) + alpha * l(y_ref)"),
    OnlineMethod("selm", "policy+reference", "pairs", "preference", "selm", 2,
                 "Zhang et al. 2024, Self-Exploring Language Models (SELM, arXiv:2405.19332)",
                 "pair (y ~ pi, y_ref ~ pi_ref); L = -ls(beta * D) + alpha * beta * rho(y_ref); pi_ref <- pi each round",
                 reference_update=True),
    OnlineMethod("sppo", "policy", "ranked", "preference", "sppo", 4,
                 "Wu et al. 2024, Self-Play Preference Optimization for Language Model Alignment (SPPO, "
                 "arXiv:2405.00675)",
                 "K samples, P_i = mean_j sigma(s_i - s_j); L = mean_i (rho(y_i) - (P_i - 1/2)/beta)^2; "
                 "pi_ref <- pi each round", reference_update=True),
    OnlineMethod("rso", "reference", "rso_pairs", "preference", "hinge", 8,
                 "Liu et al. 2024, Statistical Rejection Sampling Improves Preference Optimization (RSO, "
                 "arXiv:2309.06657)",
                 "K samples of pi_sft, accepted with prob exp((r - r_max)/beta), paired; hinge or sigmoid loss"),
    OnlineMethod("raft", "policy", "best", "sft", None, 4,
                 "Dong et al. 2023, RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment "
                 "(arXiv:2304.06767)",
                 "K samples, keep the best (per prompt or top share), L = NLL(kept)"),
    OnlineMethod("superhf", "policy", "top_k", "superhf", None, 4,
                 "Mukobi et al. 2023, SuperHF: Supervised Iterative Learning from Human Feedback (arXiv:2310.16763)",
                 "K samples, keep the top k, L = NLL(kept) + kl_coef * KL(pi_prior || pi) per completion token"),
):
    register_online_method(_method)
