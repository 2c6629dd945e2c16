"""Every setting's range is validated when the config loads, settings the recipe does not read are refused, and
everyday config / model-path mistakes end in one line naming the key or the path (never a traceback)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing
from pathlib import Path

import pytest
import yaml

import alignkit.recipes.runner  # noqa: F401  (its imports log once; keep that out of the captured stderr below)
from alignkit.cli import main
from alignkit.config import (
    SECTIONS,
    ConfigError,
    Range,
    TrainConfig,
    check_declared,
    options_help,
    to_dict,
)
from alignkit.losses import LOSSES, get_loss
from alignkit.recipes import get_recipe, load_config
from alignkit.models.loading import check_model_paths, load_causal_lm, load_tokenizer, looks_local

REQUIRED = {"model": {"path": "m"}, "data": {"path": "d.jsonl"}}
ONLINE = ["recipe=online", "online.reward=sandbox-gold"]
RL = ["recipe=rl", "online.reward=sandbox-gold"]


def error_of(overrides: list[str], **values: typing.Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, **{**REQUIRED, **values})
    return str(info.value)


def all_fields() -> list[tuple[str, dataclasses.Field, typing.Any]]:
    """(dotted key, field, resolved type hint) of every leaf setting."""
    out = []
    for prefix, cls in [("", TrainConfig), *((f"{name}.", c) for name, c in SECTIONS.items())]:
        hints = typing.get_type_hints(cls)
        out += [(prefix + f.name, f, hints[f.name]) for f in dataclasses.fields(cls)
                if not (cls is TrainConfig and f.name in SECTIONS)]
    return out


def number_kind(hint: typing.Any) -> type | None:
    """int or float for numeric settings (also optional ones and lists of numbers), else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if len(args) == 1 and typing.get_origin(args[0]) is list:
        args = list(typing.get_args(args[0]))
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


# numbers whose range is the business of the code that reads them (with its own message)
CHECKED_WHERE_USED = {"zero_stage": "alignkit.recipes.runner.check_parallel_support, with distributed=deepspeed"}
NUMERIC = [(key, f, number_kind(hint)) for key, f, hint in all_fields()
           if number_kind(hint) and key not in CHECKED_WHERE_USED]
FLOATS = [key for key, f, kind in NUMERIC if kind is float and "length" not in f.metadata]  # betas: below


# ------------------------------------------------------------------------------------------------ declared ranges
def test_every_numeric_setting_declares_a_range_shown_in_its_help() -> None:
    assert len(NUMERIC) > 50  # the walk found them
    for key, f, _ in NUMERIC:
        bounds = f.metadata.get("range")
        assert isinstance(bounds, Range), f"{key} declares no range"
        assert bounds.describe() in f.metadata["help"], key
    help_text = options_help()
    assert "peak learning rate (AdamW); must be > 0" in help_text
    assert "AdamW betas; 2 values, each in [0, 1)" in help_text


def test_defaults_lie_in_their_ranges() -> None:
    check_declared(TrainConfig())


