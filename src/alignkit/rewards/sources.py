"""Reward sources: what labels the responses that online methods sample from the policy.

Two views of a labeller:

* :class:`RewardSource` (pointwise): ``rewards(prompts, responses, metadata) -> Rewards``, a scalar ``total``
  per response plus named ``components`` (objectives, constraints, heads, weighted members); NaN marks a
  response the source could not score (the caller counts it, never drops it silently).
* :class:`PreferenceSource` (pairwise): ``win_probability(prompts, first, second) -> P(first beats second)``.

Sources by spec (:func:`get_reward_source`; :func:`available_sources_help` lists them):

=====================================  =========================================================================
``sandbox-gold``                        the sandbox's exact gold reward; components: its objectives
``sandbox-gold-<group>``                the gold reward as an annotator group weights it
``rm:PATH``                             a trained reward model directory: the mean over its heads
``rm:PATH#min``                         the lowest head (worst-case ensemble / MaxMin over groups)
``rm:PATH#uwo=L``                       ``mean - L * std`` over heads (uncertainty-weighted, Coste et al. 2024)
``rm:PATH#group=NAME``                  one annotator group's heads (their mean; ``#group=NAME,min`` etc. combine)
``llm:PATH``                            a local causal LM rating each response 1-10 (pointwise LLM judge)
``verify:CONSTRAINTS``                  ACT constraint-satisfaction rate (:mod:`alignkit.rewards.verifiers`)
``{spec: weight, ...}``                 the weighted sum ``sum_m w_m r_m`` of several sources
=====================================  =========================================================================

Preferences (:func:`get_preference_source`): any pointwise spec above becomes a Bradley-Terry preference
``P(y1 > y2) = sigmoid((r(y1) - r(y2)) / scale)``; ``pairwise:llm:PATH`` asks a local LLM judge to compare the
two responses, in both presentation orders, and averages the two verdicts.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from alignkit.data.records import Text

PAIRWISE_PREFIX = "pairwise:"


@dataclass
class Rewards:
    """Per-response rewards of one source: ``total`` ``[N]`` float64 (NaN: the source could not score that
    response) and named ``components`` (objectives, constraints, heads, weighted members), each ``[N]``."""

    total: np.ndarray
    components: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.total = np.asarray(self.total, dtype=np.float64).reshape(-1)
        self.components = {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in self.components.items()}
        for key, values in self.components.items():
            if len(values) != len(self.total):
                raise ValueError(f"component {key!r} has {len(values)} values for {len(self.total)} responses")

    def __len__(self) -> int:
        return len(self.total)

    @property
    def valid(self) -> np.ndarray:
        """Responses the source could score (``total`` not NaN)."""
        return ~np.isnan(self.total)


@runtime_checkable
class RewardSource(Protocol):
    name: str

    def rewards(self, prompts: Sequence[Text], responses: Sequence[Text],
                metadata: Sequence[dict] | None = None) -> Rewards:
        """The reward of each (prompt, response); ``metadata[i]`` is the record's free metadata (optional)."""


@runtime_checkable
class PreferenceSource(Protocol):
    name: str

    def win_probability(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text],
                        metadata: Sequence[dict] | None = None) -> np.ndarray:
        """``P(first[i] beats second[i])`` ``[N]``; NaN where no valid comparison was made."""


def check_lengths(prompts: Sequence[Any], responses: Sequence[Any], metadata: Sequence[Any] | None = None) -> int:
    """The number of responses; ``ValueError`` when prompts, responses and metadata differ in length."""
    if len(prompts) != len(responses) or (metadata is not None and len(metadata) != len(responses)):
        extra = "" if metadata is None else f", {len(metadata)} metadata"
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses{extra}: the lengths must match")
    return len(responses)


