"""Judges: pointwise judges score (prompt, response) pairs, pairwise judges compare two responses.

* Pointwise (:class:`Judge`): named objective scores plus a ``total`` per response; NaN marks a response the
  judge could not score (an unparsable LLM verdict), which the evaluation counts as invalid, never drops.
* Pairwise (:class:`PairwiseJudge`): one verdict per comparison, ``"A"`` (first shown wins), ``"B"``, ``"tie"``
  or ``None`` (invalid). :mod:`alignkit.rewards.pairwise` runs every comparison in both presentation orders.

Judges by name (:func:`get_judge`): ``sandbox-gold``, ``sandbox-gold-<group>``, ``rm:PATH`` (a reward model
directory, :class:`RewardModelJudge`), ``llm:PATH`` (a local causal LM prompted as a judge,
:mod:`alignkit.rewards.llm_judge`) and ``verify:CONSTRAINTS`` (programmatic constraints scored by their
satisfaction rate, e.g. ``verify:max_words=12;include=please``; :mod:`alignkit.rewards.verifiers`).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, Sequence

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


class Judge(Protocol):
    name: str
    objectives: tuple[str, ...]

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """objective -> per-response scores, including ``total`` (NaN: the judge gave no valid score)."""


class PairwiseJudge(Protocol):
    name: str

    def compare(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text]) -> list[Verdict]:
        """One verdict per prompt: "A" (``first`` is better), "B", "tie", or None when no verdict was given."""


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


class RewardModelJudge:
    """A trained scalar reward model as a pointwise judge: ``r_phi(x, y)``, the Bradley-Terry reward of
    Ouyang et al. 2022 ("Training language models to follow instructions with human feedback"), read from the
    linear head on the last non-pad token of an ``AutoModelForSequenceClassification``.

    Text is rendered and tokenized exactly as in training (:func:`alignkit.data.tokenize.tokenize_records`:
    chat template for conversations, EOS after text responses; over-long inputs truncated, prompt from the
    left; see :func:`alignkit.rewards.model.score`). A model with several heads (an ensemble or annotator groups) scores the mean
    of its heads.
    """

    objectives: tuple[str, ...] = ()

    def __init__(self, path: str, batch_size: int = 32, trust_remote_code: bool = False, device: Any = None):
        from alignkit.models.loading import load_tokenizer
        from alignkit.rewards.model import load_reward_model

        self.name = f"rm:{path}"
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.model = load_reward_model(path, self.tokenizer, trust_remote_code=trust_remote_code, device=device).eval()
        self.batch_size = batch_size

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """``{"total": r_phi(x, y)}`` per (prompt, response): the mean over the model's heads."""
        from alignkit.rewards.model import score

        rewards = score(self.model, self.tokenizer, prompts, responses, self.batch_size)
        return {"total": rewards.numpy().astype(float)}


JUDGES = {"sandbox-gold": SandboxGoldJudge}
JUDGE_HELP = ("sandbox-gold, sandbox-gold-<group>, rm:PATH (reward model), llm:PATH (local causal LM) or "
              "verify:CONSTRAINTS (constraint satisfaction rate, e.g. verify:max_words=12;include=please)")


def get_judge(name: str, mode: str = "pointwise", **llm_options: Any) -> "Judge | PairwiseJudge":
    """A judge by name (see the module docstring). ``mode`` (pointwise | pairwise) and ``llm_options``
    (template, max_new_tokens, ...) apply to ``llm:PATH`` judges; the others are pointwise."""
    if name.startswith("llm:"):
        from alignkit.rewards.llm_judge import LLMJudge

        return LLMJudge(name.removeprefix("llm:"), mode=mode, **llm_options)
    if name.startswith("verify:"):
        from alignkit.rewards.verifiers import VerifierSource

        judge = VerifierSource.from_spec(name)
        if not judge.constraints:
            raise ValueError("'verify:' without constraints scores only per-record constraints, which a judge is "
                             "not given; name some, e.g. verify:max_words=12;include=please")
        return judge
    if name.startswith("rm:"):
        return RewardModelJudge(name.removeprefix("rm:"))
    if name.startswith("sandbox-gold-"):
        return SandboxGoldJudge(name.removeprefix("sandbox-gold-"))
    if name not in JUDGES:
        raise KeyError(f"unknown judge '{name}'; available: {JUDGE_HELP}")
    return JUDGES[name]()


def is_pairwise(judge: Any) -> bool:
    """Whether ``judge`` compares two responses (has ``compare`` and, if it has a ``mode``, it is "pairwise")
    rather than scoring one at a time."""
    return callable(getattr(judge, "compare", None)) and getattr(judge, "mode", "pairwise") == "pairwise"