@pytest.mark.parametrize("override, message", [
    ("optim.max_grad_norm=-1", "optim.max_grad_norm: must be > 0, got -1.0"),   # was: gradient ascent
    ("optim.max_grad_norm=0", "optim.max_grad_norm: must be > 0, got 0.0"),     # null is "no clipping"
    ("max_steps=0", "max_steps: must be >= 1, got 0"),                          # was: 1 step
    ("max_steps=-1", "max_steps: must be >= 1, got -1"),
    ("epochs=0", "epochs: must be > 0, got 0.0"),
    ("epochs=-3", "epochs: must be > 0, got -3.0"),
    ("data.limit=-1", "data.limit: must be >= 1, got -1"),                      # was: drops the last record
    ("data.limit=0", "data.limit: must be >= 1, got 0"),
    ("save_total_limit=0", "save_total_limit: must be >= 1, got 0"),            # was: keeps all
    ("save_steps=-1", "save_steps: must be >= 0, got -1"),                      # was: saves every step
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.lr=-1e-5", "optim.lr: must be > 0, got -1e-05"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("optim.lr=inf", "optim.lr: must be a finite number, got inf"),
    ("optim.warmup_ratio=5", "optim.warmup_ratio: must be in [0, 1], got 5.0"),
    ("optim.warmup_ratio=-1", "optim.warmup_ratio: must be in [0, 1], got -1.0"),
    ("rows_per_forward=0", "rows_per_forward: must be >= 1, got 0"),
    ("rows_per_forward=-2", "rows_per_forward: must be >= 1, got -2"),
    ("optim.betas=[2, 0.5]", "optim.betas[0]: must be in [0, 1), got 2.0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas[1]: must be in [0, 1), got 1.0"),
    ("optim.betas=[0.9]", "optim.betas: expected 2 values, got [0.9]"),
    ("optim.betas=[0.9, .nan]", "optim.betas[1]: must be a finite number, got nan"),
    ("optim.eps=-1", "optim.eps: must be > 0, got -1.0"),
    ("optim.weight_decay=-5", "optim.weight_decay: must be >= 0, got -5.0"),
    ("lora.r=0", "lora.r: must be >= 1, got 0"),
    ("lora.dropout=1", "lora.dropout: must be in [0, 1), got 1.0"),
    ("sft_weight=-0.5", "sft_weight: must be >= 0, got -0.5"),
    ("seed=-1", "seed: must be in [0, 4294967295], got -1"),
    ("data.max_prompt_length=0", "data.max_prompt_length: must be >= 1, got 0"),
    ("reward.ensemble=0", "reward.ensemble: must be >= 1, got 0"),
])
def test_harmful_settings_are_refused_naming_the_key(override: str, message: str) -> None:
    assert error_of([override]) == message


@pytest.mark.parametrize("overrides, message", [
    ([*ONLINE, "online.temperature=-1"], "online.temperature: must be >= 0, got -1.0"),
    ([*ONLINE, "online.top_p=0"], "online.top_p: must be in (0, 1], got 0.0"),
    ([*ONLINE, "online.top_p=1.5"], "online.top_p: must be in (0, 1], got 1.5"),
    ([*ONLINE, "online.top_k=-1"], "online.top_k: must be >= 0, got -1"),
    ([*ONLINE, "online.num_samples=0"], "online.num_samples: must be >= 1, got 0"),
    ([*ONLINE, "online.max_new_tokens=0"], "online.max_new_tokens: must be >= 1, got 0"),
    ([*ONLINE, "online.generation_batch_size=0"], "online.generation_batch_size: must be >= 1, got 0"),
    ([*ONLINE, "online.rounds=0"], "online.rounds: must be >= 1, got 0"),
    ([*ONLINE, "online.method=nash_md", "online.kl_coef=-0.1"], "online.kl_coef: must be >= 0, got -0.1"),
    ([*ONLINE, "online.method=nash_md", "online.mixture_coef=2"], "online.mixture_coef: must be in [0, 1], got 2.0"),
    ([*ONLINE, "online.method=rso", "online.rso_beta=0"], "online.rso_beta: must be > 0, got 0.0"),
    ([*ONLINE, "online.method=rso", "online.rso_accept=1"], "online.rso_accept: must be >= 2, got 1"),
    ([*ONLINE, "online.eval_every=-1"], "online.eval_every: must be >= 0, got -1"),
    ([*ONLINE, "online.missing_eos_penalty=-1"], "online.missing_eos_penalty: must be >= 0, got -1.0"),
    ([*RL, "rl.clip_eps=0"], "rl.clip_eps: must be > 0, got 0.0"),
    ([*RL, "rl.clip_eps_high=-0.1"], "rl.clip_eps_high: must be > 0, got -0.1"),
    ([*RL, "rl.kl_coef=-1"], "rl.kl_coef: must be >= 0, got -1.0"),
    ([*RL, "rl.kl_target=0"], "rl.kl_target: must be > 0, got 0.0"),
    ([*RL, "rl.gamma=1.5"], "rl.gamma: must be in [0, 1], got 1.5"),
    ([*RL, "rl.lam=-0.1"], "rl.lam: must be in [0, 1], got -0.1"),
    ([*RL, "rl.value_clip=0"], "rl.value_clip: must be > 0, got 0.0"),
    ([*RL, "rl.num_samples=0"], "rl.num_samples: must be >= 1, got 0"),
    ([*RL, "rl.entropy_coef=-0.01"], "rl.entropy_coef: must be >= 0, got -0.01"),
])
def test_sampling_online_and_rl_ranges(overrides: list[str], message: str) -> None:
    assert error_of(overrides) == message


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_setting_refuses_nan_and_infinity(key: str, value: str) -> None:
    assert error_of([f"{key}={value}"]) == f"{key}: must be a finite number, got {float(value)!r}"


