"""Load and save preference data in the formats Hugging Face / TRL users already have.

:func:`load_records` reads a data file (or a directory saved by ``datasets``) and returns
:class:`~alignkit.data.records.PreferenceRecord` objects plus a :class:`~alignkit.data.records.DataReport`
that counts every row dropped or flagged. :func:`save_records` writes records back as JSON Lines in the same
formats, so ``load_records(save_records(records, path))`` gives the records back.

Files
-----

``.jsonl`` / ``.ndjson`` / ``.json`` files may be compressed (``.jsonl.gz``, ``.json.bz2``, ``.jsonl.xz``, as HH-RLHF
ships them): they are read transparently and errors name the line of the uncompressed text.

=============================  =========================================  =========================================
format                      keys                                       record
==========================  =========================================  =========================================
pairwise                    ``prompt, chosen, rejected``               ``responses=[chosen, rejected]``,
                            [``score_chosen, score_rejected``]         ``ranking=[0, 1]``
                                                                       [``scores={"score": [sc, sr]}``]
pairwise (implicit prompt)  ``chosen, rejected`` [scores as above]     as above, prompt extracted (see below)
listwise                    ``prompt, responses`` + one or more of     K responses with that supervision
                            ``ranking, scores, labels``                (see below)
unpaired (KTO)              ``prompt, completion, label``              K=1, ``labels=[label]``
negatives                   ``prompt, rejected``                       K=1, ``labels=[False]``
prompt-completion (SFT)     ``prompt, completion``                     K=1, no supervision (kind ``sft``)
conversation (SFT)          ``messages``                               prompt: messages before the last
                                                                       assistant one; ``responses=[[last]]``
text (language modelling)   ``text``                                   ``prompt=""``, ``responses=[text]``
==========================  =========================================  =========================================

Listwise rows: ``ranking`` lists response indices best first. ``scores`` as a list (one number per
response, higher is better) is stored as ``scores={"score": [...]}`` and, without an explicit ``ranking``,
also gives the ranking by score (a stable sort, higher first: ties keep file order). ``scores`` as an
object ``name -> list`` is multi-objective; it is stored as is and sets no ranking. ``labels`` is one
bool per response (desirable or not; all false is negatives-only data).

Other keys: ``annotator`` (or ``annotator_id``, ``group``, ``worker_id``; the first present wins) becomes
``record.annotator`` as a string; every remaining key (``id`` included) goes to ``record.metadata``.

Implicit prompts. For conversations the prompt is the longest run of leading messages that chosen and
rejected share, moved back before its trailing assistant/tool messages when it would otherwise end with
an assistant message or leave a response empty (and the rest of both is only assistant/tool messages); it
must be non-empty and end with a non-assistant message, and what follows in each is the response. For
HH-RLHF style text (turns marked ``\\n\\nHuman:`` / ``\\n\\nAssistant:``) the prompt ends at the last
``\\n\\nAssistant:`` the two share, so answers that start alike ("I'm sorry" / "I can't") are not cut mid-turn or
mid-word. For other
text the prompt is the longest shared leading string, cut back to the last whitespace when it would end
inside a word or leave a response empty, with trailing spaces moved into the responses
(``"Q: 2+2? A: 4"`` / ``"Q: 2+2? A: 5"`` gives prompt ``"Q: 2+2? A:"`` and responses ``" 4"`` /
``" 5"``); when nothing is shared the row is an error, as text pairs need a prompt. A row with a *text*
``prompt`` and chosen/rejected that are whole conversations (the ``ultrafeedback_binarized`` layout) is
read the same way; its text prompt is kept as ``metadata["prompt_text"]``.

A directory is a ``datasets.save_to_disk`` directory, or holds one data file, one named after the split
(``train.jsonl``), or the split's shards as the hub stores them (``train-00000-of-00002.parquet``, read in name
order; rows are named by their shard file).

Only the ``{text}`` format may have an empty prompt; an empty response is an error. Prompts and messages are checked
by :mod:`alignkit.data.validate`, the validator prompt files use too: text holding only whitespace and invisible
characters (U+200B, U+FEFF, ...) is empty; message content is a string or ``{"type": "text"}`` parts (joined into a
string; other parts, such as images, are an error); two assistant messages in a row are an error.

Errors and anomalies
--------------------

Bad input raises :class:`~alignkit.data.records.DataError` naming the place, e.g.
``data.jsonl:7 field 'chosen': expected a string or a list of messages, got int``. Places are
``path:LINE`` for JSON Lines (1-based physical line), ``path:record N`` for JSON and ``path:row N`` for
Parquet and ``datasets`` directories (``path/SPLIT:row N`` for a ``DatasetDict``). A file with no rows, or
whose rows were all dropped, is an error too. JSON is read strictly (:mod:`alignkit.data.jsonio`): duplicate keys,
lone UTF-16 surrogate escapes, integers past Python's 4300-digit limit and arrays nested too deeply to parse are
errors naming the line and field; a UTF-8 BOM at the start of a file is skipped.

Nothing is dropped silently. A pair whose chosen equals its rejected is dropped (report reason
``chosen_equals_rejected``) when ``drop_identical`` is true, otherwise kept and counted as an anomaly with
that reason. Other repeated responses within one record are kept and counted as ``identical_responses``.
A record equal to an earlier one (same prompt, responses, ranking, labels and scores) is kept and counted
as ``duplicate``.

Writing
-------

:func:`record_to_dict` writes the most specific format above that holds the record exactly: pairwise
(``ranking == [0, 1]``, scores at most ``"score"``), unpaired (K=1 with a label), prompt-completion or
text (K=1 without supervision), and listwise for everything else (rankings, multi-objective scores,
negatives lists). ``annotator`` and the metadata keys are written alongside. :func:`save_records` writes
JSON Lines in one format per file: when the records need different formats it writes them all as listwise
rows (records without any supervision cannot be mixed with others, nor text records with conversational
ones).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from alignkit.data.jsonio import (BOM, COMPRESSIONS, JSONValueError, OnError, canonical_json, data_suffix,
                                  field_name, jsonl_rows, loads, read_bytes)
from alignkit.data.records import (DataError, DataReport, Message, OnInvalid, PreferenceRecord, Text,
                                   score_problem)
from alignkit.data.validate import (RESPONSE_ROLES, check_prompt, is_blank, parse_messages, parse_prompt,
                                    parse_text, type_name, has_visible_text)
from alignkit.utils.io import write_jsonl

__all__ = ["ACCEPTED_EXTENSIONS", "ROW_FORMATS", "RowFormat", "load_records", "record_to_dict", "save_records"]

ANNOTATOR_KEYS = ("annotator", "annotator_id", "group", "worker_id")
IDENTICAL = "chosen_equals_rejected"
TURN_MARKER, HUMAN_MARKER = "\n\nAssistant:", "\n\nHuman:"  # turn boundaries of HH-RLHF style text

PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------------
# Rows and field validation
# --------------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One raw row and where it came from."""

    data: dict[str, Any]
    source: str

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, source=self.source, field=field)


