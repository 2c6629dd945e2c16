"""Programmatic verifiers: constraint-satisfaction-rate rewards, as in ACT.

ACT ("Aligning to ConsTraints"; Wang et al. 2025, "Aligning to Constraints for Data-Efficient Language Model
Customization", Findings of NAACL 2025; first circulated in 2024 as arXiv:2403.06326, "From Instructions to
Constraints: Language Model Alignment with Automatic Constraint Verification") labels sampled responses with
automatic constraint verifiers instead of human annotations. Every constraint ``c`` is a verifier
``v_c(y) in {0, 1}`` (1: the response ``y`` satisfies it); a response's reward is its constraint satisfaction
rate over the constraints ``C(x)`` that apply to its prompt ``x``::

    CSR(x, y) = (1 / |C(x)|) * sum_{c in C(x)} v_c(y)

and responses with a higher CSR are preferred. Here :class:`VerifierSource` is that reward: ``total`` is the
CSR, ``components`` hold every constraint's 0/1 verdict (NaN for a response the constraint does not apply to).
A response with no constraint at all has no CSR: its total is NaN (counted as unscorable, never dropped).

Spec syntax (``get_reward_source("verify:...")``, ``get_judge("verify:...")``, ``alignkit eval --judge verify:...``):
``verify:`` followed by constraints ``name=value`` (flags: just ``name``) joined by ``;``::

    verify:max_words=12
    verify:include=please|thanks            # all keywords must appear (alternatives separated by |)
    verify:exclude=stupid|dumb              # none may appear
    verify:max_words=12;include=please;lowercase
    verify:                                 # only the per-record constraints (below)

Constraints (:data:`CONSTRAINTS`):

================  ==========================================================================================
include=A|B       every keyword appears (case-insensitive, as a whole word or phrase)
include_any=A|B   at least one keyword appears
exclude=A|B       no keyword appears
min_words=N       at least N words (whitespace-separated tokens with a letter or digit; ``.`` is no word)
max_words=N       at most N words
min_chars=N       at least N characters (surrounding whitespace not counted)
max_chars=N       at most N characters
regex=PATTERN     the response matches PATTERN somewhere (``re.search``; anchor with ``^...$`` for a format)
starts_with=S     the response starts with S (case-insensitive, surrounding whitespace ignored)
ends_with=S       the response ends with S (case-insensitive, surrounding whitespace ignored)
json              the response is valid JSON (strict: no NaN/Infinity; one surrounding ``` fence allowed)
lowercase         the response has no upper-case letter
min_sentences=N   at least N sentences (text ending at ``.``, ``!`` or ``?`` before a space or the end; a
                  final fragment without punctuation counts too)
max_sentences=N   at most N sentences
sentences=N       exactly N sentences
================  ==========================================================================================

A value containing ``;`` writes it as ``\\;``. Text is the words of the response
(:func:`alignkit.rewards.base.plain_text`: the last message of a conversation).

Per-record constraints (ACT: every prompt carries its own): when ``metadata[i]["constraints"]`` is present it
applies to response ``i`` on top of the spec's. It is a list of ``"name=value"`` strings, one such ``;``-joined
string, or a dict ``{name: value}`` (a list value is joined with ``|``; a flag takes ``True``).
Unknown constraint names or bad values raise ``ValueError`` naming the constraint and listing the valid ones.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np

from alignkit.data.records import Text
from alignkit.rewards.base import Rewards, check_lengths, plain_text
from alignkit.rewards.spec import RewardSpec, register_reward_kind
from alignkit.utils.names import did_you_mean

PREFIX = "verify:"


# ------------------------------------------------------------------------------------------------ text measures
def count_words(text: str) -> int:
    """Whitespace-separated tokens that contain a letter or digit (punctuation tokens are no words)."""
    return sum(1 for token in text.split() if any(ch.isalnum() for ch in token))


_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def count_sentences(text: str) -> int:
    """Pieces of text between sentence ends (``.``/``!``/``?`` runs followed by whitespace or the end) that
    contain a letter or digit; "3.5" or "e.g.x" do not end a sentence."""
    return sum(1 for piece in _SENTENCE_END.split(text) if any(ch.isalnum() for ch in piece))


def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(keyword) + r"(?!\w)", re.IGNORECASE)


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        body = text[3:-3]
        first_newline = body.find("\n")
        # drop a language tag on the fence line (```json)
        if first_newline >= 0 and re.fullmatch(r"[\w+-]*", body[:first_newline].strip()):
            body = body[first_newline + 1:]
        return body.strip()
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_json(text: str) -> bool:
    """Whether ``text`` (optionally inside one ``` fence) is one strict JSON value."""
    try:
        json.loads(_strip_fence(text), parse_constant=_reject_constant)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ constraint kinds
def _keywords(value: str) -> tuple[re.Pattern[str], ...]:
    words = [w.strip() for w in value.split("|")]
    if not words or any(not w for w in words):
        raise ValueError("needs keywords separated by '|', none of them empty")
    return tuple(_keyword_pattern(w) for w in words)


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"needs a non-negative integer, not {value!r}")
    return number


def _regex(value: str) -> re.Pattern[str]:
    if not value:
        raise ValueError("needs a pattern")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None


def _phrase(value: str) -> str:
    if not value.strip():
        raise ValueError("needs a non-empty text")
    return value.strip().lower()


@dataclass(frozen=True)
class ConstraintKind:
    """One kind of constraint: how its value is parsed and how a response is checked."""

    parse: Callable[[str], Any] | None   # None: a flag without value
    check: Callable[[str, Any], bool]    # (response text, parsed value) -> satisfied
    usage: str                           # "name=VALUE  what it means"


CONSTRAINTS: dict[str, ConstraintKind] = {
    "include": ConstraintKind(_keywords, lambda t, ps: all(p.search(t) for p in ps),
                              "include=A|B (every keyword appears)"),
    "include_any": ConstraintKind(_keywords, lambda t, ps: any(p.search(t) for p in ps),
                                  "include_any=A|B (at least one keyword appears)"),
    "exclude": ConstraintKind(_keywords, lambda t, ps: not any(p.search(t) for p in ps),
                              "exclude=A|B (no keyword appears)"),
    "min_words": ConstraintKind(_count, lambda t, n: count_words(t) >= n, "min_words=N"),
    "max_words": ConstraintKind(_count, lambda t, n: count_words(t) <= n, "max_words=N"),
    "min_chars": ConstraintKind(_count, lambda t, n: len(t.strip()) >= n, "min_chars=N"),
    "max_chars": ConstraintKind(_count, lambda t, n: len(t.strip()) <= n, "max_chars=N"),
    "regex": ConstraintKind(_regex, lambda t, p: p.search(t) is not None, "regex=PATTERN (re.search matches)"),
    "starts_with": ConstraintKind(_phrase, lambda t, s: t.strip().lower().startswith(s), "starts_with=TEXT"),
    "ends_with": ConstraintKind(_phrase, lambda t, s: t.strip().lower().endswith(s), "ends_with=TEXT"),
    "json": ConstraintKind(None, lambda t, _: is_json(t), "json (valid JSON)"),
    "lowercase": ConstraintKind(None, lambda t, _: t == t.lower(), "lowercase (no upper-case letter)"),
    "min_sentences": ConstraintKind(_count, lambda t, n: count_sentences(t) >= n, "min_sentences=N"),
    "max_sentences": ConstraintKind(_count, lambda t, n: count_sentences(t) <= n, "max_sentences=N"),
    "sentences": ConstraintKind(_count, lambda t, n: count_sentences(t) == n, "sentences=N (exactly N)"),
}


def constraints_help() -> str:
    """One line listing every constraint with its syntax."""
    return "; ".join(kind.usage for kind in CONSTRAINTS.values())


@dataclass(frozen=True)
class Constraint:
    """A parsed constraint: its verifier ``v_c(y) in {0, 1}`` (ACT, Wang et al. 2025) is :meth:`__call__`."""

    name: str
    value: Any
    text: str     # canonical "name=value" (or "name" for a flag); the component name

    def __call__(self, response: Text) -> float:
        """``v_c(y)``: 1.0 when the response satisfies the constraint, else 0.0 (ACT, Wang et al. 2025)."""
        return 1.0 if CONSTRAINTS[self.name].check(plain_text(response), self.value) else 0.0


def _bad(name: str, problem: str) -> ValueError:
    return ValueError(f"constraint {name!r} {problem}; valid constraints: {constraints_help()}")


@lru_cache(maxsize=4096)
def parse_constraint(item: str) -> Constraint:
    """One ``name=value`` (or flag ``name``) into a :class:`Constraint`; ``ValueError`` naming the constraint and
    listing the valid ones when the name or the value is bad."""
    name, has_value, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if name not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {name!r}{did_you_mean(name, CONSTRAINTS)}; valid constraints: {constraints_help()}")
    kind = CONSTRAINTS[name]
    if kind.parse is None:
        if has_value and value.lower() not in ("", "true", "1", "yes"):
            raise _bad(name, f"is a flag and takes no value (got {value!r})")
        return Constraint(name, None, name)
    if not has_value:
        raise _bad(name, "needs a value: " + kind.usage)
    try:
        parsed = kind.parse(value)
    except ValueError as exc:
        raise _bad(name, str(exc)) from None
    return Constraint(name, parsed, f"{name}={value}")


def split_spec(text: str) -> list[str]:
    """``a=1;b=2`` -> ``["a=1", "b=2"]``: split at ``;`` not escaped as ``\\;`` (which becomes ``;``)."""
    parts = re.split(r"(?<!\\);", text)
    return [p.replace("\\;", ";").strip() for p in parts if p.strip()]


def parse_constraints(spec: Any) -> tuple[Constraint, ...]:
    """Constraints from a spec string (``"max_words=12;include=please"``, with or without ``verify:``), a list of
    ``name=value`` strings or a dict ``{name: value}`` (list values joined by ``|``; a flag takes True)."""
    if spec is None:
        return ()
    if isinstance(spec, str):
        items = split_spec(spec.removeprefix(PREFIX))
    elif isinstance(spec, dict):
        items = []
        for name, value in spec.items():
            if value is True or value is None:
                items.append(str(name))
            elif value is False:
                raise _bad(str(name), "is False; leave a constraint out instead of switching it off")
            elif isinstance(value, (list, tuple)):
                items.append(f"{name}={'|'.join(str(v) for v in value)}")
            else:
                items.append(f"{name}={value}")
    elif isinstance(spec, (list, tuple)):
        items = []
        for item in spec:
            if not isinstance(item, str):
                raise ValueError(f"a constraint is a 'name=value' string, not {item!r}; "
                                 f"valid constraints: {constraints_help()}")
            items.extend(split_spec(item))
    else:
        raise ValueError(f"constraints are a 'name=value;...' string, a list of them or a dict, not {spec!r}")
    return tuple(parse_constraint(item) for item in items)


# ------------------------------------------------------------------------------------------------ the source
class VerifierSource:
    """The ACT constraint-satisfaction-rate reward (Wang et al. 2025): ``CSR(x, y) = mean_{c in C(x)} v_c(y)``
    over the spec's constraints plus the record's own (``metadata[i]["constraints"]``).

    A :class:`~alignkit.rewards.base.RewardSource` (:meth:`rewards`) and a pointwise judge (:meth:`score`,
    objectives = the spec's constraints), so ``alignkit eval --judge verify:...`` works too.
    """

    def __init__(self, constraints: Sequence[Constraint] = (), name: str | None = None):
        self.constraints = tuple(constraints)
        self.name = name or PREFIX + ";".join(c.text.replace(";", "\\;") for c in self.constraints)
        self.objectives: tuple[str, ...] = tuple(dict.fromkeys(c.text for c in self.constraints))

    @classmethod
    def from_spec(cls, spec: str) -> VerifierSource:
        """``verify:name=value;...`` (see the module docstring); ``verify:`` alone: per-record constraints only."""
        if not spec.startswith(PREFIX):
            raise ValueError(f"a verifier spec starts with {PREFIX!r}, not {spec!r}")
        return cls(parse_constraints(spec), name=spec)

    def record_constraints(self, metadata: dict | None, index: int) -> tuple[Constraint, ...]:
        """The spec's constraints plus those of ``metadata["constraints"]`` (errors name the record)."""
        if not metadata or metadata.get("constraints") is None:
            return self.constraints
        try:
            return self.constraints + parse_constraints(metadata["constraints"])
        except ValueError as exc:
            raise ValueError(f"record {index}: {exc}") from None

    def rewards(self, prompts: Sequence[Text], responses: Sequence[Text],
                metadata: Sequence[dict] | None = None) -> Rewards:
        """ACT (Wang et al. 2025) constraint satisfaction rate ``CSR = (1/|C|) sum_c v_c(y)`` per response
        (NaN when no constraint applies); components: each constraint's ``v_c(y)`` (NaN where it does not apply)."""
        n = check_lengths(prompts, responses, metadata)
        total = np.full(n, np.nan)
        components: dict[str, np.ndarray] = {text: np.full(n, np.nan) for text in self.objectives}
        for i, response in enumerate(responses):
            constraints = self.record_constraints(metadata[i] if metadata is not None else None, i)
            if not constraints:
                continue
            verdicts = [c(response) for c in constraints]
            total[i] = float(np.mean(verdicts))
            for c, v in zip(constraints, verdicts):
                column = components.setdefault(c.text, np.full(n, np.nan))
                # a constraint listed twice for one record counts twice in the CSR; its component is its verdict
                column[i] = v
        return Rewards(total, components)

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """Pointwise-judge view of :meth:`rewards` (ACT CSR, Wang et al. 2025): ``{"total": CSR, constraint: 0/1}``."""
        result = self.rewards(prompts, responses)
        return {**result.components, "total": result.total}


# ------------------------------------------------------------------------------------------------ the verify: kind
def verify_source(spec: RewardSpec, device: Any = None, cache: dict | None = None) -> VerifierSource:
    """``verify:CONSTRAINTS`` as a reward source (``verify:`` alone: per-record constraints only)."""
    return VerifierSource(parse_constraints(spec.argument), name=spec.text)


def verify_judge(spec: RewardSpec, mode: str = "pointwise", **_: Any) -> VerifierSource:
    """``verify:CONSTRAINTS`` as a pointwise judge; a judge sees no record metadata, so it needs constraints."""
    judge = verify_source(spec)
    if not judge.constraints:
        raise ValueError("'verify:' without constraints scores only per-record constraints, which a judge is "
                         "not given; name some, e.g. verify:max_words=12;include=please")
    return judge


register_reward_kind(
    "verify", verify_source, judge=verify_judge,
    usage="verify:CONSTRAINTS", example="verify:max_words=12;include=please",
    summary="ACT constraint-satisfaction rate CSR = mean_c v_c(y) over programmatic constraints",
    help="verify:NAME=VALUE;... (constraint satisfaction rate; constraints: " + constraints_help() + ")",
    judge_help="verify:CONSTRAINTS (constraint satisfaction rate, e.g. verify:max_words=12;include=please)",
    order=40, paper="Wang et al. 2025, Aligning to Constraints for Data-Efficient Language Model Customization (ACT)")