def test_non_finite_values_set_after_loading_are_refused_too() -> None:
    config = load_config(None, **REQUIRED)
    config.optim.lr = float("inf")
    with pytest.raises(ConfigError, match=r"^optim.lr: must be > 0, got inf$"):
        check_declared(config)


@pytest.mark.parametrize("overrides", [
    ["save_steps=0"], ["optim.max_grad_norm=null"], ["optim.warmup_ratio=0"], ["optim.warmup_ratio=1"],
    ["optim.betas=[0, 0.999]"], ["epochs=0.5"], ["data.limit=1"], [*ONLINE, "online.temperature=0"],
    [*ONLINE, "online.top_p=1", "online.top_k=0"], [*RL, "rl.gamma=0", "rl.kl_coef=0"],
])
def test_meaningful_boundaries_are_accepted(overrides: list[str]) -> None:
    load_config(None, overrides, **REQUIRED)


# ------------------------------------------------------------------------------------------------ loss params
def test_every_numeric_loss_parameter_declares_a_range_its_default_meets() -> None:
    for name, spec in LOSSES.items():
        for key, default in spec.defaults.items():
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                assert key in spec.ranges, f"{name}.{key} declares no range"
                assert spec.ranges[key].contains(default), f"{name}.{key}={default}"


@pytest.mark.parametrize("name", sorted(n for n, s in LOSSES.items() if "beta" in s.defaults))
@pytest.mark.parametrize("beta", [0, -1])
def test_beta_must_be_positive_for_every_loss(name: str, beta: float) -> None:
    with pytest.raises(KeyError) as info:
        get_loss(name).params({"beta": beta})
    assert info.value.args[0] == f"loss_params.beta: loss '{name}' expects a value > 0, got {float(beta)!r}"


@pytest.mark.parametrize("overrides, message", [
    (["loss_params.beta=0"], "loss_params.beta: loss 'dpo' expects a value > 0, got 0.0"),
    (["loss_params.beta=-1"], "loss_params.beta: loss 'dpo' expects a value > 0, got -1.0"),
    (["loss_params.beta=nan"], "loss_params.beta: loss 'dpo' expects a finite number, got nan"),
    (["loss=cdpo", "loss_params.label_smoothing=0.5"],
     "loss_params.label_smoothing: loss 'cdpo' expects a value in [0, 0.5), got 0.5"),
    (["loss=d2o", "loss_params.num_samples=0"], "loss_params.num_samples: loss 'd2o' expects a value >= 1, got 0"),
    ([*ONLINE, "loss_params.beta=0"], "loss_params.beta: loss 'dpo' expects a value > 0, got 0.0"),
])
def test_loss_parameter_ranges_through_the_config(overrides: list[str], message: str) -> None:
    assert error_of(overrides) == message


def test_integer_loss_parameter_from_the_command_line() -> None:
    config = load_config(None, ["loss=d2o", "loss_params.num_samples=5"], **REQUIRED)
    assert get_loss("d2o").params(config.loss_params)["num_samples"] == 5


