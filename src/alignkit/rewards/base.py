"""What scores or compares responses: the protocols every reward source and judge follows (the bottom of rewards/).

Two views of a labeller:

* :class:`RewardSource` (pointwise): ``rewards(prompts, responses, metadata) -> Rewards``, a scalar ``total``
  per response plus named ``components`` (objectives, constraints, heads, weighted members); NaN marks a
  response the source could not score (the caller counts it, never drops it silently).
* :class:`PreferenceSource` (pairwise): ``win_probability(prompts, first, second) -> P(first beats second)``.

A judge is a reward source used for evaluation:

* :class:`Judge` (pointwise): ``score(prompts, responses) -> {objective: scores, "total": scores}``; NaN marks a
  response the judge could not score (an unparsable LLM verdict), which the evaluation counts as invalid.
* :class:`PairwiseJudge`: one verdict per comparison, ``"A"`` (first shown wins), ``"B"``, ``"tie"`` or ``None``
  (invalid). :mod:`alignkit.rewards.pairwise` runs every comparison in both presentation orders.

:class:`JudgeSource` and :class:`SourceJudge` turn one view into the other, so every kind of
:mod:`alignkit.rewards.spec` is usable both for training (a reward source) and for evaluation (a judge).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from alignkit.data.records import Text

Verdict = Literal["A", "B", "tie"] | None


def plain_text(text: Text) -> str:
    """The words of a prompt or response: the last user / assistant message of a conversation."""
    if isinstance(text, str):
        return text
    if not text:
        return ""
    content = text[-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


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


class Judge(Protocol):
    name: str
    objectives: tuple[str, ...]

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """objective -> per-response scores, including ``total`` (NaN: the judge gave no valid score)."""


class PairwiseJudge(Protocol):
    name: str

    def compare(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text]) -> list[Verdict]:
        """One verdict per prompt: "A" (``first`` is better), "B", "tie", or None when no verdict was given."""


def is_pairwise(judge: Any) -> bool:
    """Whether ``judge`` compares two responses (has ``compare`` and, if it has a ``mode``, it is "pairwise")
    rather than scoring one at a time."""
    return callable(getattr(judge, "compare", None)) and getattr(judge, "mode", "pairwise") == "pairwise"


def check_lengths(prompts: Sequence[Any], responses: Sequence[Any], metadata: Sequence[Any] | None = None) -> int:
    """The number of responses; ``ValueError`` when prompts, responses and metadata differ in length."""
    if len(prompts) != len(responses) or (metadata is not None and len(metadata) != len(responses)):
        extra = "" if metadata is None else f", {len(metadata)} metadata"
        raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses{extra}: the lengths must match")
    return len(responses)


class JudgeSource:
    """A pointwise judge (:class:`Judge`: sandbox gold, ``llm:PATH`` ratings) as a reward source: ``total`` is
    the judge's ``"total"`` (e.g. the sandbox's ``sum_k w_k o_k(x, y)`` over gold objectives, or Zheng et al.
    2023's 1-10 LLM rating); its other objectives become components."""

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


class SourceJudge:
    """A reward source as a pointwise judge: ``score`` is ``{**components, "total": total}`` of
    :meth:`RewardSource.rewards` (no metadata), ``objectives`` the source's own ``objectives`` if it declares
    them (else none: the evaluation reports the total)."""

    def __init__(self, source: Any, name: str | None = None):
        self.source = source
        self.name = name or source.name
        self.objectives: tuple[str, ...] = tuple(getattr(source, "objectives", ()))

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """The source's rewards as judge scores: components, then ``total``."""
        result = self.source.rewards(list(prompts), list(responses))
        return {**result.components, "total": result.total}
