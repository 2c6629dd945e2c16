"""Typed run configuration: YAML + keyword values + key=value overrides, strict validation, --help text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alignkit.config import (
    SECTIONS,
    ConfigError,
    DataConfig,
    LoraConfig,
    ModelConfig,
    OnlineConfig,
    OptimConfig,
    RewardConfig,
    ReferenceConfig,
    RLConfig,
    TrainConfig,
    options_help,
    parse_overrides,
)
from alignkit.losses.registry import LOSSES, LossOutput, LossSpec
from alignkit.recipes import load_config

REQUIRED = {"model": {"path": "m"}, "data": {"path": "d.jsonl"}}


def _toy_loss(inputs, beta=0.1, gamma=0.5):  # pragma: no cover - never called
    """Toy loss with two parameters."""
    return LossOutput(losses=inputs)


@pytest.fixture
def toy_loss(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered loss with two parameters (dpo has only beta), removed again after the test."""
    spec = LossSpec("toy", _toy_loss, "pairs", "sum", True, "none", {"beta": 0.1, "gamma": 0.5})
    monkeypatch.setitem(LOSSES, "toy", spec)
    return "toy"


def write_yaml(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(overrides: list[str] | None = None, **values) -> TrainConfig:
    values = {**REQUIRED, **values}
    return load_config(None, overrides, **values)


def error_of(overrides: list[str] | None = None, path: Path | None = None, **values) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, **values)
    return str(info.value)


# ------------------------------------------------------------------------------------------------
# composition
# ------------------------------------------------------------------------------------------------

BASE_YAML = """\
model:
  path: base-model
data:
  path: train.jsonl
  max_length: 256
  max_prompt_length: 64
optim:
  lr: 1e-4
  schedule: cosine
batch_size: 4
grad_accum: 2
seed: 7
loss_params:
  beta: 0.1
"""


def test_yaml_then_keywords_then_overrides(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, BASE_YAML)
    config = load_config(path, ["batch_size=32", "optim.lr=3e-5", "data.max_length=300", "epochs=2"],
                         batch_size=16, grad_accum=3, optim={"warmup_ratio": 0.25, "lr": 2e-4})
    assert config.batch_size == 32            # yaml 4 < keyword 16 < override 32
    assert config.grad_accum == 3             # yaml 2 < keyword 3
    assert config.seed == 7                   # yaml only
    assert config.optim.lr == 3e-5 and isinstance(config.optim.lr, float)
    assert config.optim.warmup_ratio == 0.25  # keyword section merges into the yaml's section ...
    assert config.optim.schedule == "cosine"  # ... keeping the yaml's other keys
    assert config.optim.weight_decay == 0.0   # default
    assert config.data.max_length == 300 and config.data.max_prompt_length == 64
    assert config.data.path == "train.jsonl" and config.model.path == "base-model"
    assert config.epochs == 2.0 and isinstance(config.epochs, float)
    assert config.loss == "dpo" and config.loss_params == {"beta": 0.1}


def test_yaml_float_strings_parse(tmp_path: Path) -> None:
    # PyYAML reads 1e-4 (no dot) as a string; it must still become a float
    path = write_yaml(tmp_path, BASE_YAML + "sft_weight: 5e-1\n")
    config = load_config(path)
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)
    assert config.sft_weight == 0.5


@pytest.mark.parametrize("text, expected", [("1e-4", 1e-4), ("3E-5", 3e-5), ("2", 2.0), ("0.5", 0.5),
                                            ("1.5e2", 150.0)])
def test_float_override_strings(text: str, expected: float) -> None:
    config = load([f"optim.lr={text}"])
    assert config.optim.lr == expected
    assert type(config.optim.lr) is float


def test_loss_params_override_merges_with_yaml(tmp_path: Path, toy_loss: str) -> None:
    path = write_yaml(tmp_path, BASE_YAML.replace("  beta: 0.1\n", "  beta: 0.1\n  gamma: 0.7\n")
                      + f"loss: {toy_loss}\n")
    assert load_config(path).loss_params == {"beta": 0.1, "gamma": 0.7}
    config = load_config(path, ["loss_params.beta=0.2"])
    assert config.loss_params == {"beta": 0.2, "gamma": 0.7}
    assert all(type(v) is float for v in config.loss_params.values())