# ------------------------------------------------------------------------------------------------ unused settings
@pytest.mark.parametrize("overrides, key, recipe", [
    (["recipe=sft", "loss=kto"], "loss", "sft"),
    (["recipe=sft", "loss_params.beta=0.2"], "loss_params", "sft"),
    (["recipe=sft", "sft_weight=0.5"], "sft_weight", "sft"),
    (["recipe=reward", "loss=ipo"], "loss", "reward"),
    (["recipe=sft", "reference.mode=copy"], "reference.mode", "sft"),
    (["reward.ensemble=3"], "reward.ensemble", "preference"),
    (["recipe=sft", "rl.kl_coef=0.2"], "rl.kl_coef", "sft"),
    (["online.temperature=0.7"], "online.temperature", "preference"),
    ([*ONLINE, "gradient_checkpointing=true"], "gradient_checkpointing", "online"),  # data.eval_path: every recipe reads it now
    ([*RL, "online.rounds=2"], "online.rounds", "rl"),
    ([*RL, "loss=ipo"], "loss", "rl"),
    ([*ONLINE, "rl.clip_eps=0.3"], "rl.clip_eps", "online"),
    ([*ONLINE, "loss=ipo"], "loss", "online"),
    (["recipe=reward", "rows_per_forward=4"], "rows_per_forward", "reward"),
])
def test_a_setting_the_recipe_does_not_use_is_an_error(overrides: list[str], key: str, recipe: str) -> None:
    message = error_of(overrides)
    assert message.startswith(f"{key}: recipe {recipe} does not use this setting (only recipe"), message


@pytest.mark.parametrize("overrides, message", [
    ([*ONLINE, "online.keep=1"], "online.keep: method online_dpo does not use it (it is for raft and superhf)"),
    ([*ONLINE, "online.rso_beta=1"], "online.rso_beta: method online_dpo does not use it (it is for rso)"),
    ([*ONLINE, "online.method=raft", "online.keep=2"],
     "online.keep: method raft keeps this share of the step's samples; it must be in (0, 1], got 2.0"),
    ([*ONLINE, "online.method=superhf", "online.keep=1.5"],
     "online.keep: method superhf keeps this many responses per prompt; it must be a whole number >= 1, got 1.5"),
])
def test_online_method_settings(overrides: list[str], message: str) -> None:
    assert error_of(overrides) == message


def test_raft_takes_no_loss_params() -> None:
    assert error_of([*ONLINE, "online.method=raft", "loss_params.beta=0.2"]).startswith(
        "loss_params: online method raft has its own objective")


@pytest.mark.parametrize("recipe", ["sft", "preference", "reward", "online", "rl"])
def test_a_dumped_config_with_every_default_written_out_loads_again(recipe: str, tmp_path: Path) -> None:
    """Only settings changed from their defaults count as set: a config written by to_dict (the run's config.json,
    the demo's dpo.yaml) loads back."""
    extra = ["online.reward=sandbox-gold"] if recipe in ("online", "rl") else []
    config = load_config(None, [f"recipe={recipe}", *extra], **REQUIRED)
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert load_config(path) == config


# ------------------------------------------------------------------------------------------------ output_dir
def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("x")
    assert error_of([f"output_dir={file}"]) == f"output_dir: {file} is not a directory"
    inside = file / "run"
    assert error_of([f"output_dir={inside}"]) == f"output_dir: {inside} is not a directory ({file} is a file)"


