"""Where data comes from: compressed files, invalid rows skipped on request, dataset directories, mixed files."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path
from typing import Any

import pytest

from alignkit.data.formats import load_records
from alignkit.data.prompts import load_prompt_rows
from alignkit.data.records import DataError

COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


def pair(i: int) -> dict[str, str]:
    return {"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}


def jsonl_text(rows: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------------ compressed files
@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_compressed_jsonl_and_json_read_like_plain_files(tmp_path: Path, suffix: str) -> None:
    rows = [pair(i) for i in range(3)]
    (tmp_path / f"a.jsonl{suffix}").write_bytes(COMPRESSORS[suffix](jsonl_text(rows).encode()))
    (tmp_path / f"b.json{suffix}").write_bytes(COMPRESSORS[suffix](json.dumps(rows).encode()))
    for name in (f"a.jsonl{suffix}", f"b.json{suffix}"):
        records, report = load_records(tmp_path / name)
        assert [r.prompt for r in records] == [f"question {i}?" for i in range(3)]
        assert report.loaded == 3


def test_compressed_file_errors_name_the_uncompressed_line(tmp_path: Path) -> None:
    bad = jsonl_text([pair(0)]) + "\n" + json.dumps({"prompt": "q", "chosen": 5, "rejected": "r"}) + "\n"
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(bad.encode()))
    with pytest.raises(DataError, match=r"d\.jsonl\.gz:3 field 'chosen'"):
        load_records(path)


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_corrupt_or_truncated_compressed_file_is_one_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d.jsonl{suffix}"
    path.write_bytes(COMPRESSORS[suffix](jsonl_text([pair(i) for i in range(50)]).encode())[:40])
    with pytest.raises(DataError, match=rf"d\.jsonl{suffix}: cannot decompress the file"):
        load_records(path)
    path.write_bytes(b"not compressed at all")
    with pytest.raises(DataError, match=rf"d\.jsonl{suffix}: cannot decompress the file"):
        load_records(path)


def test_compressed_parquet_and_unknown_inner_type_are_refused(tmp_path: Path) -> None:
    for name in ("d.parquet.gz", "d.csv.gz"):
        (tmp_path / name).write_bytes(gzip.compress(b"x"))
        with pytest.raises(DataError, match=rf"unknown file type '\.{name.split('.')[1]}\.gz'"):
            load_records(tmp_path / name)


def test_compressed_prompt_file_and_directory(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl.gz").write_bytes(gzip.compress(jsonl_text([{"prompt": "hi"}, {"prompt": "yo"}])
                                                              .encode()))
    assert [r.prompt for r in load_prompt_rows(tmp_path / "prompts.jsonl.gz")] == ["hi", "yo"]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl.gz").write_bytes(gzip.compress(jsonl_text([pair(1)]).encode()))
    (folder / "test.jsonl.gz").write_bytes(gzip.compress(jsonl_text([pair(2)]).encode()))
    records, _ = load_records(folder, split="test")
    assert records[0].prompt == "question 2?"


# ------------------------------------------------------------------------------------------------ data.on_invalid
def test_invalid_rows_are_an_error_by_default(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(jsonl_text([pair(0), pair(1), {**pair(2), "rejected": ""}]))
    with pytest.raises(DataError, match=r"d\.jsonl:3 field 'rejected': empty response"):
        load_records(path)


def test_skip_leaves_out_invalid_rows_counted_by_reason_with_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(jsonl_text([pair(i) for i in range(4)]) + "{not json\n" + jsonl_text([["a list"], pair(9)])
                    + jsonl_text([{**pair(7), "rejected": ""}, {**pair(8), "chosen": " "}]))
    records, report = load_records(path, on_invalid="skip")
    assert [r.prompt for r in records] == ["question 0?", "question 1?", "question 2?", "question 3?",
                                           "question 9?"]
    assert report.loaded == 5
    assert dict(report.dropped) == {"invalid: rejected: empty response": 1, "invalid: chosen: empty response": 1,
                                    "invalid: invalid JSON: Expecting property name enclosed in double quotes "
                                    "(column 2)": 1, "invalid: expected an object per row, got list": 1}
    assert report.examples["invalid: rejected: empty response"] == [f"{path}:8"]
    assert f"invalid: expected an object per row, got list=1 (first at {path}:6)" in report.summary()
    assert report.as_dict()["dropped"]["invalid: chosen: empty response"] == 1


def test_skip_groups_one_problem_under_one_reason_and_lists_its_first_lines(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a" if i % 3
                                                                  else ""}]} for i in range(1, 13)]
    path = tmp_path / "chat.jsonl"
    path.write_text(jsonl_text(rows))
    records, report = load_records(path, on_invalid="skip")
    assert len(records) == 8
    (reason,) = report.dropped
    assert report.dropped[reason] == 4 and reason.startswith("invalid: messages[]")
    assert report.examples[reason] == [f"{path}:{n}" for n in (3, 6, 9, 12)]


def test_skip_still_refuses_a_file_with_no_valid_row(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(jsonl_text([{**pair(0), "chosen": ""}, {**pair(1), "chosen": ""}]))
    with pytest.raises(DataError, match=r"all 2 rows were dropped \(invalid: chosen: empty response=2\)"):
        load_records(path, on_invalid="skip")


def test_prompt_files_skip_invalid_rows_with_one_warning(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(jsonl_text([{"prompt": "a"}, {"prompt": ""}, {"question": "b"}, {"prompt": "c"}]))
    with pytest.raises(DataError, match=r"p\.jsonl:2 field 'prompt'"):
        load_prompt_rows(path)
    assert [r.prompt for r in load_prompt_rows(path, "skip")] == ["a", "c"]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("alignkit: warning: ") and f"{path}:2" in line and f"{path}:3" in line
    data = tmp_path / "pairs.json"  # a preference data file: its prompts, read by load_records
    data.write_text(json.dumps([pair(0), {**pair(1), "chosen": ""}]))
    assert [r.prompt for r in load_prompt_rows(data, "skip")] == ["question 0?"]
    assert f"{data}:record 2" in capsys.readouterr().err


def test_on_invalid_is_a_data_setting_passed_to_the_loaders(tmp_path: Path) -> None:
    from alignkit.config import TrainConfig
    from alignkit.recipes.common.data import load_training_records

    path = tmp_path / "d.jsonl"
    path.write_text(jsonl_text([pair(0), {**pair(1), "chosen": ""}]))
    config = TrainConfig()
    config.data.path, config.data.on_invalid = str(path), "skip"
    records, report = load_training_records(config, lambda records, report: records)
    assert len(records) == 1 and sum(report.dropped.values()) == 1


# ------------------------------------------------------------------------------------------------ dataset directories
def test_directory_of_split_shards_reads_every_shard_in_order(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hub-layout"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([pair(0), pair(1)]), folder / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([pair(2)]), folder / "train-00001-of-00002.parquet")
    (folder / "test-00000-of-00001.jsonl").write_text(jsonl_text([pair(9)]))
    records, report = load_records(folder)
    assert [r.prompt for r in records] == ["question 0?", "question 1?", "question 2?"]
    assert records[2].source == f"{folder / 'train-00001-of-00002.parquet'}:row 1"
    test, _ = load_records(folder, split="test")
    assert [r.prompt for r in test] == ["question 9?"]
    with pytest.raises(DataError, match="or shards validation-\\*"):
        load_records(folder, split="validation")


def test_saved_dataset_directory_reads_its_split(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([pair(0), pair(1)]),
                          "test": datasets.Dataset.from_list([pair(5)])}).save_to_disk(str(folder))
    records, _ = load_records(folder, split="test")
    assert [r.prompt for r in records] == ["question 5?"]
    assert records[0].source == f"{folder / 'test'}:row 1"