def test_loss_params_override_merges_with_keyword_values(toy_loss: str) -> None:
    config = load(["loss_params.gamma=2"], loss=toy_loss, loss_params={"beta": 0.3})
    assert config.loss_params == {"beta": 0.3, "gamma": 2.0}


def test_loss_params_mapping_override(tmp_path: Path, toy_loss: str) -> None:
    path = write_yaml(tmp_path, BASE_YAML.replace("  beta: 0.1\n", "  beta: 0.1\n  gamma: 0.7\n")
                      + f"loss: {toy_loss}\n")
    config = load_config(path, ["loss_params={beta: 0.3}"])
    assert config.loss_params == {"beta": 0.3, "gamma": 0.7}


def test_nested_and_null_values() -> None:
    config = load(["reference.path=null", "optim.max_grad_norm=null", "model.tokenizer=none",
                   "optim.betas=[0.8, 1e-3]", "progress=false", "data.limit=10", "reference.mode=copy"],
                  reference={"path": "ref-dir"})
    assert config.reference.path is None
    assert config.reference.mode == "copy"
    assert config.optim.max_grad_norm is None
    assert config.model.tokenizer is None
    assert config.optim.betas == [0.8, 0.001] and all(type(b) is float for b in config.optim.betas)
    assert config.progress is False
    assert config.data.limit == 10


def test_empty_yaml_is_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "# nothing\n")
    config = load_config(path, ["model.path=m", "data.path=d"])
    default = TrainConfig()
    assert config.batch_size == default.batch_size == 8
    assert config.optim == OptimConfig() and config.reference == ReferenceConfig()


def test_defaults_are_not_shared() -> None:
    a, b = TrainConfig(), TrainConfig()
    a.optim.betas.append(1.0)
    a.loss_params["beta"] = 1.0
    assert b.optim.betas == [0.9, 0.999] and b.loss_params == {}
    assert a.optim is not b.optim


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

def test_unknown_top_level_key_suggests() -> None:
    message = error_of(["batch_sise=3"], **REQUIRED)
    assert "'batch_sise'" in message
    assert "did you mean 'batch_size'" in message


def test_unknown_section_key_suggests() -> None:
    message = error_of(["optim.lrr=1e-4"], **REQUIRED)
    assert "'optim.lrr'" in message
    assert "did you mean 'optim.lr'" in message
    message = error_of(["data.max_lenght=10"], **REQUIRED)
    assert "'data.max_lenght'" in message and "did you mean 'data.max_length'" in message


def test_unknown_key_in_yaml_section(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, BASE_YAML + "reference:\n  mdoe: copy\n")
    message = error_of(path=path)
    assert "'reference.mdoe'" in message and "did you mean 'reference.mode'" in message


def test_unknown_key_without_close_match() -> None:
    message = error_of(["zzzzzz=1"], **REQUIRED)
    assert "'zzzzzz'" in message and "did you mean" not in message


def test_unknown_loss_names_available() -> None:
    message = error_of(["loss=dpoo"], **REQUIRED)
    assert "dpoo" in message
    assert "available: " + ", ".join(sorted(LOSSES)) in message
    assert "did you mean 'dpo'" in message


def test_unknown_loss_param_suggests() -> None:
    message = error_of(["loss_params.betaa=0.2"], **REQUIRED)
    assert "'betaa'" in message and "did you mean 'beta'" in message


def test_sft_recipe_refuses_a_loss() -> None:
    """recipe=sft does not read `loss`: setting it is an error naming the key and the recipe, not ignored."""
    assert error_of(["recipe=sft", "loss=not-a-loss"], **REQUIRED).startswith("loss: recipe sft does not use")


