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