@dataclass
class _Parsed:
    """What a row format extracts from a row; the loader adds annotator, metadata and source."""

    prompt: Text
    responses: list[Text]
    ranking: list[int] | None = None
    labels: list[bool] | None = None
    scores: dict[str, list[float]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class _Unsplittable(DataError):
    """chosen == rejected in a text pair without a prompt: no prompt can be extracted from it."""


def _prompt(row: _Row, key: str = "prompt") -> Text:
    return parse_prompt(row.data[key], key, row.source)


def _response(row: _Row, key: str, value: Any, prompt: Text) -> Text:
    if value == [] or (isinstance(value, str) and is_blank(value)):
        raise row.error("empty response", key)
    response = parse_text(value, key, row.source)
    if isinstance(response, list) != isinstance(prompt, list):
        styles = ("a list of messages", "a string")
        raise row.error(f"prompt is {styles[isinstance(prompt, str)]} but {key} is "
                        f"{styles[isinstance(response, str)]}; prompt and responses must both be text or both "
                        "conversational", key)
    if isinstance(response, list):
        if response[0]["role"] != "assistant" or any(m["role"] not in RESPONSE_ROLES for m in response):
            roles = ", ".join(m["role"] for m in response)
            raise row.error(f"a conversational response must start with an assistant message and hold only "
                            f"assistant/tool messages, got roles [{roles}]", key)
    if not has_visible_text(response):
        raise row.error("empty response", key)
    return response


def _number(row: _Row, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise row.error(f"expected a number, got {type_name(value)}", key)
    problem = score_problem(value)
    if problem:
        raise row.error(problem, key)
    return float(value)


def _boolean(row: _Row, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise row.error(f"expected true or false, got {type_name(value)} {value!r}", key)
    return value


def _list(row: _Row, key: str, value: Any, length: int | None = None, what: str = "values") -> list[Any]:
    if not isinstance(value, list):
        raise row.error(f"expected a list, got {type_name(value)}", key)
    if not value:
        raise row.error("empty list", key)
    if length is not None and len(value) != length:
        raise row.error(f"{len(value)} {what} for {length} responses", key)
    return value


# --------------------------------------------------------------------------------------------------
# Row formats
# --------------------------------------------------------------------------------------------------


def _pair_scores(row: _Row) -> dict[str, list[float]] | None:
    keys = ("score_chosen", "score_rejected")
    present = [k for k in keys if row.data.get(k) is not None]
    if not present:
        return None
    if len(present) == 1:
        missing = keys[1 - keys.index(present[0])]
        raise row.error(f"missing; {present[0]} needs {missing} as well", missing)
    return {"score": [_number(row, k, row.data[k]) for k in keys]}


def _starts_conversation(value: Any) -> bool:
    """A whole conversation (starting with a system/user turn) rather than an assistant response."""
    return (isinstance(value, list) and bool(value) and isinstance(value[0], dict)
            and value[0].get("role") in ("system", "user"))


def _parse_pairwise(row: _Row) -> _Parsed:
    if isinstance(row.data["prompt"], str) and _starts_conversation(row.data["chosen"]):
        parsed = _parse_implicit(row)  # text prompt + whole conversations (ultrafeedback_binarized layout)
        parsed.metadata["prompt_text"] = row.data["prompt"]
        return parsed
    prompt = _prompt(row)
    chosen = _response(row, "chosen", row.data["chosen"], prompt)
    rejected = _response(row, "rejected", row.data["rejected"], prompt)
    return _Parsed(prompt, [chosen, rejected], ranking=[0, 1], scores=_pair_scores(row))


def _turn_boundary(chosen: str, rejected: str, cut: int) -> int | None:
    """The end of the last ``\\n\\nAssistant:`` marker in the shared prefix ``chosen[:cut]`` (HH-RLHF style text), when
    both texts hold only that final assistant turn after it; else None.

    The longest common prefix of two HH answers runs into the answers whenever they start alike ("I'm sorry" /
    "I can't": the prefix ends "Assistant: I"), so the prompt is cut at the turn marker instead, as the data's own
    turn structure says and as TRL's HH script does."""
    start = chosen.rfind(TURN_MARKER, 0, cut)
    if start < 0:
        return None
    end = start + len(TURN_MARKER)
    if any(HUMAN_MARKER in text[end:] for text in (chosen, rejected)):
        return None  # a later human turn differs: not a final-answer split
    return end


def _split_text(row: _Row, chosen: str, rejected: str) -> tuple[str, list[str]]:
    if chosen == rejected:
        raise _Unsplittable("chosen equals rejected and there is no 'prompt' field to split them by",
                            source=row.source, field="chosen")
    cut = len(os.path.commonprefix([chosen, rejected]))
    boundary = _turn_boundary(chosen, rejected, cut)
    if boundary is not None and boundary < min(len(chosen), len(rejected)):
        return chosen[:boundary], [chosen[boundary:], rejected[boundary:]]
    ends = any(cut == len(t) for t in (chosen, rejected))  # one text is a prefix of the other
    mid_word = cut > 0 and chosen[cut - 1].isalnum() and any(cut < len(t) and t[cut].isalnum()
                                                             for t in (chosen, rejected))
    if ends or mid_word:  # cut back to the last whitespace so no response is empty or starts mid-word
        while cut and not chosen[cut - 1].isspace():
            cut -= 1
    while cut and chosen[cut - 1] == " ":  # leading spaces belong to the responses
        cut -= 1
    prompt = chosen[:cut]
    if not prompt.strip():
        raise row.error("text pairs need a prompt: add a 'prompt' field, or give chosen and rejected a shared "
                        "non-empty start (the prompt)", "prompt")
    return prompt, [chosen[cut:], rejected[cut:]]


def _response_start(conversation: list[Message]) -> int:
    """Index where the trailing run of assistant/tool messages starts."""
    i = len(conversation)
    while i and conversation[i - 1]["role"] in RESPONSE_ROLES:
        i -= 1
    return i


def _split_conversations(row: _Row, chosen: list[Message], rejected: list[Message]
                         ) -> tuple[list[Message], list[list[Message]]]:
    pairs = zip(chosen, rejected, strict=False)
    cut = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(chosen), len(rejected)))
    if cut in (len(chosen), len(rejected)) or (cut and chosen[cut - 1]["role"] == "assistant"):
        # the shared part runs into the responses: start them at the shared trailing assistant/tool turns
        start = _response_start(chosen[:cut])
        if all(m["role"] in RESPONSE_ROLES for m in chosen[start:] + rejected[start:]):
            cut = start
    prompt = chosen[:cut]
    if not prompt:
        raise row.error("chosen and rejected share no leading messages, so there is no prompt; add a 'prompt' "
                        "field or start both with the same prompt messages", "chosen")
    if prompt[-1]["role"] == "assistant":
        raise row.error(f"chosen and rejected share messages 0-{cut - 1}, which end with an assistant message; the "
                        "shared prompt must end with a non-assistant message", "chosen")
    return prompt, [chosen[cut:], rejected[cut:]]


def _parse_implicit(row: _Row) -> _Parsed:
    chosen = parse_text(row.data["chosen"], "chosen", row.source)
    rejected = parse_text(row.data["rejected"], "rejected", row.source)
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt, responses = _split_text(row, chosen, rejected)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, responses = _split_conversations(row, chosen, rejected)
    else:
        raise row.error("chosen and rejected must both be text or both lists of messages", "rejected")
    checked = [_response(row, key, r, prompt) for key, r in zip(("chosen", "rejected"), responses, strict=True)]
    return _Parsed(prompt, checked, ranking=[0, 1], scores=_pair_scores(row))


def _parse_unpaired(row: _Row) -> _Parsed:
    prompt = _prompt(row)
    completion = _response(row, "completion", row.data["completion"], prompt)
    return _Parsed(prompt, [completion], labels=[_boolean(row, "label", row.data["label"])])


def _parse_negative(row: _Row) -> _Parsed:
    prompt = _prompt(row)
    return _Parsed(prompt, [_response(row, "rejected", row.data["rejected"], prompt)], labels=[False])


def _parse_prompt_completion(row: _Row) -> _Parsed:
    prompt = _prompt(row)
    return _Parsed(prompt, [_response(row, "completion", row.data["completion"], prompt)])


def _parse_conversation(row: _Row) -> _Parsed:
    messages = parse_messages(row.data["messages"], "messages", row.source)
    if messages[-1]["role"] != "assistant":
        raise row.error("a conversation must end with an assistant message (the response)", "messages")
    prompt = messages[:-1]
    if not prompt:
        raise row.error("a conversation needs at least one message before the last assistant message", "messages")
    check_prompt(prompt, "messages", row.source)
    return _Parsed(prompt, [_response(row, f"messages[{len(prompt)}]", messages[-1:], prompt)])


def _parse_text(row: _Row) -> _Parsed:
    text = row.data["text"]
    if not isinstance(text, str):
        raise row.error(f"expected a string, got {type_name(text)}", "text")
    if is_blank(text):
        raise row.error("empty text", "text")
    return _Parsed("", [text])


def _ranking(row: _Row, k: int) -> list[int]:
    ranking = _list(row, "ranking", row.data["ranking"])
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ranking):
        raise row.error(f"expected a list of response indices (ints), got {ranking!r}", "ranking")
    if len(set(ranking)) != len(ranking) or any(not 0 <= i < k for i in ranking):
        raise row.error(f"ranking {ranking} is not a list of distinct indices < {k}", "ranking")
    return list(ranking)


