"""Tokenize records so that the response mask marks exactly the response tokens.

A record's prompt is rendered once (with the tokenizer's chat template for conversational data, as is for
text) and each response is rendered as the text that follows it. Prompt and response are tokenized
*separately* and concatenated: a BPE merge can never straddle the boundary, and the ids match what the
model sees at generation time (prompt ids, then sampled ids). For conversational data the chat template
is applied to prompt + response and the prompt rendering must be a prefix of it; the response text is the
rest (its end-of-turn token included, so the model learns to stop). Text responses get the EOS token.

Over-length examples follow an explicit policy: ``truncate`` (prompt from the left down to
``max_prompt_length``, keeping its leading special tokens such as BOS or [CLS]: :func:`truncate_left`; then the
response from the right), ``drop`` (counted in the report) or ``error``. A pair
whose chosen and rejected responses differ but become the same ids after truncation is handled like a pair whose
responses are identical in the file (``data.drop_identical``): dropped and counted, or kept and counted as an anomaly,
under the reason ``chosen_equals_rejected_after_truncation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from alignkit.data.records import DataError, DataReport, PreferenceRecord, Text

Overlength = Literal["truncate", "drop", "error"]
IDENTICAL_AFTER_TRUNCATION = "chosen_equals_rejected_after_truncation"


@dataclass
class TokenizedRecord:
    """A record's prompt ids and the ids of each of its K responses (same order as ``record.responses``)."""

    index: int
    record: PreferenceRecord
    prompt_ids: list[int]
    response_ids: list[list[int]]
    extra: dict[str, Any] = field(default_factory=dict)  # recipe-specific (e.g. KTO's mismatched response ids)

    def sequence(self, k: int) -> tuple[list[int], list[int]]:
        """(input ids, response mask) of the k-th response."""
        ids = self.prompt_ids + self.response_ids[k]
        return ids, [0] * len(self.prompt_ids) + [1] * len(self.response_ids[k])


def is_conversational(text: Text) -> bool:
    return isinstance(text, list)