@pytest.mark.parametrize("override, key, shown", [
    ("batch_size=abc", "batch_size", "'abc'"),
    ("batch_size=1.5", "batch_size", "1.5"),
    ("optim.lr=abc", "optim.lr", "'abc'"),
    ("optim.lr=true", "optim.lr", "'true'"),
    ("data.overlength=foo", "data.overlength", "'foo'"),
    ("progress=maybe", "progress", "'maybe'"),
    ("recipe=rlhf", "recipe", "'rlhf'"),
    ("max_steps=ten", "max_steps", "'ten'"),
    ("optim.betas=0.9", "optim.betas", "0.9"),
    ("optim.betas=[0.9, x]", "optim.betas[1]", "'x'"),
    ("loss_params.beta=abc", "loss_params.beta", "'abc'"),
    ("model.trust_remote_code=2", "model.trust_remote_code", "2"),
])
def test_ill_typed_values_name_the_key(override: str, key: str, shown: str) -> None:
    message = error_of([override], **REQUIRED)
    assert message.startswith(f"{key}: "), message
    assert message.endswith(shown) or f"{shown} is not one of" in message, message


def test_ill_typed_yaml_value(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, BASE_YAML + "log_steps: often\n")
    assert error_of(path=path).startswith("log_steps:")


@pytest.mark.parametrize("how", ["override", "keyword", "yaml"])
def test_section_given_scalar(how: str, tmp_path: Path) -> None:
    if how == "override":
        message = error_of(["optim=3"], **REQUIRED)
    elif how == "keyword":
        message = error_of(None, optim=3, **REQUIRED)
    else:
        message = error_of(path=write_yaml(tmp_path, BASE_YAML + "reference: copy\n"))
    section = "reference" if how == "yaml" else "optim"
    assert message.startswith(f"{section}: expected a mapping")


def test_conflicting_overrides_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="optim"):
        parse_overrides(["optim=3", "optim.lr=1"])


def test_yaml_not_a_mapping_names_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- a\n- b\n", "list.yaml")
    message = error_of(path=path)
    assert str(path) in message and "mapping" in message


def test_invalid_yaml_names_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "model: [unclosed\n", "bad.yaml")
    message = error_of(path=path)
    assert message.startswith(f"{path}: invalid YAML")


def test_missing_model_path() -> None:
    assert error_of(None, data={"path": "d"}) == "model.path is required"


def test_missing_data_path() -> None:
    assert error_of(None, model={"path": "m"}) == "data.path is required"


@pytest.mark.parametrize("prompt_len, max_len, ok", [(256, 256, False), (300, 256, False), (255, 256, True)])
def test_prompt_length_below_max_length(prompt_len: int, max_len: int, ok: bool) -> None:
    overrides = [f"data.max_prompt_length={prompt_len}", f"data.max_length={max_len}"]
    if ok:
        assert load(overrides).data.max_prompt_length == prompt_len
    else:
        assert "max_prompt_length" in error_of(overrides, **REQUIRED)


@pytest.mark.parametrize("key", ["batch_size", "grad_accum", "log_steps"])
def test_counts_must_be_positive(key: str) -> None:
    assert error_of([f"{key}=0"], **REQUIRED) == f"{key}: must be >= 1, got 0"


# ------------------------------------------------------------------------------------------------
# parse_overrides
# ------------------------------------------------------------------------------------------------

def test_parse_overrides_nests_and_keeps_strings() -> None:
    assert parse_overrides(["optim.lr=1e-4", "--seed=3", "loss_params.beta=0.2", "data.path=a=b.jsonl"]) == {
        "optim": {"lr": "1e-4"}, "seed": "3", "loss_params": {"beta": "0.2"}, "data": {"path": "a=b.jsonl"}}
    assert parse_overrides([]) == {}


def test_parse_overrides_needs_equals() -> None:
    with pytest.raises(ConfigError, match="'optim.lr' must look like key=value"):
        parse_overrides(["optim.lr"])
    assert load(["data.path=a=b.jsonl"]).data.path == "a=b.jsonl"


# ------------------------------------------------------------------------------------------------
# --help
# ------------------------------------------------------------------------------------------------