def _score_list(row: _Row, key: str, value: Any, k: int) -> list[float]:
    values = _list(row, key, value, k, "scores")
    return [_number(row, key, v) for v in values]


def _scores(row: _Row, k: int) -> tuple[dict[str, list[float]], bool]:
    """Scores and whether they came as a plain list (which also gives a ranking)."""
    value = row.data["scores"]
    if isinstance(value, list):
        return {"score": _score_list(row, "scores", value, k)}, True
    if isinstance(value, dict) and value:
        return {str(name): _score_list(row, f"scores.{name}", v, k) for name, v in value.items()}, False
    raise row.error(f"expected a list of numbers or a non-empty object name -> list of numbers, got "
                    f"{type_name(value)}", "scores")


def _rank_by_score(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable: ties keep file order


def _parse_listwise(row: _Row) -> _Parsed:
    prompt = _prompt(row)
    raw = _list(row, "responses", row.data["responses"])
    responses = [_response(row, f"responses[{i}]", r, prompt) for i, r in enumerate(raw)]
    k = len(responses)
    parsed = _Parsed(prompt, responses)
    if "ranking" in row.data:
        parsed.ranking = _ranking(row, k)
    if "labels" in row.data:
        labels = _list(row, "labels", row.data["labels"], k, "labels")
        parsed.labels = [_boolean(row, "labels", v) for v in labels]
    if "scores" in row.data:
        parsed.scores, plain = _scores(row, k)
        if plain and parsed.ranking is None:
            parsed.ranking = _rank_by_score(parsed.scores["score"])
    return parsed


@dataclass(frozen=True)
class RowFormat:
    """A row layout: the keys that identify it and how it becomes a record."""

    name: str
    required: tuple[str, ...]
    parse: Callable[[_Row], _Parsed] = field(repr=False)
    optional: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()      # at least one of these must be present
    forbidden: tuple[str, ...] = ()   # keys that mean another format

    @property
    def consumed(self) -> frozenset[str]:
        return frozenset(self.required + self.optional + self.one_of)

    def matches(self, keys: set[str]) -> bool:
        return (set(self.required) <= keys and not keys & set(self.forbidden)
                and (not self.one_of or bool(keys & set(self.one_of))))

    def describe(self) -> str:
        text = "{" + ", ".join(self.required) + "}"
        if self.one_of:
            text += " + one of " + ", ".join(self.one_of)
        if self.optional:
            text += " [optional " + ", ".join(self.optional) + "]"
        return f"{self.name} {text}"


_PAIR_SCORES = ("score_chosen", "score_rejected")

#: Row formats in detection order; the first whose keys match a row is used.
ROW_FORMATS: tuple[RowFormat, ...] = (
    RowFormat("pairwise", ("prompt", "chosen", "rejected"), _parse_pairwise, optional=_PAIR_SCORES),
    RowFormat("pairwise (implicit prompt)", ("chosen", "rejected"), _parse_implicit, optional=_PAIR_SCORES,
              forbidden=("prompt",)),
    RowFormat("listwise", ("prompt", "responses"), _parse_listwise, one_of=("ranking", "scores", "labels")),
    RowFormat("unpaired", ("prompt", "completion", "label"), _parse_unpaired),
    RowFormat("negatives", ("prompt", "rejected"), _parse_negative, forbidden=("chosen",)),
    RowFormat("prompt-completion", ("prompt", "completion"), _parse_prompt_completion, forbidden=("label",)),
    RowFormat("conversation", ("messages",), _parse_conversation),
    RowFormat("text", ("text",), _parse_text),
)
_FORMAT_KEYS = frozenset().union(*(f.consumed for f in ROW_FORMATS))


def _detect_keys(keys: set[str]) -> RowFormat | None:
    return next((f for f in ROW_FORMATS if f.matches(keys)), None)


def _detect(row: _Row) -> RowFormat:
    keys = set(row.data)
    fmt = _detect_keys(keys)
    if fmt is None:
        raise _mismatch_error(row, keys)
    return fmt


def _mismatch_error(row: _Row, keys: set[str]) -> DataError:
    """The format a row most resembles, and what it lacks; or the list of all formats."""

    def closeness(index: int) -> tuple[int, int, int]:
        f = ROW_FORMATS[index]
        distinctive = (set(f.required) | set(f.one_of)) - {"prompt"}
        return -len(keys & distinctive), len(set(f.required) - keys), index

    candidates = [i for i, f in enumerate(ROW_FORMATS) if not keys & set(f.forbidden)]
    best = min(candidates, key=closeness)
    if closeness(best)[0] == 0:
        accepted = "; ".join(f.describe() for f in ROW_FORMATS)
        return row.error(f"unrecognised row format (keys: {', '.join(sorted(keys)) or 'none'}); accepted formats: "
                         f"{accepted}")
    fmt = ROW_FORMATS[best]
    missing = [k for k in fmt.required if k not in keys]
    needs = ", ".join(fmt.required) + (" and one of " + ", ".join(fmt.one_of) if fmt.one_of else "")
    if missing:
        return row.error(f"missing field {', '.join(repr(m) for m in missing)}: format '{fmt.name}' needs {needs}",
                         missing[0])
    return row.error(f"missing field: format '{fmt.name}' needs {needs}", fmt.one_of[0])


# --------------------------------------------------------------------------------------------------
# Rows to records
# --------------------------------------------------------------------------------------------------


def _annotator(row: _Row) -> tuple[str | None, str | None]:
    """The annotator value as a string and the key it came from."""
    for key in ANNOTATOR_KEYS:
        value = row.data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise row.error(f"expected a string or an int, got {type_name(value)}", key)
        return str(value), key
    return None, None


def _build(fmt: RowFormat, row: _Row) -> PreferenceRecord:
    parsed = fmt.parse(row)
    annotator, used = _annotator(row)
    skip = fmt.consumed | {used}
    metadata = {k: v for k, v in row.data.items() if k not in skip and not (k in ANNOTATOR_KEYS and v is None)}
    return PreferenceRecord(prompt=parsed.prompt, responses=parsed.responses, ranking=parsed.ranking,
                            labels=parsed.labels, scores=parsed.scores, annotator=annotator,
                            metadata={**parsed.metadata, **metadata}, source=row.source)


def _style(record: PreferenceRecord) -> str:
    return "conversational" if isinstance(record.prompt, list) else "text"


@dataclass
class _FormatGuard:
    """Rejects a file whose rows change format or style part-way."""

    first: tuple[str, str] | None = None
    first_source: str = ""

    def check_format(self, fmt: RowFormat, source: str) -> None:
        if self.first is not None and fmt.name != self.first[0]:
            raise DataError(f"row format changed: this row is '{fmt.name}' but earlier rows are '{self.first[0]}' "
                            f"(first at {self.first_source}); a file must use one format", source=source)

    def check_style(self, fmt: RowFormat, record: PreferenceRecord) -> None:
        style = _style(record)
        if self.first is None:
            self.first, self.first_source = (fmt.name, style), record.source
        elif style != self.first[1]:
            raise DataError(f"row format changed: this row is {style} but earlier rows are {self.first[1]} "
                            f"(first at {self.first_source}); a file must use one style", source=record.source)


def _record_key(record: PreferenceRecord) -> str:
    return canonical_json([record.prompt, record.responses, record.ranking, record.labels, record.scores])


def _is_identical_pair(record: PreferenceRecord) -> bool:
    return record.kind == "pairs" and record.chosen == record.rejected


def _has_repeated_responses(record: PreferenceRecord) -> bool:
    if len(record.responses) == 2:  # the common case, without serialising
        return record.responses[0] == record.responses[1]
    keys = [canonical_json(r) for r in record.responses]
    return len(set(keys)) != len(keys)


def load_records(path: PathLike, *, split: str = "train", drop_identical: bool = True,
                 on_invalid: OnInvalid = "error") -> tuple[list[PreferenceRecord], DataReport]:
    """Read preference data from ``path`` (see the module docstring for files and formats).

    ``split`` picks the split of a saved ``DatasetDict`` (and the list key of a JSON object, or the file of a
    directory, that is named after it). ``drop_identical`` drops pairs whose chosen equals rejected (counted in
    ``report.dropped``); when false they are kept and counted in ``report.anomalies``. Raises
    :class:`DataError` for bad input and ``FileNotFoundError`` when ``path`` does not exist.

    ``on_invalid="skip"`` (``data.on_invalid``) leaves out rows that are invalid on their own (a JSON Lines line that
    does not parse, a row of no or another format, a bad field such as an empty final turn) instead of raising: each
    is counted in ``report.dropped`` under ``invalid: <field>: <what is wrong>`` with its first places in
    ``report.examples``, so real data with a few broken rows loads and the run says which. Problems of the whole
    file (unreadable, not JSON, no rows left) are errors either way; ``"error"``, the default, keeps every error.
    """
    report = DataReport()
    records: list[PreferenceRecord] = []
    guard = _FormatGuard()
    seen: set[str] = set()
    n_rows = 0

    def skip_line(error: DataError) -> None:  # a line the reader could not parse: a row that yields no value
        nonlocal n_rows
        n_rows += 1
        report.drop(error.reason, error.source or str(path))

    for source, value in _read_rows(Path(path), split, skip_line if on_invalid == "skip" else None):
        n_rows += 1
        try:
            record = _row_record(value, source, guard)
        except _Unsplittable:
            if not drop_identical:
                raise
            report.drop(IDENTICAL, source)
            continue
        except DataError as error:
            if on_invalid != "skip":
                raise
            report.drop(error.reason, source)
            continue
        if _is_identical_pair(record):
            if report.identical_pair(IDENTICAL, source, drop=drop_identical):
                continue
        elif _has_repeated_responses(record):
            report.anomaly("identical_responses", source)
        key = _record_key(record)
        if key in seen:
            report.anomaly("duplicate", source)
        seen.add(key)
        records.append(record)
    _check_not_empty(path, n_rows, records, report)
    report.loaded = len(records)
    return records, report


def _row_record(value: Any, source: str, guard: _FormatGuard) -> PreferenceRecord:
    """One row's record; raises the row's DataError."""
    if not isinstance(value, dict):
        raise DataError(f"expected an object per row, got {type_name(value)}", source=source)
    row = _Row(value, source)
    fmt = _detect(row)
    guard.check_format(fmt, source)
    record = _build(fmt, row)
    guard.check_style(fmt, record)
    return record


def _check_not_empty(path: PathLike, n_rows: int, records: list[PreferenceRecord], report: DataReport) -> None:
    if n_rows == 0:
        raise DataError("no records: the data is empty", source=str(path))
    if not records:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.dropped.items()))
        raise DataError(f"no records left: all {n_rows} rows were dropped ({reasons})", source=str(path))


