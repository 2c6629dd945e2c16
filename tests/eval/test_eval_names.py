"""``alignkit eval --model [NAME=]PATH``: every model gets its own name; a model is never silently dropped or put in
the baseline's place."""

from __future__ import annotations

import json
import os

import pytest

from alignkit.cli import main
from alignkit.eval.evaluate import evaluate, model_names, parse_model_arg


def test_last_folder_names_a_model():
    assert model_names(["runs/dpo", "/abs/kto/"]) == {"dpo": "runs/dpo", "kto": "/abs/kto/"}


def test_models_in_folders_of_the_same_name_are_named_by_their_parents():
    assert model_names(["run1/model", "run2/model", "other"]) == {"run1": "run1/model", "run2": "run2/model",
                                                                  "other": "other"}
    assert model_names(["a/x/model", "b/x/model"]) == {"a/x": "a/x/model", "b/x": "b/x/model"}


def test_explicit_names_are_kept_and_paths_may_hold_equals_signs(tmp_path, monkeypatch):
    assert parse_model_arg("dpo=runs/dpo/model") == ("dpo", "runs/dpo/model")
    assert parse_model_arg("runs/lr=1e-5/model") == (None, "runs/lr=1e-5/model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr=1e-5").mkdir()
    assert parse_model_arg("lr=1e-5") == (None, "lr=1e-5")                 # an existing folder is a path
    assert model_names(["a=run1/model", "run2/model"]) == {"a": "run1/model", "model": "run2/model"}


@pytest.mark.parametrize("items, message", [
    (["m=run1/model", "m=run2/model"], "two models are named 'm' (run1/model and run2/model); give each model its "
                                       "own name with --model NAME=PATH"),
    (["runs/model", "runs/model"], "two models are named 'model' (runs/model and runs/model)"),
    (["run1=x/model", "run1/model", "run2/model"], "two models are named 'run1' (x/model and run1/model)"),
    (["baseline=runs/dpo"], "two models are named 'baseline' (runs/dpo and the baseline sft); give each model its "
                            "own name with --model NAME=PATH"),
    (["runs/baseline"], "two models are named 'baseline' (runs/baseline and the baseline sft)"),
])
def test_duplicate_names_are_an_error_naming_both_paths(items, message):
    with pytest.raises(ValueError) as info:
        model_names(items, baseline="sft")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_evaluate_refuses_a_model_named_like_the_baseline():
    with pytest.raises(ValueError, match=r"two models are named 'baseline' \(runs/dpo and the baseline sft\)"):
        evaluate({"baseline": "runs/dpo"}, "sft", ["a prompt"], judge=None)


def test_cli_duplicate_name_is_a_one_line_error(tiny_world, tmp_path, capsys):
    base = str(tiny_world / "base")
    code = main(["eval", "--model", f"baseline={base}", "--baseline", base, "--prompts",
                 str(tiny_world / "data" / "prompts_eval.jsonl"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == (f"alignkit: error: two models are named 'baseline' ({base} and the baseline {base}); give each "
                   "model its own name with --model NAME=PATH\n")
    assert list(tmp_path.iterdir()) == []


def test_cli_models_in_folders_named_alike_are_both_evaluated(tiny_world, tmp_path, capsys):
    base, out = tiny_world / "base", tmp_path / "rep"
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        os.symlink(base, tmp_path / run / "model")
    code = main(["eval", "--model", str(tmp_path / "run1" / "model"), "--model", str(tmp_path / "run2" / "model"),
                 "--baseline", str(base), "--prompts", str(tiny_world / "data" / "prompts_eval.jsonl"),
                 "--num-prompts", "2", "--max-new-tokens", "3", "--bootstrap", "5", "--no-html", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert [(m["model"], m["path"]) for m in report["models"]] == [
        ("baseline", str(base)), ("run1", str(tmp_path / "run1" / "model")), ("run2", str(tmp_path / "run2" / "model"))]