CONFIG_CLASSES = {"": TrainConfig, "model.": ModelConfig, "data.": DataConfig, "reference.": ReferenceConfig,
                  "optim.": OptimConfig, "lora.": LoraConfig, "reward.": RewardConfig, "online.": OnlineConfig,
                  "rl.": RLConfig}


def test_sections_table_matches_dataclasses() -> None:
    assert {f"{name}." for name in SECTIONS} == set(CONFIG_CLASSES) - {""}
    for name, cls in SECTIONS.items():
        assert CONFIG_CLASSES[f"{name}."] is cls


def test_options_help_mentions_every_field() -> None:
    text = options_help()
    lines = text.splitlines()
    checked = 0
    for prefix, cls in CONFIG_CLASSES.items():
        for f in dataclasses.fields(cls):
            help_text = f.metadata.get("help", "")
            assert isinstance(help_text, str) and help_text.strip(), f"{prefix}{f.name} has no help"
            if cls is TrainConfig and f.name in SECTIONS:
                # sections are listed through their fields
                assert any(line.startswith(f"  {f.name}.") for line in lines), f.name
                continue
            dotted = f"{prefix}{f.name}"
            index = next((i for i, line in enumerate(lines) if line.startswith(f"  {dotted} = ")), None)
            assert index is not None, f"{dotted} missing from options_help()"
            assert lines[index + 1].strip() == help_text, dotted
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert f"= {default!r}  [" in lines[index], dotted
            checked += 1
    n_sections = len(SECTIONS)
    expected = sum(len(dataclasses.fields(c)) for c in CONFIG_CLASSES.values()) - n_sections
    assert checked == expected
    assert len(lines) == 2 * expected  # one option line and one help line per field, nothing else


def test_options_help_types_are_readable() -> None:
    assert "<class" not in options_help()


def test_every_example_config_loads() -> None:
    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    for path in examples:
        assert load_config(path).recipe in ("sft", "preference", "reward", "online", "rl"), path


def test_example_configs_say_what_they_are_for_and_user_data_ones_use_pretrained_settings():
    """Each example's first line names its audience (the sandbox's from-scratch model or your pretrained one); the
    user-data examples keep real records whole (1024 / 512 tokens) and use pretrained-model learning rates."""
    from pathlib import Path

    from alignkit.recipes import load_config

    examples = Path(__file__).parents[1] / "examples"
    for path in examples.glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first.startswith(("# For the SANDBOX", "# For YOUR")), path.name
    dpo, reward = load_config(examples / "dpo-own-data.yaml"), load_config(examples / "reward.yaml")
    for config in (dpo, reward):
        assert (config.data.max_length, config.data.max_prompt_length) == (1024, 512)
    assert 5e-7 <= dpo.optim.lr <= 5e-6 and dpo.loss_params == {"beta": 0.1}
    assert 5e-6 <= reward.optim.lr <= 2e-5 and reward.recipe == "reward"
    assert load_config(examples / "reward-sandbox.yaml").optim.lr == 1e-3


def test_readme_prompts_example_and_rewardbench_mini_load(tmp_path):
    """The README's prompts-file example reads as prompts; the shipped RewardBench-style file is 20 valid pairs
    in four subsets."""
    import json
    from pathlib import Path

    from alignkit.data.formats import load_records
    from alignkit.data.prompts import load_prompt_rows

    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("Prompts files", 1)[1].split("```jsonl\n", 1)[1].split("```", 1)[0]
    sample = tmp_path / "prompts.jsonl"
    sample.write_text(block)
    rows = load_prompt_rows(sample)
    assert len(rows) == 2 and rows[1].metadata == {"constraints": {"max_words": 20}}
    path = root / "examples" / "data" / "rewardbench-mini.jsonl"
    records, report = load_records(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 20 == report.loaded and {row["subset"] for row in lines} == {"chat", "chat-hard", "safety",
                                                                                         "reasoning"}
    assert all(row["chosen"] != row["rejected"] for row in lines)
