"""LLM-as-a-judge from a local causal LM: a prompt template in, a parsed verdict out.

The judge follows Zheng et al. 2023 ("Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena"): the model is
shown the user's question and either one answer (pointwise: "rate it 1-10, answer ``[[score]]``") or two
(pairwise: "answer ``[[A]]``, ``[[B]]`` or ``[[C]]`` for a tie"), and decodes greedily. Small or unaligned judges
rarely follow the format, so the parsers below read verdicts out of messy text in tiers, from the most to the
least explicit cue, and return ``None`` (invalid) when nothing parses or the strongest cues disagree. Invalid
verdicts are counted by the caller, never silently dropped. Raw judge outputs are kept in ``outputs``.

Templates are ``str.format`` strings with ``{question}`` and ``{answer}`` (pointwise) or ``{question}``,
``{answer_a}`` and ``{answer_b}`` (pairwise); model text is inserted as is (it is not executed or formatted).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from alignkit.data.records import Text
from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.rewards.base import JudgeSource, Verdict, plain_text
from alignkit.rewards.spec import RewardSpec, register_reward_kind
from alignkit.sampling.generate import SamplingConfig, generate

PAIRWISE_TEMPLATE = (
    "Compare two answers to the user's question and decide which one is more helpful, accurate and polite.\n"
    "[Question]\n{question}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}\n\n"
    "Reply with [[A]] if answer A is better, [[B]] if answer B is better, or [[C]] for a tie.\nVerdict:"
)
POINTWISE_TEMPLATE = (
    "Rate the answer to the user's question for helpfulness, accuracy and politeness on a scale of 1 to 10.\n"
    "[Question]\n{question}\n\n[Answer]\n{answer}\n\n"
    "Reply with the rating in double brackets, e.g. [[7]].\nRating:"
)

# --------------------------------------------------------------------------- verdict parsing

_LETTER = r"\(?\s*([ab])\s*\)?"
_LABEL = r"(?:output|response|answer|assistant|option|model|candidate)"
_KEY = r"(?:winner|verdict|final verdict|answer|choice|decision|preferred|preference|better (?:one|answer|response|output)(?: is)?)"
_TIE_WORDS = r"(?:tie|draw|neither|both are equally|equally (?:good|bad|helpful)|same quality)"

# Tiers of cues, most explicit first: (pattern, group of the letter or None for a tie).
_PAIRWISE_TIERS: list[list[tuple[re.Pattern[str], int | None]]] = [
    [(re.compile(r"\[\[\s*([ab])\s*\]\]", re.I), 1), (re.compile(r"\[\[\s*(?:c|tie|draw)\s*\]\]", re.I), None)],
    [(re.compile(rf"\b{_KEY}\s*[:=\-]?\s*(?:is\s+)?[\*_\"'`]*\s*(?:{_LABEL}\s*)?{_LETTER}(?![\w])", re.I), 1),
     (re.compile(rf"\b{_KEY}\s*[:=\-]?\s*(?:is\s+)?(?:a\s+)?[\*_\"'`]*\s*{_TIE_WORDS}\b", re.I), None)],
    [(re.compile(rf"\b{_TIE_WORDS}\b", re.I), None)],
    [(re.compile(rf"\b{_LABEL}\s*{_LETTER}(?![\w])", re.I), 1),
     (re.compile(r"(?:\*\*|__)\s*\(?([ab])\)?\s*(?:\*\*|__)", re.I), 1)],
    [(re.compile(r"^\W*([AB])\W*$"), 1), (re.compile(r"^\s*\(\s*([ab])\s*\)\W*$", re.I), 1)],
]


def _tier_verdicts(text: str, tier: Iterable[tuple[re.Pattern[str], int | None]]) -> set[str]:
    found: set[str] = set()
    for pattern, group in tier:
        for match in pattern.finditer(text):
            found.add(match.group(group).upper() if group else "tie")
    return found


def parse_pairwise_verdict(text: str) -> Verdict:
    """The verdict in a judge's output: "A", "B", "tie" or None (invalid).

    Cues are read in tiers (Zheng et al. 2023 ask for ``[[A]]``/``[[B]]``/``[[C]]``; real outputs stray):

    1. bracketed ``[[A]]``, ``[[B]]``, ``[[C]]`` / ``[[tie]]``;
    2. keyed statements: "Winner: B.", "Final verdict: Output (a)", "The better response is **A**", "Verdict: tie";
    3. tie words: "tie", "draw", "neither", "equally good";
    4. labelled or emphasised letters: "Output (a)", "Response B", "**A**";
    5. an output that is nothing but the letter: "A", "(b)".

    The first tier with any cue decides: one distinct verdict there is the answer; several (e.g. "Output (a)
    ... Output (b)" with nothing stronger) make the output ambiguous, i.e. invalid, as does an output with no cue.
    """
    for tier in _PAIRWISE_TIERS:
        found = _tier_verdicts(text, tier)
        if found:
            return found.pop() if len(found) == 1 else None  # type: ignore[return-value]
    return None


_NUMBER = r"(\d+(?:\.\d+)?)"
_SCORE_TIERS: list[re.Pattern[str]] = [
    re.compile(rf"\[\[\s*{_NUMBER}\s*(?:/\s*10)?\s*\]\]"),
    re.compile(rf"\b(?:score|rating|rate|grade)\s*(?:is|of)?\s*[:=\-]?\s*[\*_\"']*\s*{_NUMBER}", re.I),
    re.compile(rf"\b{_NUMBER}\s*(?:/|out of)\s*10\b", re.I),
    re.compile(rf"^\W*{_NUMBER}\W*$"),
]


def parse_score(text: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """A pointwise rating in ``[low, high]`` read from a judge's output, or None (invalid).

    Tiers, most explicit first (Zheng et al. 2023's single-answer grading asks for ``[[rating]]``):
    ``[[7]]``; "Score: 7" / "rating of 7"; "7/10" / "7 out of 10"; an output that is only a number. The first
    tier with a match decides; disagreeing numbers there, or a number outside ``[low, high]``, are invalid.
    """
    for pattern in _SCORE_TIERS:
        values = {float(m.group(1)) for m in pattern.finditer(text)}
        if values:
            if len(values) > 1:
                return None
            value = values.pop()
            return value if low <= value <= high else None
    return None


# --------------------------------------------------------------------------- the judge


class LLMJudge:
    """A local causal LM prompted as a judge (Zheng et al. 2023), pointwise or pairwise.

    * pairwise (``mode="pairwise"``): :meth:`compare` fills ``template`` with the question and two answers and
      parses ``"A"``/``"B"``/``"tie"``/None with :func:`parse_pairwise_verdict`. Position bias is measured and
      averaged out by :func:`alignkit.rewards.pairwise.judge_both_orders`, which shows every pair in both orders.
    * pointwise (``mode="pointwise"``): :meth:`score` parses a rating ``s in [1, 10]`` with :func:`parse_score`;
      ``total = s`` (NaN where invalid).

    Decoding is greedy (deterministic). Each answer is cut to ``max_answer_tokens`` tokens before it is shown
    (counted in ``truncated``). ``outputs`` keeps every raw judge output; ``invalid`` counts unparsable ones.
    """

    objectives: tuple[str, ...] = ()

    def __init__(self, path: str, mode: str = "pairwise", template: str | None = None, max_new_tokens: int = 32,
                 max_answer_tokens: int = 512, batch_size: int = 16, trust_remote_code: bool = False):
        if mode not in ("pairwise", "pointwise"):
            raise ValueError(f"judge mode must be pairwise or pointwise, not {mode!r}")
        self.mode = mode
        self.name = f"llm:{path} ({mode})"
        self.template = template or (PAIRWISE_TEMPLATE if mode == "pairwise" else POINTWISE_TEMPLATE)
        self._check_template()
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(path, trust_remote_code=trust_remote_code)
        self.max_new_tokens = max_new_tokens
        self.max_answer_tokens = max_answer_tokens
        self.batch_size = batch_size
        self.outputs: list[str] = []
        self.invalid = 0
        self.truncated = 0

    def _check_template(self) -> None:
        fields = ("question", "answer_a", "answer_b") if self.mode == "pairwise" else ("question", "answer")
        missing = [f for f in fields if "{" + f + "}" not in self.template]
        if missing:
            raise ValueError(f"{self.mode} judge template lacks {', '.join('{' + f + '}' for f in missing)}")

    def _cut(self, text: Text) -> str:
        words = plain_text(text)
        ids = self.tokenizer(words, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_answer_tokens:
            return words
        self.truncated += 1
        return self.tokenizer.decode(ids[: self.max_answer_tokens]) + " ..."

    def _fill(self, **fields: str) -> str:
        # Substitute the fields in one pass so that braces inside model text are never re-read as fields.
        return re.sub(r"\{(question|answer|answer_a|answer_b)\}", lambda m: fields[m.group(1)], self.template)

    def _generate(self, judge_prompts: list[str]) -> list[str]:
        """Greedy continuations of ``judge_prompts`` (as user turns when the tokenizer has a chat template)."""
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        inputs: list[Any] = [[{"role": "user", "content": p}] if chat else p for p in judge_prompts]
        config = SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=0.0, batch_size=self.batch_size)
        texts = [s.text for s in generate(self.model, self.tokenizer, inputs, config)]
        self.outputs.extend(texts)
        return texts

    def compare(self, prompts: Sequence[Text], first: Sequence[Text], second: Sequence[Text]) -> list[Verdict]:
        """Pairwise verdicts ("A" = ``first`` is better) parsed by :func:`parse_pairwise_verdict`."""
        judge_prompts = [self._fill(question=plain_text(p), answer_a=self._cut(a), answer_b=self._cut(b))
                         for p, a, b in zip(prompts, first, second)]
        verdicts = [parse_pairwise_verdict(t) for t in self._generate(judge_prompts)]
        self.invalid += sum(v is None for v in verdicts)
        return verdicts

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> dict[str, np.ndarray]:
        """Pointwise ratings ``{"total": s}`` parsed by :func:`parse_score` (NaN where no valid rating)."""
        judge_prompts = [self._fill(question=plain_text(p), answer=self._cut(r)) for p, r in zip(prompts, responses)]
        scores = [parse_score(t) for t in self._generate(judge_prompts)]
        self.invalid += sum(s is None for s in scores)
        return {"total": np.array([np.nan if s is None else s for s in scores], dtype=float)}

    def stats(self) -> dict[str, int]:
        return {"judge_calls": len(self.outputs), "invalid_outputs": self.invalid, "truncated_answers": self.truncated}


def load_template(path: str | Path | None) -> str | None:
    """A judge prompt template from a text file (None: the default template for the mode)."""
    return None if path is None else Path(path).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the llm: kind


def llm_judge(spec: RewardSpec, mode: str = "pointwise", **llm_options: Any) -> LLMJudge:
    """``llm:PATH`` as a judge in ``mode`` (pointwise rating or pairwise comparison); ``llm_options``:
    template, max_new_tokens, max_answer_tokens, batch_size, trust_remote_code."""
    return LLMJudge(spec.argument, mode=mode, **llm_options)


def llm_source(spec: RewardSpec, device: Any = None, cache: dict | None = None) -> JudgeSource:
    """``llm:PATH`` as a reward source: the pointwise 1-10 rating (Zheng et al. 2023) is the total."""
    return JudgeSource(LLMJudge(spec.argument, mode="pointwise"), name=spec.text)


register_reward_kind(
    "llm", llm_source, judge=llm_judge, argument="model directory", compares=True,
    usage="llm:PATH", example="pairwise:llm:runs/judge", directory="an LLM judge",
    summary="a local causal LM as a judge: a 1-10 rating, or (pairwise:) a comparison in both orders",
    help="llm:PATH (a local causal LM rating 1-10)", judge_help="llm:PATH (local causal LM)",
    pairwise_help="pairwise:llm:PATH (a local LLM judge comparing both orders)",
    order=30, paper="Zheng et al. 2023, Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena")
