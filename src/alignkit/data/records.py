"""One record shape for every kind of preference data.

A :class:`PreferenceRecord` holds one prompt and K >= 1 responses plus whatever supervision the source
carries. Pairs are K=2 with ``ranking=[0, 1]`` (chosen first); unpaired binary feedback is K=1 with a
label; rankings are K responses with a best-first ranking; multi-objective data carries named
per-response scores; negatives-only data is K responses all labelled ``False``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Union

Message = dict[str, str]
Text = Union[str, list[Message]]  # plain text or chat messages

OnInvalid = Literal["error", "skip"]  # data.on_invalid: raise on an invalid row, or skip and count it

DATA_KINDS = ("pairs", "unpaired", "ranked", "negatives", "scored", "sft")


class DataError(ValueError):
    """Bad input data. The message always names where: ``file:line`` and, when known, the field."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        where = source or "<data>"
        if field:
            where += f" field '{field}'"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.field = field
        self.message = message

    @property
    def reason(self) -> str:
        """What is wrong, without the place: the key ``data.on_invalid: skip`` counts skipped rows under. Indices in
        the field name are dropped (``messages[3]`` -> ``messages[]``), so one problem is one reason."""
        field = re.sub(r"\[\d+\]", "[]", self.field) if self.field else None
        return f"invalid: {field + ': ' if field else ''}{self.message}"


def score_problem(value: int | float) -> str | None:
    """Why a number cannot be a score (NaN, infinite, an integer too large for a float), or None."""
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int past the float range
        return f"score (an integer with {len(str(abs(value)))} digits) is too large for a float"
    return None if finite else f"score {value!r} is not a finite number"


@dataclass
class PreferenceRecord:
    """One prompt with K responses and the supervision attached to them.

    prompt:     text, or chat messages ending before the assistant turn being scored.
    responses:  K responses; text, or a list of assistant messages when the prompt is conversational.
    ranking:    response indices best-first (pairs: ``[0, 1]``); may cover all K responses.
    labels:     per-response desirable (True) / undesirable (False) flags.
    scores:     objective name -> K per-response scores (rewards, win probabilities, ...).
    annotator:  who labelled it (annotator or group id), if known.
    source:     ``file:line`` the record came from, used in every error and report.
    """

    prompt: Text
    responses: list[Text]
    ranking: list[int] | None = None
    labels: list[bool] | None = None
    scores: dict[str, list[float]] | None = None
    annotator: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        k = len(self.responses)
        if k == 0:
            raise DataError("record has no responses", source=self.source, field="responses")
        if self.ranking is not None:
            if sorted(self.ranking) != sorted(set(self.ranking)) or any(not 0 <= i < k for i in self.ranking):
                raise DataError(f"ranking {self.ranking} is not a list of distinct indices < {k}",
                                source=self.source, field="ranking")
        if self.labels is not None and len(self.labels) != k:
            raise DataError(f"{len(self.labels)} labels for {k} responses", source=self.source, field="label")
        for name, values in (self.scores or {}).items():
            if len(values) != k:
                raise DataError(f"{len(values)} scores for {k} responses", source=self.source, field=name)
            for v in values:
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise DataError(f"score {v!r} is not a finite number", source=self.source, field=name)
                problem = score_problem(v)
                if problem:
                    raise DataError(problem, source=self.source, field=name)

    @property
    def kind(self) -> str:
        """The data kind this record provides (see ``DATA_KINDS``)."""
        if self.ranking is not None and len(self.ranking) >= 2:
            return "pairs" if len(self.responses) == 2 else "ranked"
        if self.labels is not None:
            return "negatives" if not any(self.labels) and len(self.responses) > 1 else "unpaired"
        if self.scores:
            return "scored"
        return "sft"

    def group_value(self, key: str) -> str | None:
        """The record's ``annotator`` (``key == "annotator"``) or its metadata value under ``key``, as a string;
        None when absent."""
        value = self.annotator if key == "annotator" else self.metadata.get(key)
        return None if value is None else str(value)

    @classmethod
    def pair(cls, prompt: Text, chosen: Text, rejected: Text, **kw: Any) -> "PreferenceRecord":
        return cls(prompt=prompt, responses=[chosen, rejected], ranking=[0, 1], **kw)

    @property
    def chosen(self) -> Text:
        assert self.ranking is not None, "record has no ranking"
        return self.responses[self.ranking[0]]

    @property
    def rejected(self) -> Text:
        assert self.ranking is not None, "record has no ranking"
        return self.responses[self.ranking[-1]]


@dataclass
class DataReport:
    """Counts of every drop and anomaly met while loading and tokenizing. Nothing is dropped silently."""

    loaded: int = 0
    dropped: Counter = field(default_factory=Counter)      # reason -> count
    anomalies: Counter = field(default_factory=Counter)    # reason -> count (kept, but reported)
    converted: Counter = field(default_factory=Counter)    # conversion -> records produced (e.g. pairs -> unpaired)
    truncated: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first few sources

    def note(self, bucket: str, reason: str, source: str) -> None:
        getattr(self, bucket)[reason] += 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < 5:
            seen.append(source)

    def drop(self, reason: str, source: str) -> None:
        self.note("dropped", reason, source)

    def anomaly(self, reason: str, source: str) -> None:
        self.note("anomalies", reason, source)

    def identical_pair(self, reason: str, source: str, *, drop: bool) -> bool:
        """Count a pair whose chosen equals its rejected (``data.drop_identical``): dropped when ``drop``, else kept
        as an anomaly. Returns ``drop``, i.e. whether the caller must leave the record out."""
        self.note("dropped" if drop else "anomalies", reason, source)
        return drop

    def merge(self, other: "DataReport") -> "DataReport":
        self.loaded += other.loaded
        self.dropped.update(other.dropped)
        self.anomalies.update(other.anomalies)
        self.converted.update(other.converted)
        self.truncated += other.truncated
        for k, v in other.examples.items():
            self.examples.setdefault(k, []).extend(v[: 5 - len(self.examples.get(k, []))])
        return self

    def _first_at(self, reason: str) -> str:
        """Where the first rows skipped as invalid are (``data.on_invalid: skip``), so they can be fixed."""
        return f" (first at {', '.join(self.examples[reason])})" if reason.startswith("invalid:") else ""

    def as_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "dropped": dict(self.dropped), "anomalies": dict(self.anomalies),
                "converted": dict(self.converted), "truncated": self.truncated, "examples": self.examples}

    def summary(self) -> str:
        parts = [f"{self.loaded} records loaded"]
        if self.dropped:
            dropped = sorted(self.dropped.items())
            parts.append("dropped: " + ", ".join(f"{k}={v}{self._first_at(k)}" for k, v in dropped))
        if self.truncated:
            parts.append(f"truncated: {self.truncated}")
        if self.anomalies:
            parts.append("anomalies: " + ", ".join(f"{k}={v}" for k, v in sorted(self.anomalies.items())))
        if self.converted:
            parts.append("converted: " + ", ".join(f"{k}={v}" for k, v in sorted(self.converted.items())))
        return "; ".join(parts)
