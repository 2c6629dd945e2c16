"""The one spec grammar for everything that scores or compares, and the open registry of its kinds.

A spec names a reward source (training: :func:`alignkit.rewards.sources.get_reward_source`), a preference source
(:func:`~alignkit.rewards.sources.get_preference_source`) or a judge (evaluation:
:func:`~alignkit.rewards.sources.get_judge`); a judge is a reward source used to evaluate or compare. The same
text means the same thing everywhere. :func:`parse_spec` turns it into a :class:`RewardSpec`; nothing is loaded.

Grammar (surrounding whitespace is ignored)::

    spec      := mapping | pairwise | kind-spec
    mapping   := {spec: weight, ...}            a dict: the weighted sum sum_m w_m r_m (weights finite numbers;
                                                keys spec strings, kept as written for component names)
    pairwise  := "pairwise:" kind-spec          compare two responses with a kind that compares (a judge run
                                                in both presentation orders); preferences only
    kind-spec := NAME                           a named kind:           sandbox-gold
               | NAME "-" SUFFIX                a named kind's variant: sandbox-gold-<group>
               | NAME ":" ARGUMENT              a prefixed kind:        llm:PATH, verify:CONSTRAINTS
               | NAME ":" ARGUMENT "#" OPTIONS  with options, for kinds that declare them: rm:PATH#min
    OPTIONS   := OPTION ("," OPTION)*           OPTION := KEY (a flag) | KEY "=" VALUE (a number or a text)

The longest registered NAME that matches wins. Only kinds that declare options split ``ARGUMENT`` at ``#``
(``verify:regex=^#`` keeps its ``#``); options are parsed here by the kind's :class:`Options` table, in order
(a later reduction overrides an earlier one). The built-in kinds (registered where they are implemented):

=====================================  =========================================================================
``sandbox-gold``                        the sandbox's exact gold reward; components: its objectives
                                        (:mod:`alignkit.rewards.gold`)
``sandbox-gold-<group>``                the gold reward as an annotator group weights it (warm, terse)
``rm:PATH``                             a trained reward model directory: the mean over its heads
                                        (:mod:`alignkit.rewards.rm`)
``rm:PATH#min``                         the lowest head (worst-case ensemble / MaxMin over groups)
``rm:PATH#mean``                        the mean over the heads (the default)
``rm:PATH#uwo=L``                       ``mean - L * std`` over heads (uncertainty-weighted, Coste et al. 2024)
``rm:PATH#group=NAME``                  one annotator group's heads (their mean; ``#group=NAME,min`` etc. combine)
``llm:PATH``                            a local causal LM rating each response 1-10 (pointwise LLM judge) or, as a
                                        judge in pairwise mode, comparing two (:mod:`alignkit.rewards.llm_judge`)
``verify:CONSTRAINTS``                  ACT constraint-satisfaction rate, ``name=value`` joined by ``;``, e.g.
                                        ``verify:max_words=12;include=please`` (:mod:`alignkit.rewards.verifiers`)
``pairwise:llm:PATH``                   a local LLM judge comparing both orders (a preference source)
``{spec: weight, ...}``                 the weighted sum ``sum_m w_m r_m`` of several sources
=====================================  =========================================================================

Malformed specs are one-line errors: an unknown spec is a ``KeyError`` with a suggestion and the list above
(:func:`available_sources_help`); a missing argument (``rm:``), an unknown option (``rm:PATH#max``), a bad
weight, an empty mapping or ``pairwise:`` before a kind that does not compare are ``ValueError``.

New kinds: :func:`register_reward_kind` (``alignkit methods`` lists them via :func:`reward_kinds`).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

PAIRWISE_PREFIX = "pairwise:"
OptionType = Literal["flag", "number", "text"]
Form = Literal["name", "prefix"]


# ------------------------------------------------------------------------------------------------ parsed specs
@dataclass(frozen=True)
class RewardSpec:
    """One parsed spec.

    ``kind`` is a registered kind's name, ``"pairwise"`` (``inner`` is the compared kind's spec) or
    ``"weighted"`` (``members``: ``(key as written, weight, parsed spec)``). ``argument`` is what follows
    ``NAME:`` (before any ``#``) or ``NAME-`` (None for a bare name); ``options`` the ``#`` options in order,
    ``(key, value)`` with value None (flag), a float (number) or a str (text). ``text`` is the stripped spec
    (a mapping's is its weighted-sum name ``2*a + 1*b``)."""

    text: str
    kind: str
    argument: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    members: tuple[tuple[str, float, "RewardSpec"], ...] = ()
    inner: "RewardSpec | None" = None

    def option(self, key: str, default: Any = None) -> Any:
        """The last value given for option ``key`` (None for a flag), or ``default`` when it is absent."""
        for name, value in reversed(self.options):
            if name == key:
                return value
        return default


# ------------------------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Options:
    """The ``#`` options a kind takes: ``types`` maps each key to ``"flag"`` (no value), ``"number"`` (a finite
    number) or ``"text"`` (a non-empty text); ``usage`` and ``noun`` word the error for an unknown one."""

    types: Mapping[str, OptionType]
    usage: str       # "mean, min, uwo=L, group=NAME"
    noun: str        # "reward-model", as in "unknown reward-model option 'max'"


SourceBuilder = Callable[[RewardSpec, Any, dict], Any]           # (spec, device, cache) -> RewardSource
JudgeBuilder = Callable[..., Any]                                # (spec, mode, **llm_options) -> Judge


@dataclass(frozen=True)
class RewardKind:
    """A registered kind of spec: how its text looks, how it is built, and how it is described.

    ``source(spec, device, cache)`` builds the reward source (``cache`` is shared by the members of one
    weighted mapping, e.g. to load a reward model once). ``judge(spec, mode, **llm_options)`` builds the judge
    (None: the source itself, scored by :class:`alignkit.rewards.base.SourceJudge`); a kind with
    ``compares=True`` gives a pairwise judge for ``mode="pairwise"``, which ``pairwise:<spec>`` uses."""

    name: str
    source: SourceBuilder
    judge: JudgeBuilder | None = None
    form: Form = "prefix"
    suffix: str | None = None            # name kinds: what NAME-SUFFIX selects (None: no suffix)
    argument: str | None = None          # prefix kinds: what ARGUMENT names; set: an empty one is an error
    options: Options | None = None       # prefix kinds: the '#' options (None: '#' is part of ARGUMENT)
    compares: bool = False
    usage: str = ""                      # "rm:PATH"
    summary: str = ""                    # one line for `alignkit methods`
    example: str = ""                    # an example spec
    help: str = ""                       # its part of available_sources_help()
    judge_help: str = ""                 # its part of judges_help()
    pairwise_help: str = ""              # compares: its part of the preference-source help
    directory: str = ""                  # ARGUMENT is a directory: "a reward model" (suggested for a bare dir)
    suggest: tuple[str, ...] = ()        # spellings offered for a near-miss spec
    paper: str = ""
    stability: str = "stable"
    order: int = 100                     # place in listings and help (then registration order)

    def spellings(self) -> tuple[str, ...]:
        if self.suggest:
            return self.suggest
        return (self.name + ":",) if self.form == "prefix" else (self.name,)


KINDS: dict[str, RewardKind] = {}
RESERVED = ("pairwise", "weighted")


def register_reward_kind(name: str, source: SourceBuilder, *, judge: JudgeBuilder | None = None,
                         form: Form = "prefix", help: str = "", paper: str = "", **fields: Any) -> RewardKind:
    """Register a kind of spec (see :class:`RewardKind` for the fields); returns it. ``form="prefix"`` kinds are
    written ``NAME:ARGUMENT``, ``form="name"`` kinds ``NAME`` (or ``NAME-SUFFIX`` with ``suffix``). Registering
    a name again replaces the kind (a test or a plug-in may override a built-in)."""
    if name in RESERVED or not name or any(ch in name for ch in ":#{} ") or form not in ("name", "prefix"):
        raise ValueError(f"{name!r} cannot name a reward kind (reserved or contains one of ':#{{}} ')")
    fields.setdefault("usage", f"{name}:ARG" if form == "prefix" else name)
    fields.setdefault("help", help or fields["usage"])
    fields.setdefault("judge_help", fields["usage"])
    fields.setdefault("summary", help)
    fields.setdefault("example", fields["usage"])
    if fields.get("compares"):
        fields.setdefault("pairwise_help", PAIRWISE_PREFIX + fields["usage"])
    kind = RewardKind(name=name, source=source, judge=judge, form=form, paper=paper, **fields)
    KINDS[name] = kind
    return kind


def kinds() -> list[RewardKind]:
    """The registered kinds in listing order (``order``, then registration order)."""
    return sorted(KINDS.values(), key=lambda k: k.order)


def unregister_reward_kind(name: str) -> None:
    """Remove a registered kind (tests clean up after themselves)."""
    KINDS.pop(name, None)


def reward_kinds() -> list[dict[str, str]]:
    """One row per registered kind, in listing order: name, usage, summary, example, paper, stability and
    whether it compares (``pairwise:`` works); for ``alignkit methods``."""
    return [{"name": k.name, "usage": k.usage, "summary": k.summary, "example": k.example, "paper": k.paper,
             "stability": k.stability, "compares": "yes" if k.compares else "no"} for k in kinds()]


def get_kind(name: str) -> RewardKind:
    """The registered kind ``name`` (``KeyError`` listing them)."""
    if name not in KINDS:
        raise KeyError(f"unknown reward kind {name!r}; kinds: {', '.join(KINDS)}")
    return KINDS[name]


# ------------------------------------------------------------------------------------------------ help and errors
def available_sources_help() -> str:
    """The spec forms :func:`get_reward_source` and :func:`get_preference_source` accept (for error messages)."""
    pairwise = " or ".join(k.pairwise_help for k in kinds() if k.compares)
    return ("reward sources: " + "; ".join(k.help for k in kinds())
            + "; a dict {spec: weight, ...} for a weighted sum. Preference sources: any of these (Bradley-Terry)"
            + (f", or {pairwise}" if pairwise else "") + ".")


def judges_help() -> str:
    """The spec forms :func:`get_judge` accepts: ``a, b, c or d``."""
    parts = [k.judge_help for k in kinds()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


class UnknownSpec(KeyError):
    """A spec string that names no registered kind (the message suggests the closest spelling)."""

    def __init__(self, spec: str):
        self.spec = spec
        super().__init__(_unknown_message(spec))


def _unknown_message(spec: str) -> str:
    known = [s for k in KINDS.values() for s in k.spellings()]
    known += [PAIRWISE_PREFIX + k.name + ":" for k in KINDS.values() if k.compares and k.form == "prefix"]
    close = difflib.get_close_matches(spec, known, n=1, cutoff=0.5)
    directories = [k for k in kinds() if k.directory]
    if directories and Path(spec).is_dir():
        hint = " (did you mean " + " or ".join(f"'{k.name}:{spec}' for {k.directory}" for k in directories) + "?)"
    elif close:
        hint = f" (did you mean {close[0]!r}?)"
    else:
        hint = ""
    return f"unknown reward source {spec!r}{hint}; {available_sources_help()}"


def pairwise_error(spec: Any) -> ValueError:
    """``pairwise:`` before a spec that does not compare two responses."""
    usages = " or ".join(PAIRWISE_PREFIX + k.usage for k in kinds() if k.compares) or "no kind"
    return ValueError(f"{spec!r}: only {usages} compares two responses; for a pointwise source leave out "
                      f"'pairwise:' (Bradley-Terry preferences). {available_sources_help()}")


def number(value: Any, what: str) -> float:
    """A finite number from a number or its text; ``ValueError`` "<what> must be a finite number, not ..."."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return float(value)


# ------------------------------------------------------------------------------------------------ parsing
def is_pairwise_spec(spec: Any) -> bool:
    """Whether ``spec`` is a ``pairwise:...`` string (it gives preferences, not rewards)."""
    return isinstance(spec, str) and spec.strip().startswith(PAIRWISE_PREFIX)


def _match(text: str) -> tuple[RewardKind, str | None] | None:
    """The kind ``text`` names (the longest matching name) and its argument."""
    best: tuple[RewardKind, str | None] | None = None
    for kind in KINDS.values():
        if kind.form == "prefix" and text.startswith(kind.name + ":"):
            found = (kind, text[len(kind.name) + 1:])
        elif kind.form == "name" and text == kind.name:
            found = (kind, None)
        elif kind.form == "name" and kind.suffix and text.startswith(kind.name + "-"):
            found = (kind, text[len(kind.name) + 1:])
        else:
            continue
        if best is None or len(kind.name) > len(best[0].name):
            best = found
    return best


def _options(text: str, fragment: str, options: Options) -> tuple[tuple[str, Any], ...]:
    parsed: list[tuple[str, Any]] = []
    for option in filter(None, (o.strip() for o in fragment.split(","))):
        key, has_value, value = option.partition("=")
        kind = options.types.get(key)
        if kind == "flag" and not has_value:
            parsed.append((key, None))
        elif kind == "number" and has_value:
            parsed.append((key, number(value, f"{text!r}: {key}")))
        elif kind == "text" and value:
            parsed.append((key, value))
        else:
            raise ValueError(f"{text!r}: unknown {options.noun} option {option!r}; options: {options.usage} "
                             "(comma-separated)")
    return tuple(parsed)


def parse_spec(spec: Any) -> RewardSpec:
    """A spec string or a ``{spec: weight}`` dict as a :class:`RewardSpec` (the grammar: the module docstring).

    Errors: :class:`UnknownSpec` (a ``KeyError``) for a string that names no kind; ``ValueError`` for a missing
    argument, an unknown option, a bad weight or key, an empty dict, ``pairwise:`` before a kind that does not
    compare, or a value that is neither a string nor a dict."""
    if isinstance(spec, dict):
        if not spec:
            raise ValueError(f"an empty dict is no reward source; {available_sources_help()}")
        members = []
        for key, weight in spec.items():
            if not isinstance(key, str):
                raise ValueError(f"weighted reward source keys are spec strings, not {key!r}")
            members.append((key, number(weight, f"the weight of {key!r}"), parse_spec(key)))
        return RewardSpec(" + ".join(f"{w:g}*{key}" for key, w, _ in members), "weighted", members=tuple(members))
    if not isinstance(spec, str):
        raise ValueError(f"a reward source spec is a string or a dict {{spec: weight}}, not {spec!r}")
    text = spec.strip()
    if text.startswith(PAIRWISE_PREFIX):
        argument = text.removeprefix(PAIRWISE_PREFIX)
        try:
            inner = parse_spec(argument)
        except (KeyError, ValueError):
            inner = None
        if inner is None or inner.kind not in KINDS or not KINDS[inner.kind].compares:
            raise pairwise_error(spec)
        return RewardSpec(text, "pairwise", argument, inner=inner)
    found = _match(text)
    if found is None:
        raise UnknownSpec(text)
    kind, argument = found
    options: tuple[tuple[str, Any], ...] = ()
    fragment = None
    if kind.form == "prefix" and kind.options is not None:
        argument, _, fragment = (argument or "").partition("#")
    if kind.form == "prefix" and kind.argument and not argument:
        raise ValueError(f"{text!r} names no {kind.argument} ({kind.usage})")
    if fragment is not None and kind.options is not None:
        options = _options(text, fragment, kind.options)
    return RewardSpec(text, kind.name, argument, options)
