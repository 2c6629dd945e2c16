"""TRL's option names work as aliases of ours (YAML and key=value), with a note; conflicts are one-line errors; the
``alignkit dpo|sft|grpo|...`` shortcuts set recipe / loss like ``trl dpo``."""

from __future__ import annotations

import pytest
import yaml

from alignkit import config as config_module
from alignkit.cli import SHORTCUTS, main
from alignkit.config import ConfigError, read_config, trl_aliases

REQUIRED = ["model.path=m", "data.path=d.jsonl"]


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test sees the first-use notes again."""
    monkeypatch.setattr(config_module, "_NOTED", set())


TRL_CONFIG = {"learning_rate": 2e-6, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8,
              "beta": 0.25, "num_train_epochs": 3, "max_length": 1024, "max_prompt_length": 512,
              "warmup_ratio": 0.05, "lr_scheduler_type": "cosine", "weight_decay": 0.01, "max_grad_norm": 0.5,
              "logging_steps": 5, "save_steps": 100, "save_total_limit": 3, "max_steps": 50, "bf16": True,
              "model": {"path": "m"}, "data": {"path": "d.jsonl"}}


def test_a_trl_yaml_config_sets_our_keys(tmp_path, capsys):
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(TRL_CONFIG))
    config = read_config(path)
    assert (config.optim.lr, config.batch_size, config.grad_accum, config.loss_params, config.epochs) == \
        (2e-6, 4, 8, {"beta": 0.25}, 3.0)
    assert (config.data.max_length, config.data.max_prompt_length) == (1024, 512)
    assert (config.optim.warmup_ratio, config.optim.schedule, config.optim.weight_decay, config.optim.max_grad_norm) \
        == (0.05, "cosine", 0.01, 0.5)
    assert (config.log_steps, config.save_steps, config.save_total_limit, config.max_steps, config.model.dtype) == \
        (5, 100, 3, 50, "bfloat16")
    err = capsys.readouterr().err
    assert "[alignkit] learning_rate is TRL's name for optim.lr\n" in err
    assert "[alignkit] bf16 is TRL's name for model.dtype=bfloat16\n" in err


def test_overrides_accept_trl_names_and_note_each_once(capsys):
    config = read_config(None, [*REQUIRED, "learning_rate=1e-5", "beta=0.3", "lr_scheduler_type=constant_with_warmup",
                                "disable_tqdm=true"])
    assert (config.optim.lr, config.loss_params, config.optim.schedule, config.progress) == \
        (1e-5, {"beta": 0.3}, "constant", False)
    read_config(None, [*REQUIRED, "learning_rate=2e-5"])
    assert capsys.readouterr().err.count("learning_rate is TRL's name") == 1


def test_an_override_in_trl_spelling_beats_the_file(tmp_path):
    path = tmp_path / "ours.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 1e-6}, "loss_params": {"beta": 0.1, "label_smoothing": 0.1}}))
    config = read_config(path, [*REQUIRED, "learning_rate=3e-6", "beta=0.5"])
    assert config.optim.lr == 3e-6 and config.loss_params == {"beta": 0.5, "label_smoothing": 0.1}


def test_a_false_switch_sets_nothing():
    assert read_config(None, [*REQUIRED, "bf16=false"]).model.dtype == "auto"
    assert read_config(None, [*REQUIRED, "bf16=false", "model.dtype=float32"]).model.dtype == "float32"


@pytest.mark.parametrize("items, named", [
    (["learning_rate=1e-5", "optim.lr=2e-5"], "learning_rate=1e-5 (TRL's name for optim.lr) and optim.lr=2e-5"),
    (["bf16=true", "fp16=true"], "disagree"),
    (["beta=0.1", "loss_params.beta=0.2"], "loss_params.beta"),
    (["lr_scheduler_type=polynomial"], "lr_scheduler_type: 'polynomial' has no equivalent"),
    (["bf16=maybe"], "bf16: expected true or false"),
])
def test_conflicts_and_untranslatable_values_are_one_line_errors(items, named):
    with pytest.raises(ConfigError, match="^[^\n]*$") as info:
        read_config(None, [*REQUIRED, *items])
    assert named in str(info.value)


def test_same_value_both_ways_is_fine(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"learning_rate": 1e-5, "optim": {"lr": 1e-5}, "model": {"path": "m"},
                                    "data": {"path": "d"}}))
    assert read_config(path).optim.lr == 1e-5


def test_a_trl_name_inside_a_section_says_where_it_goes():
    with pytest.raises(ConfigError, match="TRL's learning_rate is 'optim.lr' here"):
        read_config(None, [*REQUIRED, "optim.learning_rate=1e-5"])


def test_every_alias_targets_an_existing_setting():
    for name, alias in trl_aliases().items():
        assert config_module._exists(alias.key) and not config_module._exists(name), name


# ------------------------------------------------------------------------------------------------------ shortcuts


def test_every_shortcut_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in SHORTCUTS)


@pytest.mark.parametrize("name, expected", [
    ("dpo", {"recipe": "preference", "loss": "dpo"}), ("kto", {"recipe": "preference", "loss": "kto"}),
    ("sft", {"recipe": "sft"}), ("reward", {"recipe": "reward"}), ("grpo", {"recipe": "rl", "rl.advantage": "grpo"}),
    ("ppo", {"recipe": "rl", "rl.advantage": "gae"}),
    ("online-dpo", {"recipe": "online", "online.method": "online_dpo"}),
])
def test_shortcuts_run_train_with_their_settings(name, expected, monkeypatch, tmp_path):
    """The shortcut hands train its settings (then the user's), and train reads them like any override."""
    import alignkit.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.setdefault("overrides", args.overrides) and 0)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run")}))
    assert main([name, "--config", str(config), "seed=3"]) == 0
    assert seen["overrides"] == [*(f"{k}={v}" for k, v in expected.items()), "seed=3"]