# ------------------------------------------------------------------------------------------------ pointwise sources
class JudgeSource:
    """A pointwise judge (:class:`alignkit.rewards.judges.Judge`: sandbox gold, ``llm:PATH`` ratings) as a reward
    source: ``total`` is the judge's ``"total"`` (e.g. the sandbox's ``sum_k w_k o_k(x, y)`` over gold
    objectives, or Zheng et al. 2023's 1-10 LLM rating); its other objectives become components."""

    def __init__(self, judge: Any, name: str | None = None):
        if not callable(getattr(judge, "score", None)):
            raise ValueError(f"judge {getattr(judge, 'name', judge)!r} does not score responses pointwise")
        self.judge = judge
        self.name = name or judge.name

    def rewards(self, prompts: Sequence[Text], responses: Sequence[Text],
                metadata: Sequence[dict] | None = None) -> Rewards:
        """The judge's ``total`` per response (metadata is not used); components: its other objectives."""
        check_lengths(prompts, responses, metadata)
        scores = self.judge.score(list(prompts), list(responses))
        return Rewards(scores["total"], {k: v for k, v in scores.items() if k != "total"})


RM_REDUCTIONS = ("mean", "min", "uwo=L")


class RewardModelSource:
    """A trained reward model ``r_phi(x, y)`` (Ouyang et al. 2022's Bradley-Terry reward) with one or several
    heads (:class:`alignkit.rewards.model.HeadLayout`: ensemble members x annotator groups).

    The members ``r_1..r_M`` are all heads (or, with ``group``, that annotator group's heads), and ``total`` is
    (Coste et al. 2024, "Reward Model Ensembles Help Mitigate Overoptimization"):

    * ``mean``: ``mean_m r_m`` (default; for one head, the head);
    * ``min``: ``min_m r_m`` (worst-case optimisation; over annotator-group heads, MaxMin-RLHF's
      ``min_u r_u``, Chakraborty et al. 2024);
    * ``uwo``: ``mean_m r_m - penalty * std_m r_m`` (uncertainty-weighted optimisation, population std).

    Components, when there are several heads: every head (``head:<label>``, labels from ``config.id2label``,
    e.g. ``head:warm/0``), each group's ensemble mean (``group:<name>``) and the members' ``std``.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "rm", group: str | None = None,
                 reduce: str = "mean", penalty: float = 1.0, batch_size: int = 32):
        from alignkit.rewards.model import head_layout

        if reduce not in ("mean", "min", "uwo"):
            raise ValueError(f"reward-model reduction {reduce!r} is not one of {', '.join(RM_REDUCTIONS)}")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.layout = head_layout(model)
        self.group_index = self.layout.group_index(group)   # KeyError listing the model's groups
        self.group, self.reduce, self.penalty, self.batch_size = group, reduce, float(penalty), batch_size
        self.labels = [model.config.id2label.get(i, str(i)) for i in range(self.layout.num_labels)]

    @classmethod
    def from_spec(cls, spec: str, device: Any = None, loaded: dict | None = None) -> RewardModelSource:
        """``rm:PATH[#option,...]`` with options ``mean`` | ``min`` | ``uwo=L`` and ``group=NAME``; ``loaded``
        caches (path, device) -> RewardModelJudge so several specs on one model load it once."""
        from alignkit.rewards.judges import RewardModelJudge

        path, _, fragment = spec.removeprefix("rm:").partition("#")
        if not path:
            raise ValueError(f"{spec!r} names no reward-model directory (rm:PATH)")
        reduce, penalty, group = "mean", 1.0, None
        for option in filter(None, (o.strip() for o in fragment.split(","))):
            key, has_value, value = option.partition("=")
            if key in ("mean", "min") and not has_value:
                reduce = key
            elif key == "uwo" and has_value:
                reduce, penalty = "uwo", _number(value, f"{spec!r}: uwo")
            elif key == "group" and value:
                group = value
            else:
                raise ValueError(f"{spec!r}: unknown reward-model option {option!r}; options: "
                                 f"{', '.join(RM_REDUCTIONS)}, group=NAME (comma-separated)")
        cache = {} if loaded is None else loaded
        key = (path, str(device))
        if key not in cache:
            cache[key] = RewardModelJudge(path, device=device)
        judge = cache[key]
        return cls(judge.model, judge.tokenizer, name=spec, group=group, reduce=reduce, penalty=penalty,
                   batch_size=judge.batch_size)

    def rewards(self, prompts: Sequence[Text], responses: Sequence[Text],
                metadata: Sequence[dict] | None = None) -> Rewards:
        """Reduced head rewards (mean / min / mean - penalty * std, Coste et al. 2024) and per-head components."""
        from alignkit.rewards.ensemble import EnsembleScores
        from alignkit.rewards.model import score_heads, select_group

        n = check_lengths(prompts, responses, metadata)
        heads = score_heads(self.model, self.tokenizer, list(prompts), list(responses), self.batch_size)  # [N,G,E]
        if self.group_index is None:
            members = EnsembleScores(heads.reshape(n, -1))        # every head (mean = the mean over groups)
        else:
            members = EnsembleScores(select_group(heads, self.group_index))
        if self.reduce == "min":
            total = members.worst_case
        elif self.reduce == "uwo":
            total = members.conservative(self.penalty)
        else:
            total = members.mean
        components: dict[str, np.ndarray] = {}
        if self.layout.num_labels > 1:
            flat = heads.reshape(n, -1).numpy()
            components.update({f"head:{label}": flat[:, i] for i, label in enumerate(self.labels)})
            for g, group in enumerate(self.layout.groups):
                components[f"group:{group}"] = heads[:, g].mean(-1).numpy()
            components["std"] = members.std.numpy()
        return Rewards(total.numpy(), components)


class WeightedSource:
    """Several sources combined linearly: ``r(x, y) = sum_m w_m r_m(x, y)`` (the linear scalarisation of
    multi-objective RLHF, e.g. Rame et al. 2023 "Rewarded soups" / Zhou et al. 2023 MODPO's weighted rewards).
    A NaN from any member makes the total NaN. Components: each member's total under its spec, and the
    member's own components as ``<spec>/<component>``."""

    def __init__(self, members: Sequence[tuple[str, float, RewardSource]]):
        if not members:
            raise ValueError("a weighted reward source needs at least one member")
        self.members = [(spec, float(weight), source) for spec, weight, source in members]
        self.name = " + ".join(f"{w:g}*{spec}" for spec, w, _ in self.members)

    def rewards(self, prompts: Sequence[Text], responses: Sequence[Text],
                metadata: Sequence[dict] | None = None) -> Rewards:
        """``sum_m w_m r_m`` per response (NaN if any member is NaN); components: every member's rewards."""
        n = check_lengths(prompts, responses, metadata)
        total = np.zeros(n)
        components: dict[str, np.ndarray] = {}
        for spec, weight, source in self.members:
            result = source.rewards(prompts, responses, metadata)
            total = total + weight * result.total
            components[spec] = result.total
            components.update({f"{spec}/{k}": v for k, v in result.components.items()})
        return Rewards(total, components)


# ------------------------------------------------------------------------------------------------ preferences
def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` computed as ``(1 + tanh(x / 2)) / 2``: no overflow, exactly 0.5 at 0, NaN kept."""
    return 0.5 * (1.0 + np.tanh(np.asarray(x, dtype=np.float64) / 2.0))


class BradleyTerryPreference:
    """A pointwise source as a preference: Bradley & Terry 1952, ``P(y1 > y2 | x) = sigmoid((r(x, y1) -
    r(x, y2)) / scale)`` (the preference model behind RLHF reward models, Ouyang et al. 2022); 0.5 for equal
    rewards, NaN where either reward is NaN. ``scale`` is the temperature of the rewards' units."""

    def __init__(self, source: RewardSource, scale: float = 1.0):
        self.source, self.scale = source, _check_scale(scale)
        self.name = f"bt({source.name})" if scale == 1 else f"bt({source.name}, scale={scale:g})"

    def win_probability(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text],
                        metadata: Sequence[dict] | None = None) -> np.ndarray:
        """Bradley-Terry ``sigmoid((r1 - r2) / scale)`` from one batch of ``2 N`` rewards."""
        n = check_lengths(prompts, first, metadata)
        check_lengths(prompts, second)
        both = self.source.rewards([*prompts, *prompts], [*first, *second],
                                   None if metadata is None else [*metadata, *metadata]).total
        return sigmoid((both[:n] - both[n:]) / self.scale)


def _check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not (isinstance(scale, Real) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"the Bradley-Terry scale must be a positive number, not {scale!r}")
    return float(scale)


_VERDICT_FOR_FIRST_SHOWN = {"A": 1.0, "B": 0.0, "tie": 0.5}


class PairwiseJudgePreference:
    """A pairwise judge (:class:`alignkit.rewards.judges.PairwiseJudge`, e.g. ``llm:PATH`` in pairwise mode,
    Zheng et al. 2023) as a preference. Every pair is judged in both presentation orders
    (:func:`alignkit.rewards.pairwise.judge_both_orders`) and the two verdicts are averaged::

        P(y1 > y2) = (s(y1, y2) + 1 - s(y2, y1)) / 2,    s = 1 for "A", 0 for "B", 0.5 for "tie"

    so a judge that always picks the first slot gives 0.5 (its position bias cancels); an invalid verdict
    (None) in either order gives NaN. ``last`` keeps the latest :class:`~alignkit.rewards.pairwise.PairwiseResult`
    (position consistency and bias via ``last.stats()``)."""

    def __init__(self, judge: Any, name: str | None = None):
        if not callable(getattr(judge, "compare", None)):
            raise ValueError(f"judge {getattr(judge, 'name', judge)!r} does not compare two responses")
        self.judge = judge
        self.name = name or judge.name
        self.last: Any = None

    def win_probability(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text],
                        metadata: Sequence[dict] | None = None) -> np.ndarray:
        """Both-orders average ``(s(y1, y2) + 1 - s(y2, y1)) / 2`` of the judge's verdicts (Zheng et al. 2023's
        position swap; see the class docstring). ``metadata`` is not shown to the judge."""
        from alignkit.rewards.pairwise import judge_both_orders

        check_lengths(prompts, first, metadata)
        self.last = judge_both_orders(self.judge, list(prompts), list(first), list(second))
        shown_first = np.array([np.nan if v is None else _VERDICT_FOR_FIRST_SHOWN[v] for v in self.last.verdicts_xy])
        shown_second = np.array([np.nan if v is None else 1.0 - _VERDICT_FOR_FIRST_SHOWN[v]
                                 for v in self.last.verdicts_yx])
        return (shown_first + shown_second) / 2.0


# ------------------------------------------------------------------------------------------------ by spec
def available_sources_help() -> str:
    """The spec forms :func:`get_reward_source` and :func:`get_preference_source` accept (for error messages)."""
    from alignkit.rewards.verifiers import constraints_help
    from alignkit.sandbox.world import GROUP_WEIGHTS

    groups = "|".join(GROUP_WEIGHTS)
    return (
        "reward sources: sandbox-gold; sandbox-gold-<group> (" + groups + "); rm:PATH (a reward model directory; "
        "rm:PATH#min, rm:PATH#uwo=L, rm:PATH#group=NAME); llm:PATH (a local causal LM rating 1-10); "
        "verify:NAME=VALUE;... (constraint satisfaction rate; constraints: " + constraints_help() + "); "
        "a dict {spec: weight, ...} for a weighted sum. Preference sources: any of these (Bradley-Terry), or "
        "pairwise:llm:PATH (a local LLM judge comparing both orders)."
    )


def _number(value: Any, what: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return float(value)


def _unknown(spec: str) -> KeyError:
    known = ["sandbox-gold", "sandbox-gold-warm", "sandbox-gold-terse", "rm:", "llm:", "verify:", "pairwise:llm:"]
    close = difflib.get_close_matches(spec, known, n=1, cutoff=0.5)
    if Path(spec).is_dir():
        hint = f" (did you mean 'rm:{spec}' for a reward model or 'llm:{spec}' for an LLM judge?)"
    elif close:
        hint = f" (did you mean {close[0]!r}?)"
    else:
        hint = ""
    return KeyError(f"unknown reward source {spec!r}{hint}; {available_sources_help()}")


def _build(spec: Any, device: Any, loaded: dict) -> RewardSource:
    if isinstance(spec, dict):
        if not spec:
            raise ValueError(f"an empty dict is no reward source; {available_sources_help()}")
        members = []
        for key, weight in spec.items():
            if not isinstance(key, str):
                raise ValueError(f"weighted reward source keys are spec strings, not {key!r}")
            members.append((key, _number(weight, f"the weight of {key!r}"), _build(key, device, loaded)))
        return WeightedSource(members)
    if not isinstance(spec, str):
        raise ValueError(f"a reward source spec is a string or a dict {{spec: weight}}, not {spec!r}")
    spec = spec.strip()
    if spec.startswith(PAIRWISE_PREFIX):
        raise ValueError(f"{spec!r} compares two responses and gives preferences, not rewards: use "
                         "get_preference_source for it, or a pointwise spec here")
    if spec.startswith("verify:"):
        from alignkit.rewards.verifiers import VerifierSource

        return VerifierSource.from_spec(spec)
    if spec.startswith("rm:"):
        return RewardModelSource.from_spec(spec, device=device, loaded=loaded)
    from alignkit.rewards.judges import get_judge

    if spec.startswith("llm:"):
        if not spec.removeprefix("llm:"):
            raise ValueError(f"{spec!r} names no model directory (llm:PATH)")
        return JudgeSource(get_judge(spec, mode="pointwise"), name=spec)
    if spec == "sandbox-gold" or spec.startswith("sandbox-gold-"):
        from alignkit.sandbox.world import GROUP_WEIGHTS

        group = spec.removeprefix("sandbox-gold-") if spec != "sandbox-gold" else None
        if group is not None and group not in GROUP_WEIGHTS:
            raise KeyError(f"unknown sandbox annotator group {group!r} in {spec!r}; groups: {', '.join(GROUP_WEIGHTS)}")
        return JudgeSource(get_judge(spec), name=spec)
    raise _unknown(spec)


def get_reward_source(spec: str | dict[str, float] | RewardSource, device: Any = None) -> RewardSource:
    """A reward source by spec (see the module docstring): a string names one source, a dict ``{spec: weight}``
    their weighted sum ``sum_m w_m r_m``. ``device`` places reward models. An object that already has
    ``rewards`` is returned as is. Unknown specs raise ``KeyError`` with a suggestion; bad options ``ValueError``."""
    if callable(getattr(spec, "rewards", None)):
        return spec  # type: ignore[return-value]
    return _build(spec, device, {})


def get_preference_source(spec: str | dict[str, float] | RewardSource | PreferenceSource, scale: float = 1.0,
                          device: Any = None) -> PreferenceSource:
    """A preference source by spec: ``pairwise:llm:PATH`` is a pairwise LLM judge whose verdicts in both orders
    are averaged (:class:`PairwiseJudgePreference`; ``scale`` does not apply); any pointwise spec (string or
    weighted dict) is turned into Bradley-Terry ``sigmoid((r1 - r2) / scale)`` (:class:`BradleyTerryPreference`).
    A ready :class:`RewardSource` is wrapped the same way (pass the one you already built to load a reward
    model once); a ready :class:`PreferenceSource` is returned as is."""
    if callable(getattr(spec, "win_probability", None)):
        return spec  # type: ignore[return-value]
    if isinstance(spec, str) and spec.strip().startswith(PAIRWISE_PREFIX):
        inner = spec.strip().removeprefix(PAIRWISE_PREFIX)
        if not inner.startswith("llm:") or not inner.removeprefix("llm:"):
            raise ValueError(f"{spec!r}: only pairwise:llm:PATH compares two responses; for a pointwise source "
                             f"leave out 'pairwise:' (Bradley-Terry preferences). {available_sources_help()}")
        from alignkit.rewards.judges import get_judge

        return PairwiseJudgePreference(get_judge(inner, mode="pairwise"), name=spec.strip())
    _check_scale(scale)   # before any model is loaded
    return BradleyTerryPreference(get_reward_source(spec, device=device), scale=scale)
