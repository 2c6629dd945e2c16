"""Malformed data files: each ends in one DataError naming the file, the line (where there is one) and the field —
never a Python traceback, never accepted silently. Training data and prompt files share one reader and one validator,
so they accept and refuse the same things."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from shared.rows import assistant, system, user, write_json, write_jsonl

from alignkit.cli import main
from alignkit.data.formats import load_records
from alignkit.data.prompts import load_prompt_rows
from alignkit.data.records import DataError, PreferenceRecord

GOOD = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
GOOD_LINE = json.dumps(GOOD)
DEEP = "[" * 100_000 + "]" * 100_000
LONG_INT = "9" * 5000


def chat(prompt: list[dict[str, Any]], chosen: Any = "4", rejected: Any = "5") -> dict[str, Any]:
    return {"prompt": prompt, "chosen": [assistant(chosen)], "rejected": [assistant(rejected)]}


def write_after_a_good_line(path: Path, line: str) -> Path:
    """``line`` as line 2, after a good row of the same format (a file must use one format)."""
    good = ({"text": "hello"} if line.startswith('{"text"') else
            {"messages": [user("q"), assistant("a")]} if line.startswith('{"messages"') else
            {"prompt": "q", "completion": "a", "label": True} if '"completion"' in line else GOOD)
    path.write_text(json.dumps(good) + "\n" + line + "\n", encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_records(path)
    return str(info.value)


def assert_names(message: str, path: Path, line: int | str | None, field: str | None, text: str) -> None:
    where = str(path) if line is None else f"{path}:{line}"
    named = f"{where} field '{field}'" if field else where
    assert message.startswith(f"{named}: "), message
    assert text in message and "\n" not in message, message


# ------------------------------------------------------------------------------------------------ JSON Lines
# id -> (second line of a .jsonl file after a good first line, field, expected text)
JSONL_CASES: dict[str, tuple[str, str | None, str]] = {
    "deep array": ('{"prompt": "q", "chosen": ' + DEEP + ', "rejected": "b"}', None, "nested too deeply"),
    "deep row": (DEEP, None, "nested too deeply"),
    "5000-digit score": ('{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": ' + LONG_INT
                         + ', "score_rejected": 1}', "score_chosen", "integer with 5000 digits is too long"),
    "5000-digit ranking index": ('{"prompt": "q", "responses": ["a", "b"], "ranking": [0, ' + LONG_INT + "]}",
                                 "ranking[1]", "integer with 5000 digits"),
    "400-digit score": ('{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": ' + "9" * 400
                        + ', "score_rejected": 1}', "score_chosen", "too large for a float"),
    "lone surrogate in a response": ('{"prompt": "q", "chosen": "a\\ud800", "rejected": "b"}', "chosen",
                                     "invalid unicode: lone surrogate \\ud800"),
    "lone low surrogate in a prompt message": (json.dumps(chat([user("q")])).replace('"q"', '"q\\udc00"'),
                                               "prompt[0].content", "invalid unicode: lone surrogate"),
    "lone surrogate in a key": ('{"prompt": "q", "chosen": "a", "rejected": "b", "x\\ud83d": 1}', "x\\ud83d",
                                "lone surrogate"),
    "duplicate key": ('{"prompt": "q", "chosen": "a", "chosen": "c", "rejected": "b"}', "chosen",
                      "duplicate key 'chosen'"),
    "duplicate key in a message": ('{"prompt": [{"role": "user", "role": "system", "content": "q"}], '
                                   '"chosen": [{"role": "assistant", "content": "a"}], '
                                   '"rejected": [{"role": "assistant", "content": "b"}]}', "prompt[0].role",
                                   "duplicate key 'role'"),
    "image content part": (json.dumps(chat([{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image", "url": "cat.png"}]}])),
        "prompt[0].content[1]", "content part of type 'image': alignkit trains text-only models"),
    "content part without text": (json.dumps(chat([{"role": "user", "content": [{"type": "text", "text": 3}]}])),
                                  "prompt[0].content[0].text", "expected a string, got int"),
    "zero-width response": ('{"prompt": "q", "chosen": "\\u200b\\u200c\\u200d\\ufeff\\u2060", "rejected": "b"}',
                            "chosen", "empty response"),
    "zero-width completion": ('{"prompt": "q", "completion": " \\u200b ", "label": true}', "completion",
                              "empty response"),
    "zero-width assistant message": (json.dumps(chat([user("q")], chosen="\u200b\u2060")), "chosen",
                                     "empty response"),
    "zero-width text": ('{"text": "\\u200b"}', "text", "empty text"),
    "zero-width prompt": ('{"prompt": "\\u200b", "chosen": "a", "rejected": "b"}', "prompt", "empty prompt"),
    "blank conversational prompt": (json.dumps(chat([system(" "), user("\u200b")])), "prompt", "empty prompt"),
    "assistant, assistant, user": (json.dumps({"messages": [user("q"), assistant("a"), assistant("b"), user("c"),
                                                            assistant("d")]}),
                                   "messages[2].role", "two assistant messages in a row"),
    "two assistants in a response": (json.dumps({"prompt": [user("q")], "chosen": [assistant("a"), assistant("b")],
                                                 "rejected": [assistant("c")]}),
                                     "chosen[1].role", "two assistant messages in a row"),
    "conversation prompt ending on an assistant turn": (json.dumps(chat([user("q"), assistant("a")])), "prompt",
                                                        "must end with a non-assistant message"),
    "null line": ("null", None, "expected an object per row, got null"),
    "number where a message is expected": (json.dumps(chat([3])), "prompt[0]",
                                           "expected a message object with 'role' and 'content', got int"),
    "response that is an object": ('{"prompt": "q", "chosen": {"text": "a"}, "rejected": "b"}', "chosen",
                                   "got object"),
    "label 'yes'": ('{"prompt": "q", "completion": "a", "label": "yes"}', "label", "expected true or false"),
    "NaN score": ('{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": NaN, "score_rejected": 1}',
                  "score_chosen", "not a finite number"),
    "1e999 score": ('{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 1, "score_rejected": -1e999}',
                    "score_rejected", "score -inf is not a finite number"),
}


@pytest.mark.parametrize("case", JSONL_CASES)
def test_malformed_jsonl_line_names_file_line_and_field(tmp_path: Path, case: str) -> None:
    line, field, text = JSONL_CASES[case]
    path = write_after_a_good_line(tmp_path / "data.jsonl", line)
    assert_names(load_error(path), path, 2, field, text)


def test_text_content_parts_are_joined_into_plain_text(tmp_path: Path) -> None:
    """The TRL / HF text parts keep loading, as plain strings: text-only chat templates would render the list."""
    parts = [{"type": "text", "text": "2+2"}, {"type": "text", "text": "?"}]
    path = write_jsonl(tmp_path / "data.jsonl", [chat([{"role": "user", "content": parts}])])
    (record,), _ = load_records(path)
    assert record.prompt == [user("2+2?")]


def test_negative_and_fractional_scores_are_fine(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{**GOOD, "score_chosen": -0.5, "score_rejected": -3}])
    (record,), _ = load_records(path)
    assert record.scores == {"score": [-0.5, -3.0]}


def test_surrogate_pairs_and_escaped_backslashes_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "q \\ud83d\\ude00", "chosen": "\\\\ud800", "rejected": "b"}\n')
    (record,), _ = load_records(path)
    assert (record.prompt, record.chosen) == ("q \U0001F600", "\\ud800")


def test_in_memory_record_with_an_int_too_large_for_a_float() -> None:
    with pytest.raises(DataError, match=r"x\.jsonl:3 field 's': score \(an integer with 400 digits\) is too large"):
        PreferenceRecord(prompt="p", responses=["a", "b"], scores={"s": [10 ** 399, 1]}, source="x.jsonl:3")


# ------------------------------------------------------------------------------------------------ JSON files
def test_deep_json_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("[\n" + GOOD_LINE + ",\n" + DEEP + "\n]\n")
    assert_names(load_error(path), path, 3, None, "JSON nested too deeply: arrays/objects 100001 levels deep")


@pytest.mark.parametrize("record, field, text", [
    ('{"prompt": "q", "chosen": "a", "chosen": "c", "rejected": "b"}', "chosen", "duplicate key 'chosen'"),
    ('{"prompt": "q", "chosen": "a", "rejected": "\\udfff"}', "rejected", "lone surrogate \\udfff"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": ' + LONG_INT + ', "score_rejected": 1}',
     "score_chosen", "5000 digits"),
])
def test_json_file_names_record_and_field(tmp_path: Path, record: str, field: str, text: str) -> None:
    path = tmp_path / "data.json"
    path.write_text(f"[{GOOD_LINE},\n {record}]")
    assert_names(load_error(path), path, "record 2", field, text)


def test_json_file_with_splits_names_the_whole_path(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"train": [' + GOOD_LINE + ', {"prompt": "q", "prompt": "r", "chosen": "a", "rejected": "b"}]}')
    assert_names(load_error(path), path, None, "train[1].prompt", "duplicate key 'prompt'")


@pytest.mark.parametrize("content, text", [("3", "expected a list of records, got int"),
                                           ("null", "expected a list of records, got null"),
                                           ('"text"', "expected a list of records, got string")])
def test_json_file_holding_a_scalar(tmp_path: Path, content: str, text: str) -> None:
    path = tmp_path / "data.json"
    path.write_text(content)
    assert_names(load_error(path), path, None, None, text)


# ------------------------------------------------------------------------------------------------ Parquet
def test_parquet_with_a_repeated_column(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    columns = [pa.array(["q"]), pa.array(["a"]), pa.array(["c"]), pa.array(["b"])]
    pq.write_table(pa.Table.from_arrays(columns, names=["prompt", "chosen", "chosen", "rejected"]), path)
    assert_names(load_error(path), path, None, "chosen", "column 'chosen' appears more than once")


def test_parquet_with_a_corrupt_page_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": ["q"] * 100, "chosen": ["a"] * 100, "rejected": ["b"] * 100}), path)
    data = bytearray(path.read_bytes())
    data[4:60] = b"\xab" * 56  # the first page header, after the magic bytes
    path.write_bytes(bytes(data))
    assert_names(load_error(path), path, None, None, "cannot read Parquet file: ")


@pytest.mark.parametrize("column, field, text", [
    (pa.array([b"a"]), "chosen", "expected a string or a list of messages, got bytes"),
    (pa.array([[1, 2]]), "chosen[0]", "expected a message object with 'role' and 'content', got int"),
    (pa.array([{"text": "a"}]), "chosen", "expected a string or a list of messages, got object"),
])
def test_parquet_with_wrong_column_types(tmp_path: Path, column: pa.Array, field: str, text: str) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": ["q"], "chosen": column, "rejected": ["b"]}), path)
    assert_names(load_error(path), path, "row 1", field, text)


def test_parquet_timestamp_in_a_message_is_kept(tmp_path: Path) -> None:
    """Values JSON lacks used to crash the duplicate check (json.dumps); they are kept as they are."""
    import datetime

    at = datetime.datetime(2024, 1, 1)
    rows = [chat([{"role": "user", "content": "q", "at": at}]), chat([{"role": "user", "content": "q", "at": at}])]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    records, report = load_records(path)
    assert records[0].prompt[0]["at"] == at and report.anomalies["duplicate"] == 1
    assert [row.prompt for row in load_prompt_rows(path)] == [records[0].prompt]


# ------------------------------------------------------------------------------------------------ prompt files
# id -> (prompt value, whether it is refused, field, expected text) — checked in training data and prompt files alike
PROMPT_CASES: dict[str, tuple[Any, bool, str | None, str]] = {
    "role wizard": ([{"role": "wizard", "content": "q"}], True, "prompt[0].role", "unknown role 'wizard'"),
    "whitespace prompt": (" \t ", True, "prompt", "empty prompt"),
    "zero-width prompt": ("\u200b\ufeff", True, "prompt", "empty prompt"),
    "blank messages": ([user("  ")], True, "prompt", "empty prompt"),
    "ends on an assistant turn": ([user("q"), assistant("a")], True, "prompt", "must end with a non-assistant"),
    "two assistants": ([user("q"), assistant("a"), assistant("b"), user("c")], True, "prompt[2].role",
                       "two assistant messages in a row"),
    "number as a message": ([3], True, "prompt[0]", "expected a message object"),
    "image part": ([{"role": "user", "content": [{"type": "image"}]}], True, "prompt[0].content[0]", "text-only"),
    "U+2028 inside a string": ("line\u2028break", False, None, ""),
}


@pytest.mark.parametrize("kind", ["data", "prompts"])
@pytest.mark.parametrize("case", PROMPT_CASES)
def test_one_validator_for_training_data_and_prompt_files(tmp_path: Path, case: str, kind: str) -> None:
    prompt, refused, field, text = PROMPT_CASES[case]
    row = {"prompt": prompt, "chosen": "a", "rejected": "b"} if isinstance(prompt, str) else chat(prompt)
    path = tmp_path / "data.jsonl"
    path.write_text(GOOD_LINE + "\n" + json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    load = load_records if kind == "data" else load_prompt_rows
    if not refused:
        assert len(load(path)[0] if kind == "data" else load(path)) == 2
        return
    with pytest.raises(DataError) as info:
        load(path)
    assert_names(str(info.value), path, 2, field, text)


@pytest.mark.parametrize("kind", ["data", "prompts"])
def test_utf8_bom_at_the_start_is_tolerated_everywhere(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_LINE.encode() + b"\n")
    rows = load_records(path)[0] if kind == "data" else load_prompt_rows(path)
    assert rows[0].prompt == "2+2?"


@pytest.mark.parametrize("content, line, text", [
    (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', 2, "not valid UTF-8: byte 0xe9"),
    (b'{"prompt": "ok"}\n[1, 2, 3]\n', 2, "expected an object with a 'prompt' per row, got list"),
    (b'{"prompt": "ok"}\n{"prompt": "a", "prompt": "b"}\n', 2, "duplicate key 'prompt'"),
    (b'{"prompt": "ok"}\n' + DEEP.encode() + b"\n", 2, "nested too deeply"),
    (b'{"prompt": "ok"}\n{"prompt": "\\ud800"}\n', 2, "lone surrogate"),
    (b'{"prompt": "ok"}\n{"prompt": "q", "seed": ' + LONG_INT.encode() + b"}\n", 2, "5000 digits"),
])
def test_bad_prompt_file_names_file_and_line(tmp_path: Path, content: bytes, line: int, text: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_prompt_rows(path)
    assert f"{path}:{line}" in str(info.value) and text in str(info.value)


def test_prompt_file_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.mkdir()
    with pytest.raises(DataError) as info:
        load_prompt_rows(path)
    assert_names(str(info.value), path, None, None, "cannot read the file: is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_prompt_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "q"}\n')
    path.chmod(0)
    with pytest.raises(DataError) as info:
        load_prompt_rows(path)
    assert_names(str(info.value), path, None, None, "cannot read the file: permission denied")


def test_unreadable_data_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root no mode makes a file unreadable, so the read itself fails here, as it would for another user."""
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD])

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert_names(load_error(path), path, None, None, "cannot read the file: permission denied")