# ------------------------------------------------------------------------------------------------ model paths
@pytest.fixture(scope="module")
def broken_models(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the tiny model, each broken in one everyday way."""
    root = tmp_path_factory.mktemp("broken_models")
    base = tiny_world / "base"
    weights = (base / "model.safetensors").read_bytes()
    made: dict[str, Path] = {"empty": root / "empty"}
    made["empty"].mkdir()
    for name in ("truncated", "header", "zero", "bad_json", "no_weights", "wrong_shapes", "no_model_type",
                 "sharded"):
        made[name] = root / name
        shutil.copytree(base, made[name])
    (made["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) * 9 // 10])
    (made["header"] / "model.safetensors").write_bytes(weights[:1000])
    (made["zero"] / "model.safetensors").write_bytes(b"")
    (made["bad_json"] / "config.json").write_text("{not json")
    (made["no_weights"] / "model.safetensors").unlink()
    config = json.loads((base / "config.json").read_text())
    (made["wrong_shapes"] / "config.json").write_text(json.dumps({**config, "hidden_size": config["hidden_size"] * 2}))
    (made["no_model_type"] / "config.json").write_text("{}")
    (made["sharded"] / "model.safetensors").rename(made["sharded"] / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (made["sharded"] / "model.safetensors.index.json").write_text(json.dumps(index))
    made["file"] = root / "file"
    made["file"].write_text("not a directory")
    made["no_tokenizer"] = root / "no_tokenizer"
    made["no_tokenizer"].mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(base / name, made["no_tokenizer"] / name)
    return made


@pytest.mark.parametrize("case, problem", [
    ("empty", "is not a model directory (no config.json)"),
    ("file", "is not a directory"),
    ("truncated", "has a truncated or corrupt model.safetensors (Error while deserializing header: incomplete "
                  "metadata, file not fully covered)"),
    ("header", "has a truncated or corrupt model.safetensors (Error while deserializing header: invalid header "
               "length)"),
    ("zero", "has an empty model.safetensors (0 bytes)"),
    ("bad_json", "has an invalid config.json (Expecting property name enclosed in double quotes: line 1 column 2 "
                 "(char 1))"),
    ("no_weights", "has no model weights (model.safetensors or pytorch_model.bin)"),
    ("sharded", "lacks model-00002-of-00002.safetensors (listed in model.safetensors.index.json)"),
    ("no_tokenizer", "has no tokenizer files (tokenizer.json or tokenizer_config.json); set model.tokenizer"),
])
def test_model_path_problems_name_key_and_path(broken_models: dict[str, Path], case: str, problem: str) -> None:
    path = broken_models[case]
    config = load_config(None, [f"model.path={path}"], data={"path": "d.jsonl"})
    with pytest.raises(ConfigError) as info:
        check_model_paths(config)
    assert str(info.value) == f"model.path: {path} {problem}"


@pytest.mark.parametrize("key, extra", [
    ("model.path", []), ("model.tokenizer", []), ("reference.path", []),
    ("rl.critic_path", RL), ("rl.reference_soup[1]", RL),
])
def test_missing_paths_name_their_key(tiny_world: Path, tmp_path: Path, key: str, extra: list[str]) -> None:
    missing = tmp_path / "no" / "such" / "model"
    base = str(tiny_world / "base")
    setting = f"rl.reference_soup=[{base}, {missing}]" if key.startswith("rl.reference_soup") else f"{key}={missing}"
    model = f"model.path={missing if key == 'model.path' else base}"
    config = load_config(None, [*extra, model, setting], data={"path": "d.jsonl"})
    with pytest.raises(ConfigError) as info:
        check_model_paths(config, get_recipe(config.recipe).model_paths(config))  # the recipe's own paths too
    assert str(info.value) == f"{key}: {missing} does not exist"


def test_a_good_model_directory_and_hub_names_pass(tiny_world: Path) -> None:
    config = load_config(None, [f"model.path={tiny_world / 'base'}", "reference.path=someorg/some-model"],
                         data={"path": "d.jsonl"})
    check_model_paths(config)  # the hub name is left to from_pretrained


@pytest.mark.parametrize("name, local", [
    ("gpt2", False), ("someorg/some-model", False), ("./model", True), ("../model", True), ("/abs/model", True),
    ("~/model", True), ("runs/dpo/model", True), ("has space/model", True),
])
def test_looks_local(name: str, local: bool) -> None:
    assert looks_local(name) is local


def test_relative_path_with_an_existing_first_folder_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_local("runs/model") and not looks_local("elsewhere/model")


@pytest.mark.parametrize("case", ["wrong_shapes", "no_model_type"])
def test_loading_failures_are_one_line_config_errors(broken_models: dict[str, Path], case: str) -> None:
    path = broken_models[case]
    with pytest.raises(ConfigError) as info:
        load_causal_lm(str(path), device="cpu")
    message = str(info.value)
    assert message.startswith(f"model: cannot load {path} (") and "\n" not in message, message


def test_hub_errors_become_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    def offline(*args: typing.Any, **kwargs: typing.Any) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ConfigError) as info:
        load_tokenizer("someorg/some-model")
    assert str(info.value) == ("tokenizer: cannot load someorg/some-model (We couldn't connect to "
                               "'https://huggingface.co' to load the files.)")


def test_local_looking_names_are_not_sent_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("tried the hub"))
    with pytest.raises(ConfigError, match=r"^model: \./no-such-model does not exist$"):
        load_causal_lm("./no-such-model", device="cpu")


# ------------------------------------------------------------------------------------------------ the command line
def cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``alignkit train ...``: exit code 2 and exactly one line on stderr, returned."""
    capsys.readouterr()
    assert main(["train", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("alignkit: error: ")
    return lines[0].removeprefix("alignkit: error: ")


def sft_argv(tiny_world: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["recipe=sft", f"model.path={tiny_world / 'base'}", f"data.path={tiny_world / 'data' / 'sft.jsonl'}",
            "data.max_length=128", "data.max_prompt_length=32", f"output_dir={tmp_path / 'run'}", "max_steps=1",
            "progress=false", "resume=never", *extra]


@pytest.mark.parametrize("override, key", [
    ("optim.max_grad_norm=-1", "optim.max_grad_norm"), ("max_steps=0", "max_steps"), ("epochs=-3", "epochs"),
    ("data.limit=-1", "data.limit"), ("save_total_limit=0", "save_total_limit"), ("save_steps=-1", "save_steps"),
    ("optim.lr=nan", "optim.lr"), ("optim.betas=[2,0.5]", "optim.betas[0]"), ("optim.betas=[0.9]", "optim.betas"),
    ("optim.eps=-1", "optim.eps"), ("optim.weight_decay=-5", "optim.weight_decay"), ("lora.r=0", "lora.r"),
    ("loss=kto", "loss"), ("loss_params.beta=0", "loss_params"), ("rows_per_forward=0", "rows_per_forward"),
])
def test_cli_config_mistakes_are_one_line(tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          override: str, key: str) -> None:
    assert cli_error(capsys, sft_argv(tiny_world, tmp_path, override)).startswith(f"{key}: ")


def test_cli_output_dir_that_is_a_file(tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    message = cli_error(capsys, sft_argv(tiny_world, tmp_path, f"output_dir={file}"))
    assert message == f"output_dir: {file} is not a directory"


def test_cli_beta_zero_for_preference(tiny_world: Path, tiny_pairs: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    argv = [f"model.path={tiny_world / 'base'}", f"data.path={tiny_pairs}", "loss_params.beta=0"]
    assert cli_error(capsys, argv) == "loss_params.beta: loss 'dpo' expects a value > 0, got 0.0"


@pytest.mark.parametrize("case", ["empty", "truncated", "zero", "bad_json", "no_weights", "file", "missing",
                                  "relative"])
def test_cli_model_path_mistakes_are_one_line_naming_the_path(
        tiny_world: Path, tmp_path: Path, broken_models: dict[str, Path], capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.chdir(tmp_path)
    path = {"missing": str(tmp_path / "missing"), "relative": "./missing"}.get(case) or str(broken_models[case])
    message = cli_error(capsys, sft_argv(tiny_world, tmp_path, f"model.path={path}"))
    assert path in message, message


def test_cli_missing_model_is_reported_before_missing_data(tiny_world: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    argv = sft_argv(tiny_world, tmp_path, f"model.path={tmp_path / 'nope'}", f"data.path={tmp_path / 'no.jsonl'}")
    assert cli_error(capsys, argv).endswith(f"{tmp_path / 'nope'} does not exist")


def test_cli_missing_tokenizer_and_reference(tiny_world: Path, tiny_pairs: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing"
    assert cli_error(capsys, sft_argv(tiny_world, tmp_path, f"model.tokenizer={missing}")).endswith(
        f"{missing} does not exist")
    argv = [f"model.path={tiny_world / 'base'}", f"data.path={tiny_pairs}", f"reference.path={missing}",
            "data.max_length=128", "data.max_prompt_length=32", f"output_dir={tmp_path / 'run'}", "max_steps=1",
            "batch_size=4", "progress=false", "resume=never"]
    assert cli_error(capsys, argv).endswith(f"{missing} does not exist")
