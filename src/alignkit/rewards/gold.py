"""``sandbox-gold`` and ``sandbox-gold-<group>``: the sandbox's exact gold reward (:mod:`alignkit.sandbox.world`)
as a judge and a reward source, optionally as one annotator group weights its objectives."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alignkit.data.records import DataError, Text
from alignkit.rewards.base import JudgeSource, plain_text
from alignkit.rewards.spec import RewardSpec, register_reward_kind
from alignkit.sandbox import world


# The sandbox's words that ordinary English rarely uses: topic nouns, topics, adjectives, politeness markers and
# banned words (not the function words and fillers, which English shares).
CONTENT_WORDS = frozenset(world.vocabulary()) - frozenset(world.FUNCTION) - frozenset(world.FILLERS) - {","}
# Responses are "not the sandbox's language" when more than FOREIGN_SHARE of their words are not sandbox words AND
# fewer than CONTENT_SHARE are sandbox content words. Measured on 40 prompts: the sandbox Writer's texts (SFT
# corpus) 0% foreign / 31% content; an untrained sandbox model's random tokens 73% / 21% (it still writes the
# sandbox's BPE pieces, so online training from scratch keeps working); English text (a README, numpy's docs)
# 81-91% / 0.2-0.8%; plain English sentences with "new" and "please" in them 68% / 3.3%. Below MIN_WORDS words
# the shares are too noisy to tell (25 words of an untrained sandbox model: 92% / 8%). A collapsed policy that writes only function words is 0% foreign, so it passes too.
FOREIGN_SHARE, CONTENT_SHARE, MIN_WORDS = 0.5, 0.10, 200


def check_sandbox_language(responses: Sequence[Text], name: str = "sandbox-gold") -> None:
    """A DataError in one line when ``responses`` are not written in the sandbox world's language (see
    :data:`FOREIGN_SHARE`): the gold reward of English text is a table of meaningless numbers. Fewer than
    :data:`MIN_WORDS` words are not checked (too few to tell; an evaluation or a training batch has more)."""
    words = [w for r in responses for w in plain_text(r).lower().split()]
    if len(words) < MIN_WORDS:
        return
    vocabulary = set(world.vocabulary())
    foreign = sum(w not in vocabulary for w in words) / len(words)
    content = sum(w in CONTENT_WORDS for w in words) / len(words)
    if foreign > FOREIGN_SHARE and content < CONTENT_SHARE:
        raise DataError(f"it scores the sandbox world's language; {foreign:.0%} of the {len(words)} words in the "
                        f"responses are not sandbox words and {content:.1%} are sandbox topic, sentiment or "
                        "politeness words (is this a sandbox model?)", source=f"judge {name}")


class SandboxGoldJudge:
    """The sandbox's exact gold reward (see :mod:`alignkit.sandbox.world`), optionally as a group sees it."""

    def __init__(self, group: str | None = None):
        self.world = world
        self.group = group
        self.name = f"sandbox-gold{'-' + group if group else ''}"
        self.objectives = world.OBJECTIVES

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """Gold objectives and total per response; responses not in the sandbox's language are refused
        (:func:`check_sandbox_language`)."""
        check_sandbox_language(responses, self.name)
        per = [self.world.gold_objectives(plain_text(p), plain_text(r)) for p, r in zip(prompts, responses)]
        weights = self.world.GROUP_WEIGHTS[self.group] if self.group else None
        out = {k: np.array([o[k] for o in per], dtype=float) for k in self.objectives}
        out["total"] = np.array([self.world.weighted(o, weights) for o in per], dtype=float)
        return out


def _group(spec: RewardSpec) -> str | None:
    """The annotator group of ``sandbox-gold-<group>`` (None for ``sandbox-gold``); ``KeyError`` if unknown."""
    group = spec.argument
    if group is not None and group not in world.GROUP_WEIGHTS:
        raise KeyError(f"unknown sandbox annotator group {group!r} in {spec.text!r}; groups: "
                       f"{', '.join(world.GROUP_WEIGHTS)}")
    return group


def gold_judge(spec: RewardSpec, mode: str = "pointwise", **_: Any) -> SandboxGoldJudge:
    """The gold judge (pointwise whatever ``mode`` asks: the gold reward does not compare)."""
    return SandboxGoldJudge(_group(spec))


def gold_source(spec: RewardSpec, device: Any = None, cache: dict | None = None) -> JudgeSource:
    """The gold reward ``sum_k w_k o_k(x, y)`` as a reward source; components: the objectives."""
    return JudgeSource(SandboxGoldJudge(_group(spec)), name=spec.text)


register_reward_kind(
    "sandbox-gold", gold_source, judge=gold_judge, form="name", suffix="group",
    usage="sandbox-gold[-<group>]", example="sandbox-gold-warm",
    summary="the sandbox's exact gold reward sum_k w_k o_k(x, y), or as an annotator group weights it",
    help="sandbox-gold; sandbox-gold-<group> (" + "|".join(world.GROUP_WEIGHTS) + ")",
    judge_help="sandbox-gold, sandbox-gold-<group>",
    suggest=("sandbox-gold", *(f"sandbox-gold-{g}" for g in world.GROUP_WEIGHTS)),
    order=10, paper="alignkit's sandbox (docs: the embedded default)")