# ------------------------------------------------------------------------------------------------ alignkit train
def write_config(tiny_world: Path, data: Path, tmp_path: Path) -> Path:
    config = {"recipe": "preference", "loss": "dpo", "model": {"path": str(tiny_world / "base")},
              "data": {"path": str(data), "max_length": 64, "max_prompt_length": 32},
              "output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2, "progress": False}
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("case", ["deep array", "5000-digit score", "lone surrogate in a response",
                                  "duplicate key", "image content part", "zero-width response",
                                  "assistant, assistant, user"])
def test_train_on_malformed_data_exits_2_with_one_line(tiny_world: Path, tmp_path: Path, capsys, case: str) -> None:
    line, field, text = JSONL_CASES[case]
    data = write_after_a_good_line(tmp_path / "bad.jsonl", line)
    assert main(["train", "--config", str(write_config(tiny_world, data, tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alignkit: error: "), err
    assert f"{data}:2" in err and text in err and (field is None or f"field '{field}'" in err)


def test_train_on_a_json_file_nested_too_deeply_exits_2(tiny_world: Path, tmp_path: Path, capsys) -> None:
    data = write_json(tmp_path / "bad.json", [GOOD])
    data.write_text(data.read_text()[:-1] + ", " + DEEP + "]")
    assert main(["train", "--config", str(write_config(tiny_world, data, tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}:" in err and "nested too deeply" in err
