"""Preference-data loaders and writers: every TRL format in every container, every bad input, round trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignkit.data.formats import ROW_FORMATS, load_records, record_to_dict, save_records
from alignkit.data.records import DataError, PreferenceRecord
from shared.rows import assistant, system, user, write_json, write_jsonl


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def all_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every key of every row (missing ones null), as a columnar file stores them."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in keys} for r in rows]


def write_parquet(path: Path, rows: list[Any]) -> Path:
    pq.write_table(pa.Table.from_pylist(all_columns(rows)), path)
    return path


def write_dataset(path: Path, rows: list[Any]) -> Path:
    import datasets

    datasets.Dataset.from_list(all_columns(rows)).save_to_disk(str(path))
    return path


# container name -> (file name, writer, source of record n)
CONTAINERS: dict[str, tuple[str, Callable[[Path, list[Any]], Path], Callable[[Path, int], str]]] = {
    "jsonl": ("data.jsonl", write_jsonl, lambda p, n: f"{p}:{n}"),
    "json": ("data.json", write_json, lambda p, n: f"{p}:record {n}"),
    "parquet": ("data.parquet", write_parquet, lambda p, n: f"{p}:row {n}"),
    "dataset": ("saved_ds", write_dataset, lambda p, n: f"{p}:row {n}"),
}


def write(tmp_path: Path, container: str, rows: list[Any]) -> tuple[Path, Callable[[int], str]]:
    name, writer, source = CONTAINERS[container]
    path = writer(tmp_path / name, rows)
    return path, lambda n: source(path, n)


def load_jsonl(tmp_path: Path, rows: list[Any], **kw: Any):
    return load_records(write_jsonl(tmp_path / "data.jsonl", rows), **kw)


def error_of(tmp_path: Path, rows: list[Any], name: str = "data.jsonl") -> str:
    path = write_jsonl(tmp_path / name, rows)
    with pytest.raises(DataError) as info:
        load_records(path)
    return str(info.value)


def raw_error(tmp_path: Path, content: bytes | str, name: str = "data.jsonl") -> DataError:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    with pytest.raises(DataError) as info:
        load_records(path)
    return info.value


def no_source(records: list[PreferenceRecord]) -> list[PreferenceRecord]:
    return [dataclasses.replace(r, source="") for r in records]


# ------------------------------------------------------------------------------------------------
# every format in every container
# ------------------------------------------------------------------------------------------------

Q_MSGS = [system("be brief"), user("2+2?")]

# name -> (rows, expected records without source); rows in one case share one schema (Parquet needs that)
FORMAT_CASES: dict[str, tuple[list[dict[str, Any]], list[PreferenceRecord]]] = {
    "pairwise text": (
        [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
         {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "score_chosen": 9.5,
          "score_rejected": 2}],
        [PreferenceRecord.pair("2+2?", "4", "5"),
         PreferenceRecord.pair("Capital of France?", "Paris", "Lyon", scores={"score": [9.5, 2.0]})],
    ),
    "pairwise conversational": (
        [{"prompt": Q_MSGS, "chosen": [assistant("4")], "rejected": [assistant("5")]}],
        [PreferenceRecord.pair(Q_MSGS, [assistant("4")], [assistant("5")])],
    ),
    "pairwise implicit conversational": (
        [{"chosen": Q_MSGS + [assistant("4")], "rejected": Q_MSGS + [assistant("5")]},
         {"chosen": [user("hi"), assistant("hello"), user("2+2?"), assistant("4")],
          "rejected": [user("hi"), assistant("hello"), user("2+2?"), assistant("22")]}],
        [PreferenceRecord.pair(Q_MSGS, [assistant("4")], [assistant("5")]),
         PreferenceRecord.pair([user("hi"), assistant("hello"), user("2+2?")], [assistant("4")],
                               [assistant("22")])],
    ),
    "pairwise implicit text": (
        [{"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"},
         {"chosen": "The answer is yes", "rejected": "The answer is yeah"}],
        [PreferenceRecord.pair("Q: 2+2? A:", " 4", " 5"),
         PreferenceRecord.pair("The answer is", " yes", " yeah")],
    ),
    "unpaired text": (
        [{"prompt": "2+2?", "completion": "4", "label": True},
         {"prompt": "2+2?", "completion": "5", "label": False}],
        [PreferenceRecord("2+2?", ["4"], labels=[True]), PreferenceRecord("2+2?", ["5"], labels=[False])],
    ),
    "unpaired conversational": (
        [{"prompt": [user("2+2?")], "completion": [assistant("4")], "label": True}],
        [PreferenceRecord([user("2+2?")], [[assistant("4")]], labels=[True])],
    ),
    "ranked": (
        [{"prompt": "2+2?", "responses": ["5", "4", "22"], "ranking": [1, 0, 2]}],
        [PreferenceRecord("2+2?", ["5", "4", "22"], ranking=[1, 0, 2])],
    ),
    "ranked from scores": (
        [{"prompt": "2+2?", "responses": ["5", "4", "22", "four"], "scores": [0.5, 2.0, -1.0, 2.0]}],
        [PreferenceRecord("2+2?", ["5", "4", "22", "four"], ranking=[1, 3, 0, 2],
                          scores={"score": [0.5, 2.0, -1.0, 2.0]})],
    ),
    "multi-objective scores": (
        [{"prompt": "2+2?", "responses": ["5", "4"], "scores": {"helpful": [0.1, 0.9], "harmless": [1.0, 1.0]}}],
        [PreferenceRecord("2+2?", ["5", "4"], scores={"helpful": [0.1, 0.9], "harmless": [1.0, 1.0]})],
    ),
    "multi-objective scores with ranking": (
        [{"prompt": "2+2?", "responses": ["5", "4"], "ranking": [1, 0],
          "scores": {"helpful": [0.1, 0.9], "harmless": [1.0, 1.0]}}],
        [PreferenceRecord("2+2?", ["5", "4"], ranking=[1, 0],
                          scores={"helpful": [0.1, 0.9], "harmless": [1.0, 1.0]})],
    ),
    "negatives": (
        [{"prompt": "2+2?", "rejected": "5"}],
        [PreferenceRecord("2+2?", ["5"], labels=[False])],
    ),
    "negatives list": (
        [{"prompt": "2+2?", "responses": ["5", "22"], "labels": [False, False]}],
        [PreferenceRecord("2+2?", ["5", "22"], labels=[False, False])],
    ),
    "prompt-completion text": (
        [{"prompt": "2+2?", "completion": "4"}],
        [PreferenceRecord("2+2?", ["4"])],
    ),
    "prompt-completion conversational": (
        [{"prompt": Q_MSGS, "completion": [assistant("4")]}],
        [PreferenceRecord(Q_MSGS, [[assistant("4")]])],
    ),
    "conversation": (
        [{"messages": [user("hi"), assistant("hello"), user("2+2?"), assistant("4")]}],
        [PreferenceRecord([user("hi"), assistant("hello"), user("2+2?")], [[assistant("4")]])],
    ),
    "text": (
        [{"text": "Once upon a time"}],
        [PreferenceRecord("", ["Once upon a time"])],
    ),
    "annotator, id and metadata": (
        [{"id": "a1", "prompt": "2+2?", "chosen": "4", "rejected": "5", "worker_id": 17, "lang": "en"}],
        [PreferenceRecord.pair("2+2?", "4", "5", annotator="17", metadata={"id": "a1", "lang": "en"})],
    ),
}


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_every_format_in_every_container(tmp_path: Path, container: str, case: str) -> None:
    rows, expected = FORMAT_CASES[case]
    path, source = write(tmp_path, container, rows)
    records, report = load_records(path)
    assert records == [dataclasses.replace(r, source=source(i)) for i, r in enumerate(expected, 1)]
    assert report.loaded == len(expected)
    assert not report.dropped and not report.anomalies


def test_kinds_of_loaded_records(tmp_path: Path) -> None:
    kinds = {case: [r.kind for r in load_jsonl(tmp_path, rows)[0]] for case, (rows, _) in FORMAT_CASES.items()}
    assert kinds["pairwise text"] == ["pairs", "pairs"]
    assert kinds["unpaired text"] == ["unpaired", "unpaired"]
    assert kinds["ranked"] == ["ranked"]
    assert kinds["multi-objective scores"] == ["scored"]
    assert kinds["negatives list"] == ["negatives"]
    assert kinds["prompt-completion text"] == ["sft"]
    assert kinds["conversation"] == ["sft"]
    assert kinds["text"] == ["sft"]


def test_annotator_keys_first_present_wins_rest_is_metadata(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "annotator_id": "ann-3", "group": "g"},
            {"prompt": "p", "chosen": "a", "rejected": "c", "group": 4, "annotator": None}]
    records, _ = load_jsonl(tmp_path, rows)
    assert [(r.annotator, r.metadata) for r in records] == [("ann-3", {"group": "g"}), ("4", {})]


def test_ultrafeedback_layout_text_prompt_with_whole_conversations(tmp_path: Path) -> None:
    rows = [{"prompt": "2+2?", "prompt_id": "x", "chosen": [user("2+2?"), assistant("4")],
             "rejected": [user("2+2?"), assistant("5")], "messages": [user("2+2?"), assistant("4")],
             "score_chosen": 8.0, "score_rejected": 3.0}]
    (record,), _ = load_jsonl(tmp_path, rows)
    assert record.prompt == [user("2+2?")]
    assert record.responses == [[assistant("4")], [assistant("5")]]
    assert record.scores == {"score": [8.0, 3.0]}
    assert record.metadata == {"prompt_text": "2+2?", "prompt_id": "x", "messages": [user("2+2?"), assistant("4")]}


def test_implicit_text_prefix_cut_back_to_whitespace_when_a_response_would_be_empty(tmp_path: Path) -> None:
    (record,), _ = load_jsonl(tmp_path, [{"chosen": "Q: hi A: yes", "rejected": "Q: hi A: yes please"}])
    assert (record.prompt, record.responses) == ("Q: hi A:", [" yes", " yes please"])


def test_implicit_conversation_prompt_stops_before_shared_assistant_turns(tmp_path: Path) -> None:
    more = [assistant("a"), {"role": "tool", "content": "t"}, assistant("more")]
    rows = [{"chosen": [user("q"), assistant("a")], "rejected": [user("q"), *more]},
            {"chosen": [user("q"), assistant("x"), {"role": "tool", "content": "4"}, assistant("4")],
             "rejected": [user("q"), assistant("x"), {"role": "tool", "content": "4"}, assistant("5")]}]
    records, _ = load_jsonl(tmp_path, rows)
    assert [(r.prompt, r.responses) for r in records] == [
        ([user("q")], [[assistant("a")], more]),
        ([user("q"), assistant("x"), {"role": "tool", "content": "4"}], [[assistant("4")], [assistant("5")]]),
    ]


def test_message_extra_keys_kept_and_nulls_dropped(tmp_path: Path) -> None:
    tool_call = [{"name": "calc", "arguments": "2+2"}]
    rows = [{"prompt": [user("2+2?")],
             "chosen": [{"role": "assistant", "content": "", "tool_calls": tool_call},
                        {"role": "tool", "content": "4", "name": "calc"}, assistant("4")],
             "rejected": [{"role": "assistant", "content": "5", "tool_calls": None}]}]
    (record,), _ = load_jsonl(tmp_path, rows)
    assert record.chosen == [{"role": "assistant", "content": "", "tool_calls": tool_call},
                             {"role": "tool", "content": "4", "name": "calc"}, assistant("4")]
    assert record.rejected == [assistant("5")]


def test_parquet_null_cells_are_absent_keys(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": None, "score_rejected": None,
             "annotator": None}]
    records, _ = load_records(write_parquet(tmp_path / "d.parquet", rows))
    assert records == [PreferenceRecord.pair("p", "a", "b", source=f"{tmp_path / 'd.parquet'}:row 1")]


def test_pandas_index_column_is_ignored(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame([{"prompt": "p", "completion": "c"}], index=[7]).to_parquet(path)
    records, _ = load_records(path)
    assert [(r.prompt, r.responses, r.metadata) for r in records] == [("p", ["c"], {})]


# ------------------------------------------------------------------------------------------------
# containers
# ------------------------------------------------------------------------------------------------

PAIR_ROWS = [{"prompt": "p1", "chosen": "a", "rejected": "b"}, {"prompt": "p2", "chosen": "c", "rejected": "d"}]


def test_json_object_with_one_list(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"version": 2, "data": PAIR_ROWS}))
    records, _ = load_records(path)
    assert [(r.prompt, r.source) for r in records] == [("p1", f"{path}:record 1"), ("p2", f"{path}:record 2")]


def test_json_object_with_splits_picks_split(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": PAIR_ROWS, "test": PAIR_ROWS[:1]}))
    assert [r.prompt for r in load_records(path, split="test")[0]] == ["p1"]
    assert [r.prompt for r in load_records(path)[0]] == ["p1", "p2"]
    with pytest.raises(DataError, match=r"d\.json.*no list named 'validation'"):
        load_records(path, split="validation")


def test_json_single_record_object_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(PAIR_ROWS[0]))
    with pytest.raises(DataError, match=r"d\.json: the top-level object looks like a single record"):
        load_records(path)


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.json", PAIR_ROWS)
    records, _ = load_records(path)
    assert [r.source for r in records] == [f"{path}:1", f"{path}:2"]


def test_jsonl_blank_lines_skipped_and_lines_are_physical(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + json.dumps(PAIR_ROWS[0]) + "\n   \n\r\n" + json.dumps(PAIR_ROWS[1]) + "\r\n\n")
    records, report = load_records(path)
    assert [r.source for r in records] == [f"{path}:2", f"{path}:5"]
    assert report.loaded == 2


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    for name, text in (("d.jsonl", json.dumps(PAIR_ROWS[0]) + "\n"), ("d.json", json.dumps(PAIR_ROWS))):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert load_records(path)[0][0].prompt == "p1"


def test_dataset_dict_picks_split(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIR_ROWS),
                          "test": datasets.Dataset.from_list(PAIR_ROWS[1:])}).save_to_disk(str(path))
    train, _ = load_records(path)
    test, _ = load_records(path, split="test")
    assert [(r.prompt, r.source) for r in train] == [("p1", f"{path / 'train'}:row 1"),
                                                     ("p2", f"{path / 'train'}:row 2")]
    assert [(r.prompt, r.source) for r in test] == [("p2", f"{path / 'test'}:row 1")]
    with pytest.raises(DataError) as info:
        load_records(path, split="validation")
    assert str(info.value) == f"{path}: split 'validation' not found; available splits: train, test"


def test_directory_with_one_data_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "only.jsonl", PAIR_ROWS)
    (tmp_path / "README.md").write_text("notes")
    records, _ = load_records(tmp_path)
    assert [r.source for r in records] == [f"{tmp_path / 'only.jsonl'}:1", f"{tmp_path / 'only.jsonl'}:2"]


def test_directory_with_split_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", PAIR_ROWS)
    write_jsonl(tmp_path / "test.jsonl", PAIR_ROWS[:1])
    assert len(load_records(tmp_path)[0]) == 2
    assert len(load_records(tmp_path, split="test")[0]) == 1
    with pytest.raises(DataError, match=r"data files found: test\.jsonl, train\.jsonl"):
        load_records(tmp_path, split="dev")


def test_unknown_extension(tmp_path: Path) -> None:
    err = raw_error(tmp_path, "prompt,chosen,rejected\n", name="data.csv")
    assert str(err) == (f"{tmp_path / 'data.csv'}: unknown file type '.csv'; accepted: .jsonl, .ndjson, .json, "
                        ".parquet (JSON and JSON Lines also compressed: .gz, .bz2, .xz), or a directory saved by "
                        "datasets.save_to_disk")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_records(tmp_path / "nope.jsonl")


def test_unreadable_parquet(tmp_path: Path) -> None:
    err = raw_error(tmp_path, b"not parquet at all", name="d.parquet")
    assert str(err).startswith(f"{tmp_path / 'd.parquet'}: cannot read Parquet file")


# ------------------------------------------------------------------------------------------------
# bad input: the message names the file, the line and the field
# ------------------------------------------------------------------------------------------------

GOOD = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def test_ill_typed_field_message_is_exact(tmp_path: Path) -> None:
    msg = error_of(tmp_path, [GOOD, {"prompt": "p", "chosen": 3, "rejected": "x"}])
    assert msg == f"{tmp_path / 'data.jsonl'}:2 field 'chosen': expected a string or a list of messages, got int"


@pytest.mark.parametrize("line, field, expected", [
    ({"prompt": "p", "chosen": "a"}, "rejected",
     "missing field 'rejected': format 'pairwise' needs prompt, chosen, rejected"),
    ({"chosen": "a"}, "rejected", "missing field 'rejected': format 'pairwise (implicit prompt)'"),
    ({"completion": "a", "label": True}, "prompt", "missing field 'prompt': format 'unpaired'"),
    ({"prompt": "p", "label": True}, "completion", "missing field 'completion': format 'unpaired'"),
    ({"completion": "a"}, "prompt", "missing field 'prompt': format 'prompt-completion'"),
    ({"responses": ["a", "b"], "ranking": [0, 1]}, "prompt", "missing field 'prompt': format 'listwise'"),
    ({"prompt": "p", "responses": ["a", "b"]}, "ranking",
     "format 'listwise' needs prompt, responses and one of ranking, scores, labels"),
    ({"prompt": None, "chosen": "a", "rejected": "b"}, "prompt", "expected a string or a list of messages, got null"),
    ({"prompt": "p", "chosen": "a", "rejected": {"text": "b"}}, "rejected", "got object"),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, "rejected", "empty response"),
    ({"prompt": "p", "chosen": " \n\t", "rejected": "b"}, "chosen", "empty response"),
    ({"prompt": "p", "chosen": [], "rejected": "b"}, "chosen", "empty response"),
    ({"prompt": [user("p")], "chosen": [assistant("  ")], "rejected": [assistant("b")]}, "chosen",
     "empty response"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "prompt", "empty prompt"),
    ({"prompt": [user("p")], "chosen": [{"content": "a"}], "rejected": [assistant("b")]}, "chosen[0].role",
     "message has no 'role'"),
    ({"prompt": [user("p")], "chosen": [{"role": "assistant"}], "rejected": [assistant("b")]},
     "chosen[0].content", "message has no 'content'"),
    ({"prompt": [user("p"), {"role": "human", "content": "x"}], "chosen": [assistant("a")],
      "rejected": [assistant("b")]}, "prompt[1].role",
     "unknown role 'human'; expected one of system, user, assistant, tool"),
    ({"prompt": [user("p")], "chosen": ["a"], "rejected": [assistant("b")]}, "chosen[0]",
     "expected a message object with 'role' and 'content', got string"),
    ({"prompt": [user("p")], "chosen": [assistant("a")], "rejected": [{"role": "user", "content": 5}]},
     "rejected[0].content", "expected a string or a list of content parts, got int"),
    ({"prompt": [user("p")], "chosen": [user("a")], "rejected": [assistant("b")]}, "chosen",
     "must start with an assistant message"),
    ({"prompt": [user("p"), assistant("x")], "chosen": [assistant("a")], "rejected": [assistant("b")]}, "prompt",
     "must end with a non-assistant message"),
    ({"prompt": [user("p")], "chosen": "a", "rejected": [assistant("b")]}, "chosen",
     "prompt is a list of messages but chosen is a string"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": float("nan"), "score_rejected": 1},
     "score_chosen", "score nan is not a finite number"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 1, "score_rejected": float("inf")},
     "score_rejected", "score inf is not a finite number"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": "high", "score_rejected": 1},
     "score_chosen", "expected a number, got string"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 1}, "score_rejected",
     "score_chosen needs score_rejected as well"),
    ({"prompt": "p", "completion": "a", "label": 1}, "label", "expected true or false, got int 1"),
    ({"prompt": "p", "completion": "a", "label": "true"}, "label", "expected true or false, got string 'true'"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]}, "ranking",
     "ranking [0, 2] is not a list of distinct indices < 2"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}, "ranking", "not a list of distinct indices"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": ["0", "1"]}, "ranking", "expected a list of response"),
    ({"prompt": "p", "responses": "a", "ranking": [0]}, "responses", "expected a list, got string"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0]}, "scores", "1 scores for 2 responses"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0, float("-inf")]}, "scores", "not a finite number"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": {"helpful": [1.0, None]}}, "scores.helpful",
     "expected a number, got null"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": "high"}, "scores", "expected a list of numbers"),
    ({"prompt": "p", "responses": ["a", "b"], "labels": [False]}, "labels", "1 labels for 2 responses"),
    ({"prompt": "p", "responses": ["a", "b"], "labels": [0, 0]}, "labels", "expected true or false"),
    ({"prompt": "p", "responses": ["a", ""], "labels": [False, False]}, "responses[1]", "empty response"),
    ({"prompt": "p", "rejected": 5}, "rejected", "got int"),
    ({"messages": [user("hi")]}, "messages", "must end with an assistant message"),
    ({"messages": [assistant("hi")]}, "messages", "needs at least one message before"),
    ({"messages": "hi"}, "messages", "expected a list of messages, got string"),
    ({"text": 5}, "text", "expected a string, got int"),
    ({"text": "   "}, "text", "empty text"),
    ({"chosen": "abc", "rejected": "xyz"}, "prompt", "text pairs need a prompt"),
    ({"chosen": "yes", "rejected": "yeah"}, "prompt", "text pairs need a prompt"),
    ({"chosen": [user("a"), assistant("b")], "rejected": [user("x"), assistant("b")]}, "chosen",
     "share no leading messages"),
    ({"chosen": [user("a"), assistant("b"), user("c"), assistant("d")],
      "rejected": [user("a"), assistant("b"), user("x"), assistant("d")]}, "chosen",
     "share messages 0-1, which end with an assistant message"),
    ({"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("b"), user("c"), assistant("d")]},
     "chosen", "share messages 0-1, which end with an assistant message"),
    ({"chosen": [user("a")], "rejected": [user("a"), assistant("b")]}, "chosen", "empty response"),
    ({"chosen": "text", "rejected": [user("a")]}, "rejected", "both be text or both lists of messages"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "worker_id": [1]}, "worker_id",
     "expected a string or an int, got list"),
])
def test_bad_row_names_file_line_and_field(tmp_path: Path, line: dict[str, Any], field: str, expected: str) -> None:
    msg = error_of(tmp_path, [GOOD, GOOD, line] if "chosen" in line and "prompt" in line else
                   [line, GOOD])
    line_no = 3 if "chosen" in line and "prompt" in line else 1
    assert msg.startswith(f"{tmp_path / 'data.jsonl'}:{line_no} field '{field}': ")
    assert expected in msg


def test_row_that_is_not_an_object(tmp_path: Path) -> None:
    msg = error_of(tmp_path, [GOOD, ["2+2?", "4", "5"]])
    assert msg == f"{tmp_path / 'data.jsonl'}:2: expected an object per row, got list"


def test_unknown_format_lists_every_format(tmp_path: Path) -> None:
    msg = error_of(tmp_path, [{"question": "2+2?", "answer": "4"}])
    assert msg.startswith(f"{tmp_path / 'data.jsonl'}:1: unrecognised row format (keys: answer, question); "
                          "accepted formats: ")
    for fmt in ROW_FORMATS:
        assert fmt.describe() in msg
    assert "pairwise {prompt, chosen, rejected} [optional score_chosen, score_rejected]" in msg
    assert "listwise {prompt, responses} + one of ranking, scores, labels" in msg
    assert "conversation {messages}" in msg and "text {text}" in msg and "unpaired {prompt, completion, label}" in msg


def test_malformed_json_line(tmp_path: Path) -> None:
    err = raw_error(tmp_path, json.dumps(GOOD) + '\n\n{"prompt": "p", "chosen": "a" "rejected": "b"}\n')
    assert str(err) == f"{tmp_path / 'data.jsonl'}:3: invalid JSON: Expecting ',' delimiter (column 31)"
    assert err.source == f"{tmp_path / 'data.jsonl'}:3"


def test_trailing_garbage_on_a_jsonl_line(tmp_path: Path) -> None:
    err = raw_error(tmp_path, json.dumps(GOOD) + " }\n")
    assert str(err) == f"{tmp_path / 'data.jsonl'}:1: invalid JSON: Extra data (column 52)"


def test_malformed_json_file(tmp_path: Path) -> None:
    err = raw_error(tmp_path, '[\n  {"prompt": "p",\n   "chosen": }\n]', name="d.json")
    assert str(err).startswith(f"{tmp_path / 'd.json'}:3: invalid JSON: Expecting value (line 3 column 14)")


def test_json_trailing_garbage(tmp_path: Path) -> None:
    err = raw_error(tmp_path, json.dumps([GOOD], indent=1) + "\noops", name="d.json")
    assert str(err) == (f"{tmp_path / 'd.json'}:8: invalid JSON: unexpected data after the JSON value "
                        "(trailing garbage) (line 8 column 1)")


def test_json_lines_in_json_file_report_their_line(tmp_path: Path) -> None:
    err = raw_error(tmp_path, json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{bad\n", name="d.json")
    assert str(err).startswith(f"{tmp_path / 'd.json'}:3: invalid JSON: ")


def test_json_error_names_record(tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", [GOOD, {"prompt": "p", "chosen": 1, "rejected": "b"}])
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value) == f"{path}:record 2 field 'chosen': expected a string or a list of messages, got int"


def test_json_not_a_list(tmp_path: Path) -> None:
    err = raw_error(tmp_path, "42", name="d.json")
    assert str(err) == f"{tmp_path / 'd.json'}: expected a list of records, got int"


def test_parquet_error_names_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", [GOOD, {"prompt": "p", "chosen": "a", "rejected": " "}])
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value) == f"{path}:row 2 field 'rejected': empty response"
    assert (info.value.source, info.value.field) == (f"{path}:row 2", "rejected")


def test_dataset_error_names_row(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "ds", [GOOD, GOOD, {"prompt": "p", "completion": "a", "label": None}])
    with pytest.raises(DataError) as info:
        load_records(path)
    # a null label cell is an absent key, so the row is a prompt-completion row among pairs
    assert str(info.value).startswith(f"{path}:row 3: row format changed: this row is 'prompt-completion' but "
                                      f"earlier rows are 'pairwise' (first at {path}:row 1)")


def test_non_utf8_jsonl(tmp_path: Path) -> None:
    good = (json.dumps(GOOD) + "\n").encode()
    err = raw_error(tmp_path, good + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    assert str(err) == (f"{tmp_path / 'data.jsonl'}:2: not valid UTF-8: byte 0xe9 at byte offset "
                        f"{len(good) + 15} (column 16); save the file as UTF-8")


def test_non_utf8_json(tmp_path: Path) -> None:
    err = raw_error(tmp_path, b'[\n {"prompt": "caf\xe9"}\n]', name="d.json")
    assert str(err) == f"{tmp_path / 'd.json'}:2: not valid UTF-8: byte 0xe9 at byte offset 18; save the file as UTF-8"


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("e.jsonl", "\n  \n\n"), ("e.json", "[]"),
                                           ("e.json", '{"data": []}')])
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    err = raw_error(tmp_path, content, name=name)
    assert str(err) == f"{tmp_path / name}: no records: the data is empty"


def test_empty_parquet(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "completion": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match=r"e\.parquet: no records"):
        load_records(path)


def test_format_change_names_the_line(tmp_path: Path) -> None:
    rows = [GOOD, GOOD, {"prompt": "p", "completion": "c", "label": True}]
    msg = error_of(tmp_path, rows)
    path = tmp_path / "data.jsonl"
    assert msg == (f"{path}:3: row format changed: this row is 'unpaired' but earlier rows are 'pairwise' "
                   f"(first at {path}:1); a file must use one format")


def test_style_change_names_the_line(tmp_path: Path) -> None:
    rows = [GOOD, {"prompt": [user("p")], "chosen": [assistant("a")], "rejected": [assistant("b")]}]
    msg = error_of(tmp_path, rows)
    path = tmp_path / "data.jsonl"
    assert msg == (f"{path}:2: row format changed: this row is conversational but earlier rows are text "
                   f"(first at {path}:1); a file must use one style")


def test_data_error_carries_source_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "chosen": "a", "rejected": 7}])
    with pytest.raises(DataError) as info:
        load_records(path)
    assert (info.value.source, info.value.field) == (f"{path}:1", "rejected")


# ------------------------------------------------------------------------------------------------
# anomalies
# ------------------------------------------------------------------------------------------------

IDENTICAL = {"prompt": "p", "chosen": "same", "rejected": "same"}


def test_identical_pair_dropped_by_default(tmp_path: Path) -> None:
    records, report = load_jsonl(tmp_path, [GOOD, IDENTICAL, GOOD])
    path = tmp_path / "data.jsonl"
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3"]
    assert report.loaded == 2
    assert dict(report.dropped) == {"chosen_equals_rejected": 1}
    assert dict(report.anomalies) == {"duplicate": 1}
    assert report.examples == {"chosen_equals_rejected": [f"{path}:2"], "duplicate": [f"{path}:3"]}


def test_identical_pair_kept_and_counted(tmp_path: Path) -> None:
    records, report = load_jsonl(tmp_path, [GOOD, IDENTICAL], drop_identical=False)
    assert [r.responses for r in records] == [["4", "5"], ["same", "same"]]
    assert report.loaded == 2
    assert not report.dropped
    assert dict(report.anomalies) == {"chosen_equals_rejected": 1}


def test_identical_pair_detected_in_listwise_and_conversations(tmp_path: Path) -> None:
    rows = [{"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a")]},
            {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}]
    records, report = load_jsonl(tmp_path, rows)
    assert len(records) == 1 and dict(report.dropped) == {"chosen_equals_rejected": 1}
    records, report = load_jsonl(tmp_path, rows, drop_identical=False)
    assert records[0].prompt == [user("q")] and records[0].responses == [[assistant("a")], [assistant("a")]]
    assert dict(report.anomalies) == {"chosen_equals_rejected": 1}
    rows = [{"prompt": "p", "responses": ["x", "x"], "ranking": [1, 0]},
            {"prompt": "p", "responses": ["x", "y", "x"], "ranking": [1, 0, 2]}]
    records, report = load_jsonl(tmp_path, rows)
    assert len(records) == 1
    assert (dict(report.dropped), dict(report.anomalies)) == ({"chosen_equals_rejected": 1},
                                                              {"identical_responses": 1})


def test_identical_implicit_text_pair(tmp_path: Path) -> None:
    rows = [{"chosen": "Q: a A: b", "rejected": "Q: a A: c"}, {"chosen": "Q: a A: b", "rejected": "Q: a A: b"}]
    records, report = load_jsonl(tmp_path, rows)
    assert len(records) == 1 and dict(report.dropped) == {"chosen_equals_rejected": 1}
    with pytest.raises(DataError, match=r"data\.jsonl:2 field 'chosen': chosen equals rejected and there is no"):
        load_jsonl(tmp_path, rows, drop_identical=False)


def test_all_rows_dropped_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_jsonl(tmp_path, [IDENTICAL, IDENTICAL])
    assert str(info.value) == (f"{tmp_path / 'data.jsonl'}: no records left: all 2 rows were dropped "
                               "(chosen_equals_rejected=2)")


def test_duplicates_kept_and_counted(tmp_path: Path) -> None:
    other_annotator = {**GOOD, "annotator": "x"}  # same prompt, responses and supervision: a duplicate
    different_scores = {**GOOD, "score_chosen": 1, "score_rejected": 0}  # different supervision: not one
    records, report = load_jsonl(tmp_path, [GOOD, GOOD, other_annotator, different_scores])
    assert report.loaded == len(records) == 4
    assert dict(report.anomalies) == {"duplicate": 2}
    assert report.examples["duplicate"] == [f"{tmp_path / 'data.jsonl'}:2", f"{tmp_path / 'data.jsonl'}:3"]
    assert report.summary() == "4 records loaded; anomalies: duplicate=2"


# ------------------------------------------------------------------------------------------------
# writing and round trips
# ------------------------------------------------------------------------------------------------

def test_record_to_dict_per_kind() -> None:
    assert record_to_dict(PreferenceRecord.pair("p", "a", "b", scores={"score": [1.0, 0.0]}, annotator="w",
                                                metadata={"id": 3})) == {
        "prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 1.0, "score_rejected": 0.0,
        "annotator": "w", "id": 3}
    assert record_to_dict(PreferenceRecord("p", ["a"], labels=[True])) == {"prompt": "p", "completion": "a",
                                                                           "label": True}
    assert record_to_dict(PreferenceRecord("p", ["a", "b", "c"], ranking=[2, 0, 1], scores={"score": [1, 2, 3]})) == {
        "prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "scores": [1, 2, 3]}
    assert record_to_dict(PreferenceRecord("p", ["a", "b"], scores={"h": [1, 2]})) == {
        "prompt": "p", "responses": ["a", "b"], "scores": {"h": [1, 2]}}
    assert record_to_dict(PreferenceRecord("p", ["a", "b"], scores={"score": [1, 2]})) == {
        "prompt": "p", "responses": ["a", "b"], "scores": {"score": [1, 2]}}
    assert record_to_dict(PreferenceRecord("p", ["a", "b"], labels=[False, False])) == {
        "prompt": "p", "responses": ["a", "b"], "labels": [False, False]}
    assert record_to_dict(PreferenceRecord("p", ["a"])) == {"prompt": "p", "completion": "a"}
    assert record_to_dict(PreferenceRecord("", ["a"])) == {"text": "a"}
    assert record_to_dict(PreferenceRecord("p", ["a", "b"], ranking=[1, 0])) == {
        "prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}


def test_record_to_dict_refuses_what_it_cannot_write() -> None:
    with pytest.raises(DataError, match="record has 2 responses but no ranking, labels or scores"):
        record_to_dict(PreferenceRecord("p", ["a", "b"]))
    with pytest.raises(DataError, match="metadata key 'chosen' clashes with a 'pairwise' format field"):
        record_to_dict(PreferenceRecord.pair("p", "a", "b", metadata={"chosen": "x"}))
    with pytest.raises(DataError, match="would make this 'listwise' row read as pairwise"):
        record_to_dict(PreferenceRecord("p", ["a", "b"], ranking=[1, 0], metadata={"chosen": "x", "rejected": "y"}))


ROUND_TRIP_RECORDS = [
    PreferenceRecord.pair("p", "a", "b"),
    PreferenceRecord.pair("p", "a", "c", scores={"score": [2.5, -1.0]}, annotator="ann", metadata={"id": 7}),
    PreferenceRecord("p", ["a"], labels=[True]),
    PreferenceRecord("p", ["b"], labels=[False]),
    PreferenceRecord("p", ["a", "b", "c"], ranking=[2, 0, 1]),
    PreferenceRecord("p", ["a", "b", "c"], ranking=[1, 0, 2], scores={"score": [0.0, 1.0, -1.0]}),
    PreferenceRecord("p", ["a", "b"], scores={"helpful": [0.1, 0.2], "harmless": [1.0, 0.0]}),
    PreferenceRecord("p", ["a", "b"], scores={"score": [0.1, 0.2]}),
    PreferenceRecord("p", ["a", "b"], ranking=[1, 0], scores={"helpful": [0.1, 0.2]}),
    PreferenceRecord("p", ["a", "b"], labels=[False, False]),
    PreferenceRecord("p", ["a", "b"], labels=[True, False]),
    PreferenceRecord("p", ["a"], metadata={"lang": "de", "tags": ["x"]}),
    PreferenceRecord("", ["free text"]),
]


@pytest.mark.parametrize("record", ROUND_TRIP_RECORDS, ids=lambda r: r.kind)
def test_round_trip_text(tmp_path: Path, record: PreferenceRecord) -> None:
    path = save_records([record], tmp_path / "out.jsonl")
    records, report = load_records(path)
    assert records == [dataclasses.replace(record, source=f"{path}:1")]
    assert report.loaded == 1


def test_round_trip_conversational(tmp_path: Path) -> None:
    prompt = [system("s"), user("q")]
    records = [PreferenceRecord.pair(prompt, [assistant("a")], [assistant("b")]),
               PreferenceRecord(prompt, [[assistant("a")], [assistant("b")], [assistant("c")]], ranking=[2, 1, 0]),
               PreferenceRecord(prompt, [[assistant("a")]], labels=[False])]
    path = save_records(records, tmp_path / "out.jsonl")
    assert no_source(load_records(path)[0]) == no_source(records)


@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_load_save_load(tmp_path: Path, case: str) -> None:
    first, _ = load_jsonl(tmp_path, FORMAT_CASES[case][0])
    again, _ = load_records(save_records(first, tmp_path / "again.jsonl"))
    assert no_source(again) == no_source(first)


def test_save_records_writes_jsonl_atomically_and_validates_first(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    assert save_records([PreferenceRecord.pair("p", "a", "b")], path) == path
    assert path.read_text() == '{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
    with pytest.raises(DataError):
        save_records([PreferenceRecord.pair("q", "a", "b"), PreferenceRecord("p", ["a", "b"])], path)
    assert path.read_text() == '{"prompt": "p", "chosen": "a", "rejected": "b"}\n'  # untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.jsonl"]


def test_save_records_of_mixed_kinds_writes_one_listwise_format(tmp_path: Path) -> None:
    records = [PreferenceRecord.pair("p", "a", "b", scores={"score": [1.0, 0.0]}),
               PreferenceRecord("p", ["a"], labels=[True], annotator="w"),
               PreferenceRecord("p", ["a", "b"], scores={"h": [1.0, 2.0]})]
    path = save_records(records, tmp_path / "mixed.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "scores": [1.0, 0.0]},
        {"prompt": "p", "responses": ["a"], "labels": [True], "annotator": "w"},
        {"prompt": "p", "responses": ["a", "b"], "scores": {"h": [1.0, 2.0]}},
    ]
    assert no_source(load_records(path)[0]) == no_source(records)


def test_save_records_refuses_files_that_would_not_load(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match="cannot save text and conversational records in one file"):
        save_records([PreferenceRecord.pair("p", "a", "b"),
                      PreferenceRecord.pair([user("p")], [assistant("a")], [assistant("b")])], path)
    with pytest.raises(DataError, match="record has 1 response but no ranking, labels or scores"):
        save_records([PreferenceRecord.pair("p", "a", "b"), PreferenceRecord("p", ["sft answer"])], path)
    assert not path.exists()
