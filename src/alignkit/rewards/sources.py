"""Reward sources, preference sources and judges by spec: the top of rewards/.

Every spec (``sandbox-gold``, ``rm:PATH#min``, ``llm:PATH``, ``verify:...``, ``pairwise:llm:PATH``,
``{spec: weight}``; the grammar and the registry of kinds: :mod:`alignkit.rewards.spec`) is parsed once and
built by its registered kind, for one of three uses:

* :func:`get_reward_source`: a :class:`~alignkit.rewards.base.RewardSource` (pointwise rewards for training);
  a mapping is the weighted sum ``sum_m w_m r_m`` (:class:`~alignkit.rewards.weighted.WeightedSource`);
* :func:`get_preference_source`: ``pairwise:<spec>`` is a pairwise judge run in both presentation orders
  (:class:`~alignkit.rewards.preferences.PairwiseJudgePreference`); any pointwise spec becomes a Bradley-Terry
  preference ``P(y1 > y2) = sigmoid((r(y1) - r(y2)) / scale)``
  (:class:`~alignkit.rewards.preferences.BradleyTerryPreference`);
* :func:`get_judge`: the kind's judge for evaluation (a judge is a reward source used to evaluate or compare;
  a kind without its own judge is scored through :class:`~alignkit.rewards.base.SourceJudge`).

:func:`available_sources_help` lists the forms; :func:`~alignkit.rewards.spec.reward_kinds` the registered kinds.
"""

from __future__ import annotations

from typing import Any

from alignkit.rewards.base import (
    Judge,
    JudgeSource,
    PairwiseJudge,
    PreferenceSource,
    Rewards,
    RewardSource,
    SourceJudge,
    check_lengths,
    is_pairwise,
)
from alignkit.rewards.gold import SandboxGoldJudge
from alignkit.rewards.llm_judge import LLMJudge
from alignkit.rewards.preferences import BradleyTerryPreference, PairwiseJudgePreference, check_scale, sigmoid
from alignkit.rewards.rm import RM_REDUCTIONS, RewardModelJudge, RewardModelSource
from alignkit.rewards.spec import (
    PAIRWISE_PREFIX,
    RewardSpec,
    UnknownSpec,
    available_sources_help,
    get_kind,
    is_pairwise_spec,
    judges_help,
    parse_spec,
    register_reward_kind,
    reward_kinds,
)
from alignkit.rewards.verifiers import VerifierSource
from alignkit.rewards.weighted import WeightedSource

__all__ = ["BradleyTerryPreference", "Judge", "JudgeSource", "LLMJudge", "PAIRWISE_PREFIX", "PairwiseJudge",
           "PairwiseJudgePreference", "PreferenceSource", "RM_REDUCTIONS", "RewardModelJudge", "RewardModelSource",
           "RewardSource", "RewardSpec", "Rewards", "SandboxGoldJudge", "SourceJudge", "VerifierSource",
           "WeightedSource", "available_sources_help", "build_judge", "build_source", "check_lengths",
           "check_scale", "get_judge", "get_preference_source", "get_reward_source", "is_pairwise",
           "judges_help", "parse_spec", "register_reward_kind", "reward_kinds", "sigmoid"]


def _not_rewards(text: str) -> ValueError:
    return ValueError(f"{text!r} compares two responses and gives preferences, not rewards: use "
                      "get_preference_source for it, or a pointwise spec here")


def build_source(spec: RewardSpec, device: Any = None, cache: dict | None = None) -> RewardSource:
    """The reward source of a parsed spec; ``cache`` is shared by a mapping's members (one model load each)."""
    cache = {} if cache is None else cache
    if spec.kind == "weighted":
        return WeightedSource([(key, weight, build_source(member, device, cache))
                               for key, weight, member in spec.members])
    if spec.kind == "pairwise":
        raise _not_rewards(spec.text)
    return get_kind(spec.kind).source(spec, device, cache)


def build_judge(spec: RewardSpec, mode: str = "pointwise", **llm_options: Any) -> Judge | PairwiseJudge:
    """The judge of a parsed spec: the kind's own judge (``mode`` and ``llm_options`` go to it), else its reward
    source scored as a judge; ``pairwise:<spec>`` is ``<spec>``'s judge in pairwise mode."""
    if spec.kind == "pairwise":
        return build_judge(spec.inner, "pairwise", **llm_options)
    if spec.kind == "weighted":
        return SourceJudge(build_source(spec))
    kind = get_kind(spec.kind)
    if kind.judge is None:
        return SourceJudge(kind.source(spec, None, {}), name=spec.text)
    return kind.judge(spec, mode, **llm_options)


def get_reward_source(spec: str | dict[str, float] | RewardSource, device: Any = None) -> RewardSource:
    """A reward source by spec (see :mod:`alignkit.rewards.spec`): a string names one source, a dict
    ``{spec: weight}`` their weighted sum ``sum_m w_m r_m``. ``device`` places reward models. An object that
    already has ``rewards`` is returned as is. Unknown specs raise ``KeyError`` with a suggestion; bad options
    ``ValueError``."""
    if callable(getattr(spec, "rewards", None)):
        return spec  # type: ignore[return-value]
    if is_pairwise_spec(spec):
        raise _not_rewards(spec.strip())  # type: ignore[union-attr]
    return build_source(parse_spec(spec), device, {})


def get_preference_source(spec: str | dict[str, float] | RewardSource | PreferenceSource, scale: float = 1.0,
                          device: Any = None) -> PreferenceSource:
    """A preference source by spec: ``pairwise:llm:PATH`` is a pairwise LLM judge whose verdicts in both orders
    are averaged (:class:`PairwiseJudgePreference`; ``scale`` does not apply); any pointwise spec (string or
    weighted dict) is turned into Bradley-Terry ``sigmoid((r1 - r2) / scale)`` (:class:`BradleyTerryPreference`).
    A ready :class:`RewardSource` is wrapped the same way (pass the one you already built to load a reward
    model once); a ready :class:`PreferenceSource` is returned as is."""
    if callable(getattr(spec, "win_probability", None)):
        return spec  # type: ignore[return-value]
    if is_pairwise_spec(spec):
        parsed = parse_spec(spec)             # ValueError unless the compared kind compares
        return PairwiseJudgePreference(build_judge(parsed.inner, mode="pairwise"), name=parsed.text)
    check_scale(scale)   # before any model is loaded
    return BradleyTerryPreference(get_reward_source(spec, device=device), scale=scale)


def get_judge(name: str, mode: str = "pointwise", **llm_options: Any) -> Judge | PairwiseJudge:
    """A judge by spec (see :mod:`alignkit.rewards.spec`). ``mode`` (pointwise | pairwise) and ``llm_options``
    (template, max_new_tokens, ...) apply to ``llm:PATH`` judges; the others are pointwise."""
    try:
        spec = parse_spec(name)
    except UnknownSpec:
        raise KeyError(f"unknown judge '{name}'; available: {judges_help()}") from None
    return build_judge(spec, mode, **llm_options)