def _apply_chat_template(tokenizer: PreTrainedTokenizerBase, messages: list, source: str, field: str,
                         **kwargs: Any) -> str:
    """The template's rendering; a template that refuses the messages (``raise_exception``, e.g. "roles must
    alternate") is a DataError naming the record."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except TemplateError as exc:
        raise DataError(f"the tokenizer's chat template refused these messages: {exc}", source=source,
                        field=field) from None


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Text, source: str | None = None) -> str:
    """The text a model is given before it writes a response."""
    if is_conversational(prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("conversational data needs a tokenizer with a chat template", source=source,
                            field="prompt")
        return _apply_chat_template(tokenizer, prompt, source, "prompt", add_generation_prompt=True)
    return prompt


def render_response(tokenizer: PreTrainedTokenizerBase, prompt: Text, prompt_text: str, response: Text,
                    source: str = "<memory>") -> str:
    """The text that follows ``prompt_text`` when ``response`` is written, end-of-turn included."""
    if is_conversational(prompt) != is_conversational(response):
        raise DataError("prompt and response must both be text or both be messages", source=source,
                        field="responses")
    if not is_conversational(prompt):
        return response + (tokenizer.eos_token or "")
    full = _apply_chat_template(tokenizer, list(prompt) + list(response), source, "responses")
    if not full.startswith(prompt_text):
        raise DataError("the chat template's rendering of the prompt is not a prefix of prompt + response; "
                        "cannot locate the response tokens", source=source, field="responses")
    return full[len(prompt_text):]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def truncate_left(ids: list[int], length: int, tokenizer: PreTrainedTokenizerBase, source: str | None = None
                  ) -> list[int]:
    """The last ``length`` ids, keeping the sequence's leading special tokens (BOS, a BERT-style [CLS]).

    Cutting from the left would otherwise drop them: a causal LM then reads a sequence that starts mid-text without
    the BOS it was trained with, and a BERT-style reward model classifies the [CLS] position, which would hold an
    ordinary token. The kept special tokens count towards ``length``; so many that nothing else fits is a
    DataError."""
    if len(ids) <= length:
        return ids
    special = set(tokenizer.all_special_ids)
    lead = 0
    while lead < len(ids) and ids[lead] in special:
        lead += 1
    if lead >= length:
        raise DataError(f"{lead} leading special tokens leave no room within max_prompt_length={length}",
                        source=source)
    return ids[:lead] + ids[len(ids) - (length - lead):]


def _became_identical_pair(item: TokenizedRecord) -> bool:
    """A pair whose chosen and rejected differ as text but have the same (truncated) ids."""
    record = item.record
    if record.kind != "pairs" or record.chosen == record.rejected:
        return False
    return item.response_ids[record.ranking[0]] == item.response_ids[record.ranking[-1]]


def tokenize_record(tokenizer: PreTrainedTokenizerBase, record: PreferenceRecord, index: int, *,
                    max_length: int, max_prompt_length: int, overlength: Overlength,
                    report: DataReport, drop_identical: bool = True) -> TokenizedRecord | None:
    """The record's ids, or None when it is dropped (counted in ``report``); see the module docstring."""
    prompt_text = render_prompt(tokenizer, record.prompt, record.source)
    # Text prompts get the tokenizer's own special tokens (e.g. BOS); chat templates write theirs.
    prompt_ids = _encode(tokenizer, prompt_text, special=not is_conversational(record.prompt))
    responses = [_encode(tokenizer, render_response(tokenizer, record.prompt, prompt_text, r, record.source),
                         special=False) for r in record.responses]
    for k, ids in enumerate(responses):
        if not ids:
            raise DataError(f"response {k} tokenizes to nothing", source=record.source, field="responses")
    longest = max(map(len, responses))
    if len(prompt_ids) + longest <= max_length:
        return TokenizedRecord(index, record, prompt_ids, responses)
    if overlength == "error":
        raise DataError(f"{len(prompt_ids) + longest} tokens exceed max_length={max_length} "
                        "(set data.overlength to truncate or drop)", source=record.source, field="responses")
    if overlength == "drop":
        report.drop("over_max_length", record.source)
        return None
    prompt_ids = truncate_left(prompt_ids, max_prompt_length, tokenizer, record.source)
    room = max_length - len(prompt_ids)
    if room <= 0:
        raise DataError(f"max_prompt_length={max_prompt_length} leaves no room for a response within "
                        f"max_length={max_length}", source=record.source)
    item = TokenizedRecord(index, record, prompt_ids, [ids[:room] for ids in responses])
    if _became_identical_pair(item) and report.identical_pair(IDENTICAL_AFTER_TRUNCATION, record.source,
                                                              drop=drop_identical):
        return None
    report.truncated += 1
    report.examples.setdefault("truncated", [])
    if len(report.examples["truncated"]) < 5:
        report.examples["truncated"].append(record.source)
    return item


def tokenize_records(tokenizer: PreTrainedTokenizerBase, records: Sequence[PreferenceRecord], *,
                     max_length: int = 512, max_prompt_length: int = 256, overlength: Overlength = "truncate",
                     report: DataReport | None = None, drop_identical: bool = True) -> list[TokenizedRecord]:
    """Tokenize every record; drops (policy ``drop``, pairs made identical by truncation when ``drop_identical``)
    and truncations are counted in ``report``."""
    if overlength not in ("truncate", "drop", "error"):
        raise ValueError(f"overlength must be truncate, drop or error, not {overlength!r}")
    report = report if report is not None else DataReport()
    out = []
    for i, record in enumerate(records):
        tokenized = tokenize_record(tokenizer, record, i, max_length=max_length,
                                    max_prompt_length=max_prompt_length, overlength=overlength, report=report,
                                    drop_identical=drop_identical)
        if tokenized is not None:
            out.append(tokenized)
    return out
