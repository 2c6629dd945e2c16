"""Warnings for data the model cannot take as given (position limit, no EOS) and nonexistent local paths that must
never be tried as hub ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from alignkit.config import ConfigError, TrainConfig
from alignkit.models import loading
from alignkit.models.loading import check_data_path, check_local, looks_local, position_limit, warn_data_limits


def tokenizer(eos: str | None) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "a": 2, "[UNK]": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="[UNK]", eos_token=eos)


def model_dir(tmp_path: Path, **config: object) -> str:
    directory = tmp_path / "model"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    return str(directory)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(loading, "_WARNED", set())


def test_max_length_past_the_position_limit_warns_once(tmp_path: Path, capsys) -> None:
    path = model_dir(tmp_path, max_position_embeddings=512)
    for _ in range(3):  # training and held-out data: one warning
        warn_data_limits(path, tokenizer("</s>"), 1024)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("alignkit: warning: data.max_length=1024 exceeds the model's position limit (512")
    warn_data_limits(path, tokenizer("</s>"), 512)
    assert capsys.readouterr().err == ""


def test_position_limit_names(tmp_path: Path) -> None:
    assert position_limit(model_dir(tmp_path, n_positions=128)) == 128
    assert position_limit(model_dir(tmp_path, text_config={"max_position_embeddings": 64})) == 64
    assert position_limit(str(tmp_path / "missing")) is None
    assert position_limit("org/hub-model") is None


def test_tokenizer_without_eos_warns(tmp_path: Path, capsys) -> None:
    path = model_dir(tmp_path, max_position_embeddings=512)
    warn_data_limits(path, tokenizer(None), 256)
    warn_data_limits(path, tokenizer(None), 256)
    (line,) = capsys.readouterr().err.splitlines()
    assert "has no EOS token" in line


@pytest.mark.parametrize("name", ["./missing-model", "../missing-model", "data/train.jsonl", "train.jsonl.gz",
                                  "runs/a/model", "weights.safetensors"])
def test_names_that_cannot_be_hub_ids_are_local(name: str) -> None:
    assert looks_local(name)


@pytest.mark.parametrize("name", ["gpt2", "Qwen/Qwen2.5-0.5B", "org/model-v1.0"])
def test_hub_ids_stay_hub_ids(name: str) -> None:
    assert not looks_local(name)


def test_nonexistent_local_paths_are_one_line_naming_the_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^model\.path: data/model\.safetensors does not exist$"):
        check_local("data/model.safetensors", "model.path")
    with pytest.raises(ConfigError, match=r"^data\.path: my-data/train\.jsonl does not exist$"):
        check_data_path("my-data/train.jsonl", "data.path")
    check_data_path("org/some-dataset", "data.path")  # could be a hub dataset: not refused here


def test_training_data_loader_checks_data_path(tmp_path: Path, monkeypatch) -> None:
    from alignkit.recipes.common.data import load_training_records

    monkeypatch.chdir(tmp_path)
    config = TrainConfig()
    config.data.path = "data/pairs.jsonl"
    with pytest.raises(ConfigError, match=r"^data\.path: data/pairs\.jsonl does not exist$"):
        load_training_records(config, lambda records, report: records)


def test_tokenizing_training_data_warns_about_the_limit(tmp_path: Path, capsys) -> None:
    from alignkit.data.records import DataReport, PreferenceRecord
    from alignkit.recipes.common.data import tokenize_dataset

    config = TrainConfig()
    config.model.path, config.data.max_length, config.data.max_prompt_length = model_dir(
        tmp_path, max_position_embeddings=8), 16, 4
    (item,) = tokenize_dataset(config, tokenizer("</s>"), [PreferenceRecord(prompt="a", responses=[" a"])],
                               DataReport())
    assert "data.max_length=16 exceeds the model's position limit (8" in capsys.readouterr().err