def test_a_config_agreeing_with_the_shortcut_is_fine_and_a_conflicting_one_is_an_error(monkeypatch, tmp_path, capsys):
    import alignkit.cli as cli

    monkeypatch.setattr(cli, "cmd_train", lambda args: 0)
    agree = tmp_path / "agree.yaml"
    agree.write_text(yaml.safe_dump({"recipe": "preference", "loss_type": "sigmoid"}))
    assert main(["dpo", "--config", str(agree)]) == 0
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"recipe": "preference", "loss": "ipo"}))
    assert main(["dpo", "--config", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"alignkit: error: loss: `alignkit dpo` trains loss=dpo, but {other} sets loss=ipo; remove it there "
                   "or use `alignkit train`")
    assert main(["grpo", "rl.advantage=rloo"]) == 2
    assert "rl.advantage: `alignkit grpo` trains rl.advantage=grpo, but the overrides" in capsys.readouterr().err


def test_dpo_shortcut_trains_end_to_end(tiny_world, tiny_pairs, tmp_path, capsys):
    """`alignkit dpo` with TRL names trains exactly what `alignkit train` with ours does (the saved config)."""
    common = [f"model.path={tiny_world / 'base'}", f"data.path={tiny_pairs}", "max_steps=1", "progress=false",
              "data.max_prompt_length=32", "max_length=128"]
    assert main(["dpo", *common, f"output_dir={tmp_path / 'a'}", "learning_rate=1e-4", "beta=0.2",
                 "per_device_train_batch_size=2"]) == 0
    assert main(["train", *common, f"output_dir={tmp_path / 'b'}", "recipe=preference", "loss=dpo",
                 "optim.lr=1e-4", "loss_params.beta=0.2", "batch_size=2"]) == 0
    saved = [yaml.safe_load((tmp_path / run / "config.json").read_text()) for run in ("a", "b")]
    for record in saved:
        record.pop("output_dir")
    assert saved[0] == saved[1] and saved[0]["optim"]["lr"] == 1e-4 and saved[0]["loss_params"] == {"beta": 0.2}
