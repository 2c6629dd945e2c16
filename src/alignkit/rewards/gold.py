"""``sandbox-gold`` and ``sandbox-gold-<group>``: the sandbox's exact gold reward (:mod:`alignkit.sandbox.world`)
as a judge and a reward source, optionally as one annotator group weights its objectives."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alignkit.data.records import Text
from alignkit.rewards.base import JudgeSource, plain_text
from alignkit.rewards.spec import RewardSpec, register_reward_kind
from alignkit.sandbox import world


class SandboxGoldJudge:
    """The sandbox's exact gold reward (see :mod:`alignkit.sandbox.world`), optionally as a group sees it."""

    def __init__(self, group: str | None = None):
        self.world = world
        self.group = group
        self.name = f"sandbox-gold{'-' + group if group else ''}"
        self.objectives = world.OBJECTIVES

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
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
