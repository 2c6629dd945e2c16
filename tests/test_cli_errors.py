"""Every user mistake on the command line ends in one line, ``alignkit: error: ...`` naming what is wrong, and exit
status 2; never a traceback. ``--debug`` shows the traceback instead."""

from __future__ import annotations

import pytest

from alignkit.cli import main
from alignkit.config import ConfigError


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code and the stderr lines that are neither notes (``[alignkit] ...``) nor progress-bar redraws."""
    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip() and not line.startswith("[alignkit]")
                  and "it/s]" not in line and "s/it]" not in line]


def mistakes(tiny_world, tiny_pairs, tmp_path) -> list[tuple[list[str], str]]:
    """(argv, what the error line must name) for one mistake of each kind, across the commands."""
    base, prompts = str(tiny_world / "base"), str(tiny_world / "data" / "prompts_eval.jsonl")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("recipe: [sft\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    no_markers = tmp_path / "README.md"
    no_markers.write_text("# no methods table here\n")
    data = f"data.path={tiny_pairs}"
    return [
        (["train", "recipe=sft", "model.path=/nonexistent", data], "model.path"),
        (["train", "--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["train", "--config", str(binary)], "binary.yaml"),
        (["train", "--config", str(not_yaml)], "broken.yaml"),
        (["train", "--config", str(tmp_path)], str(tmp_path)),
        (["train", f"model.path={base}", data, "optim.lr=-1"], "optim.lr"),
        (["train", f"model.path={base}", data, "recipe=sfft"], "recipe"),
        (["train", f"model.path={base}", "data.path=/nonexistent.jsonl"], "nonexistent.jsonl"),
        (["train", f"model.path={base}", data, f"output_dir={a_file}"], "output_dir"),
        (["dpo", f"model.path={base}", data, "recipe=sft"], "recipe"),
        (["sft", f"model.path={base}", data, "learning_rate=1e-5", "optim.lr=2e-5"], "learning_rate"),
        (["eval", "--model", "/nonexistent", "--baseline", base, "--prompts", prompts], "/nonexistent"),
        (["eval", "--model", base, "--baseline", base, "--prompts", str(tmp_path / "none.jsonl")], "none.jsonl"),
        (["eval", "rm", "--model", "/nonexistent", "--data", str(tiny_pairs)], "/nonexistent"),
        (["generate", "--model", base, "--prompts", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.jsonl")],
         "none.jsonl"),
        (["generate", "--model", "/nonexistent", "--prompts", prompts, "--out", str(tmp_path / "o.jsonl")],
         "/nonexistent"),
        (["sandbox", "build", "--out", str(a_file)], "a_file"),
        (["methods", "--update-readme", str(no_markers)], "README.md"),
        (["methods", "--update-readme", str(tmp_path / "nothing.md")], "nothing.md"),
        (["methods", "--family", "losses", "no-such-method"], "no-such-method"),
    ]


def test_user_mistakes_end_in_one_line_and_exit_2(tiny_world, tiny_pairs, tmp_path, capsys):
    failures = []
    for argv, named in mistakes(tiny_world, tiny_pairs, tmp_path):
        code, lines = run(argv, capsys)
        ok = code == 2 and len(lines) == 1 and lines[0].startswith("alignkit: error: ") and named in lines[0]
        if not ok:
            failures.append(f"{argv}: exit {code}, {lines}")
    assert not failures, "\n".join(failures)


def test_wrong_model_path_is_named_before_the_data_loads(tmp_path, capsys):
    """The model path is checked first: the data file does not even exist, yet the error is about model.path."""
    code, lines = run(["train", "recipe=sft", "model.path=/nonexistent", f"data.path={tmp_path / 'later.jsonl'}"],
                      capsys)
    assert code == 2 and len(lines) == 1
    assert "model.path" in lines[0] and "/nonexistent" in lines[0] and "later.jsonl" not in lines[0]


def test_debug_shows_the_traceback(tiny_pairs):
    """``--debug`` re-raises, wherever it stands on the line."""
    with pytest.raises(ConfigError, match="model.path"):
        main(["--debug", "train", "recipe=sft", "model.path=/nonexistent", f"data.path={tiny_pairs}"])
    with pytest.raises(ConfigError, match="model.path"):
        main(["train", "recipe=sft", "model.path=/nonexistent", f"data.path={tiny_pairs}", "--debug"])
