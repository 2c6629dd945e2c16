"""Judges score (prompt, response) pairs. Each returns named objective scores plus a ``total``."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from alignkit.data.records import Text


def plain_text(text: Text) -> str:
    """The words of a prompt or response: the last user / assistant message of a conversation."""
    if isinstance(text, str):
        return text
    return text[-1]["content"] if text else ""


class Judge(Protocol):
    name: str
    objectives: tuple[str, ...]

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """objective -> per-response scores, including ``total``."""


class SandboxGoldJudge:
    """The sandbox's exact gold reward (see :mod:`alignkit.sandbox.world`), optionally as a group sees it."""

    def __init__(self, group: str | None = None):
        from alignkit.sandbox import world

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


JUDGES = {"sandbox-gold": SandboxGoldJudge}


def get_judge(name: str) -> Judge:
    if name.startswith("sandbox-gold-"):
        return SandboxGoldJudge(name.removeprefix("sandbox-gold-"))
    if name not in JUDGES:
        raise KeyError(f"unknown judge '{name}'; available: {', '.join(JUDGES)} (or sandbox-gold-<group>)")
    return JUDGES[name]()