# --------------------------------------------------------------------------------------------------
# Files to rows
# --------------------------------------------------------------------------------------------------

Rows = Iterator[tuple[str, Any]]


def _read_jsonl(path: Path, split: str, on_error: OnError | None = None) -> Rows:
    return jsonl_rows(read_bytes(path), str(path), on_error)


def _looks_like_jsonl(text: str) -> bool:
    """A ``.json`` file whose first line is a complete record on its own holds JSON Lines."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        value = loads(first)
    except (json.JSONDecodeError, JSONValueError):
        return False
    return isinstance(value, dict) and bool(set(value) & _FORMAT_KEYS)


def _json_records(doc: Any, name: str, split: str) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, dict):
        raise DataError(f"expected a list of records, got {type_name(doc)}", source=name)
    if set(doc) & _FORMAT_KEYS:
        raise DataError("the top-level object looks like a single record; put the records in a list",
                        source=name)
    if isinstance(doc.get(split), list):
        return doc[split]
    lists = [k for k, v in doc.items() if isinstance(v, list)]
    if len(lists) == 1:
        return doc[lists[0]]
    raise DataError(f"expected a list of records, or an object holding one list of records such as "
                    f'{{"data": [...]}}; found keys {sorted(doc)} and no list named {split!r}', source=name)


def _json_value_error(error: JSONValueError, name: str) -> DataError:
    """Place a refused value of a ``.json`` document: its line (nesting), ``record N`` and field when the document is
    a list of records, else the field's whole path."""
    if error.line is not None:
        return DataError(error.message, source=f"{name}:{error.line}")
    if error.path and isinstance(error.path[0], int):
        return DataError(error.message, source=f"{name}:record {error.path[0] + 1}", field=field_name(error.path[1:]))
    return DataError(error.message, source=name, field=error.field)


