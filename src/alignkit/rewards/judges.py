"""Judges: pointwise judges score (prompt, response) pairs, pairwise judges compare two responses.

A judge is a reward source used for evaluation: every spec of :mod:`alignkit.rewards.spec` names one
(``sandbox-gold``, ``sandbox-gold-<group>``, ``rm:PATH[#options]``, ``llm:PATH``, ``verify:CONSTRAINTS``,
``pairwise:llm:PATH``, ``{spec: weight}``). The protocols live in :mod:`alignkit.rewards.base`, the judges with
their kinds (:mod:`~alignkit.rewards.gold`, :mod:`~alignkit.rewards.rm`, :mod:`~alignkit.rewards.llm_judge`,
:mod:`~alignkit.rewards.verifiers`) and :func:`get_judge` in :mod:`alignkit.rewards.sources`; this module keeps
their names importable from one place.
"""

from __future__ import annotations

from alignkit.rewards.base import Judge, PairwiseJudge, Verdict, is_pairwise, plain_text
from alignkit.rewards.gold import SandboxGoldJudge
from alignkit.rewards.rm import RewardModelJudge
from alignkit.rewards.sources import get_judge
from alignkit.rewards.spec import judges_help

JUDGES = {"sandbox-gold": SandboxGoldJudge}
JUDGE_HELP = judges_help()

__all__ = ["JUDGES", "JUDGE_HELP", "Judge", "PairwiseJudge", "RewardModelJudge", "SandboxGoldJudge", "Verdict",
           "get_judge", "is_pairwise", "judges_help", "plain_text"]