def _read_json(path: Path, split: str, on_error: OnError | None = None) -> Rows:
    name, data = str(path), read_bytes(path)
    body = data[len(BOM):] if data.startswith(BOM) else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        raise DataError(f"not valid UTF-8: byte 0x{body[e.start]:02x} at byte offset {e.start}; save the file as "
                        "UTF-8", source=f"{name}:{line}") from None
    try:
        doc = loads(text)
    except JSONValueError as e:
        raise _json_value_error(e, name) from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and _looks_like_jsonl(text):
            return jsonl_rows(data, name, on_error)
        message = "unexpected data after the JSON value (trailing garbage)" if e.msg == "Extra data" else e.msg
        raise DataError(f"invalid JSON: {message} (line {e.lineno} column {e.colno})",
                        source=f"{name}:{e.lineno}") from None
    records = _json_records(doc, name, split)
    return ((f"{name}:record {i}", row) for i, row in enumerate(records, 1))


def _columnar(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet / Arrow rows: null cells are absent keys; pandas index columns are dropped."""
    return {k: v for k, v in row.items() if v is not None and not k.startswith("__index_level_")}


def _one_line(error: BaseException) -> str:
    """A library's error message on one line (Arrow's end in newlines and may span several)."""
    return " ".join(str(error).split())


def _read_parquet(path: Path, split: str, on_error: OnError | None = None) -> Rows:
    import pyarrow as pa

    try:
        yield from _parquet_rows(path)
    except (pa.ArrowException, OSError) as e:  # a bad footer, or a corrupt page met part-way through
        raise DataError(f"cannot read Parquet file: {_one_line(e)}", source=str(path)) from None


def _parquet_rows(path: Path) -> Rows:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise DataError(f"column {repeated!r} appears more than once; each column may appear once",
                        source=str(path), field=repeated)
    i = 0
    for batch in file.iter_batches():
        for row in batch.to_pylist():
            i += 1
            yield f"{path}:row {i}", _columnar(row)


def _is_saved_dataset(path: Path) -> bool:
    return any((path / name).exists() for name in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _read_saved_dataset(path: Path, split: str) -> Rows:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load the saved dataset: {_one_line(e)}", source=str(path)) from None
    name = str(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"split {split!r} not found; available splits: {', '.join(ds)}", source=name)
        ds, name = ds[split], str(path / split)
    return ((f"{name}:row {i}", _columnar(row)) for i, row in enumerate(ds, 1))


def _read_directory(path: Path, split: str, on_error: OnError | None = None) -> Rows:
    if _is_saved_dataset(path):
        return _read_saved_dataset(path, split)
    files = sorted(p for p in path.iterdir() if p.is_file() and data_suffix(p) in _READERS)
    named = [p for p in files if (Path(p.stem).stem if p.suffix.lower() in COMPRESSIONS else p.stem) == split]
    if len(files) == 1 or len(named) == 1:
        return _read_rows(files[0] if len(files) == 1 else named[0], split, on_error)
    shards = [p for p in files if p.name.startswith(f"{split}-")]  # the hub's train-00000-of-00002.parquet
    if shards:
        return (row for shard in shards for row in _read_rows(shard, split, on_error))
    found = ", ".join(p.name for p in files) or "none"
    raise DataError(f"a data directory must be saved by datasets.save_to_disk or hold exactly one data file "
                    f"(or one named {split}.*, or shards {split}-*); data files found: {found}", source=str(path))


# (path, split, what to do with an invalid line: None raises) -> rows
_READERS: dict[str, Callable[[Path, str, OnError | None], Rows]] = {
    ".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet,
}
ACCEPTED_EXTENSIONS = tuple(_READERS)


def _read_rows(path: Path, split: str, on_error: OnError | None = None) -> Rows:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        return _read_directory(path, split, on_error)
    suffix = data_suffix(path)
    reader = _READERS.get(suffix)
    compressed = path.suffix.lower() in COMPRESSIONS
    if reader is None or (compressed and reader is _read_parquet):
        kind = suffix + path.suffix.lower() if compressed else path.suffix or "(none)"
        raise DataError(f"unknown file type {kind!r}; accepted: {', '.join(ACCEPTED_EXTENSIONS)} (JSON and JSON Lines "
                        f"also compressed: {', '.join(COMPRESSIONS)}), or a directory saved by datasets.save_to_disk",
                        source=str(path))
    return reader(path, split, on_error)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _format_named(name: str) -> RowFormat:
    return next(f for f in ROW_FORMATS if f.name == name)


def _listwise_row(record: PreferenceRecord) -> dict[str, Any]:
    r, scores = record, record.scores or {}
    if r.ranking is None and r.labels is None and not scores:
        k = len(r.responses)
        raise DataError(f"record has {k} response{'s' * (k != 1)} but no ranking, labels or scores; only the "
                        "prompt-completion and text formats hold it, one response each", source=r.source)
    row = {"prompt": r.prompt, "responses": list(r.responses)}
    if r.ranking is not None:
        row["ranking"] = list(r.ranking)
    if r.labels is not None:
        row["labels"] = list(r.labels)
    if scores:
        plain = r.ranking is not None and set(scores) == {"score"}
        row["scores"] = list(scores["score"]) if plain else {k: list(v) for k, v in scores.items()}
    return row


def _supervision_row(record: PreferenceRecord) -> tuple[str, dict[str, Any]]:
    """The most specific format that holds the record exactly, and the record's fields in it."""
    r, scores = record, record.scores or {}
    if len(r.responses) == 2 and r.ranking == [0, 1] and r.labels is None and set(scores) <= {"score"}:
        row = {"prompt": r.prompt, "chosen": r.responses[0], "rejected": r.responses[1]}
        if scores:
            row["score_chosen"], row["score_rejected"] = scores["score"]
        return "pairwise", row
    if len(r.responses) == 1 and r.ranking is None and not scores:
        if r.labels is not None:
            return "unpaired", {"prompt": r.prompt, "completion": r.responses[0], "label": r.labels[0]}
        if r.prompt == "" and isinstance(r.responses[0], str):
            return "text", {"text": r.responses[0]}
        return "prompt-completion", {"prompt": r.prompt, "completion": r.responses[0]}
    return "listwise", _listwise_row(r)


def _with_extras(record: PreferenceRecord, name: str, row: dict[str, Any]) -> dict[str, Any]:
    """Add annotator and metadata, making sure the row still reads back as format ``name``."""
    if record.annotator is not None:
        row["annotator"] = record.annotator
    for key, value in record.metadata.items():
        if key in row:
            raise DataError(f"metadata key {key!r} clashes with a '{name}' format field", source=record.source,
                            field=key)
        row[key] = value
    detected = _detect_keys(set(row))
    if detected is None or detected.name != name:
        other = detected.name if detected else "no format"
        raise DataError(f"metadata keys {sorted(record.metadata)} would make this '{name}' row read as {other}",
                        source=record.source)
    return row


def record_to_dict(record: PreferenceRecord) -> dict[str, Any]:
    """The record as a row in the TRL-style format matching its kind, with annotator and metadata keys."""
    return _with_extras(record, *_supervision_row(record))


def _rows_for_file(records: list[PreferenceRecord]) -> list[dict[str, Any]]:
    """Rows in one format and one style, as :func:`load_records` requires of a file."""
    styles = {_style(r) for r in records}
    if len(styles) > 1:
        raise DataError("cannot save text and conversational records in one file; save them separately",
                        source=records[0].source)
    named = [_supervision_row(r) for r in records]
    if len({name for name, _ in named}) <= 1:
        return [_with_extras(r, name, row) for r, (name, row) in zip(records, named, strict=True)]
    return [_with_extras(r, "listwise", _listwise_row(r)) for r in records]  # the one format that holds all


def save_records(records: Iterable[PreferenceRecord], path: PathLike) -> Path:
    """Write records as JSON Lines (atomically) that :func:`load_records` reads back; returns ``path``.

    Each row uses the format :func:`record_to_dict` picks; when the records need different formats, every row
    is written in the listwise format (which holds any record with a ranking, labels or scores), since a file
    must use one format. Raises :class:`DataError`, before writing anything, for records that cannot share a
    file (text with conversational, or unsupervised SFT records with others).
    """
    records = list(records)
    rows = _rows_for_file(records) if records else []
    write_jsonl(path, rows)
    return Path(path)
