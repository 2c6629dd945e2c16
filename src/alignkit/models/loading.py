"""Load policies, references and tokenizers with ``from_pretrained`` (a hub name or a local directory).

A name that is meant as a local path (:func:`looks_local`) is never sent to the hub: the directory is checked first
(it exists, has a valid ``config.json`` and complete weights, or tokenizer files), and every loading failure is a
one-line :class:`~alignkit.config.ConfigError` naming the path and what is wrong. :func:`check_model_paths` runs
those checks on every model path of a run configuration, naming the config key, before anything is loaded.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignkit.config import ConfigError, TrainConfig
from alignkit.utils.files import file_damage, first_line, is_zip
from alignkit.utils.io import warn

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
HUB_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# a name ending in one of these is a file meant locally, never a hub repo id (data/model files, archives, configs)
FILE_EXTENSIONS = (".jsonl", ".json", ".ndjson", ".parquet", ".arrow", ".csv", ".txt", ".gz", ".bz2", ".xz", ".zip",
                   ".tar", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".yaml", ".yml", ".model")
POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` is float32 on CPU and bfloat16 on GPUs that support it (else float32)."""
    if name != "auto":
        return DTYPES[name]
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------ checks
def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id (``name`` or ``org/name``): it exists, starts
    with ``.``, ``/`` or ``~`` (``./x``, ``../x``), ends in a file extension (``data/train.jsonl``), is no valid hub
    id (more than one ``/``), or its first folder exists here (``runs/dpo/model``). Such a name that does not exist is
    an error naming it, never a hub request that fails with a confusing message."""
    if name.startswith((".", "/", "~")) or os.path.exists(name) or (os.sep != "/" and os.sep in name):
        return True
    if name.lower().endswith(FILE_EXTENSIONS):
        return True
    parts = name.split("/")
    if len(parts) > 2 or not all(HUB_NAME_PART.fullmatch(part) for part in parts):
        return True
    return len(parts) == 2 and os.path.isdir(parts[0])


def check_local(name: str, key: str, model: bool = True, tokenizer: bool = False, hint: str = "") -> None:
    """Raise ConfigError ``"<key>: <name> <what is wrong><hint>"`` when ``name`` is a local path that
    ``from_pretrained`` cannot load a model (``model``) or a tokenizer (``tokenizer``) from; hub names pass."""
    directory = check_data_path(name, key)
    if directory is None:
        return
    if not directory.is_dir():
        raise ConfigError(f"{key}: {name} is not a directory")
    problem = (model and model_problem(directory)) or (tokenizer and tokenizer_problem(directory))
    if problem:
        raise ConfigError(f"{key}: {name} {problem}{hint}")


def check_data_path(name: str, key: str) -> Path | None:
    """Raise ConfigError ``"<key>: <name> does not exist"`` for a path meant locally (:func:`looks_local`) that is
    not there, before anything loads; returns the local path (None: a hub name)."""
    if not looks_local(name):
        return None
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}: {name} does not exist")
    return path


def model_problem(directory: Path) -> str | None:
    """What keeps ``from_pretrained`` from loading a model from ``directory`` (a phrase after its path), or None."""
    if not (directory / "config.json").is_file():
        if (directory / "adapter_config.json").is_file():  # a PEFT adapter: its base model is loaded by name
            return json_problem(directory / "adapter_config.json")
        return "is not a model directory (no config.json)"
    return json_problem(directory / "config.json") or weights_problem(directory)


def tokenizer_problem(directory: Path) -> str | None:
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return "has no tokenizer files (tokenizer.json or tokenizer_config.json)"
    config = directory / "tokenizer_config.json"
    return json_problem(config) if config.is_file() else None


def json_problem(file: Path) -> str | None:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"has an invalid {file.name} ({first_line(exc)})"
    return None if isinstance(value, dict) else f"has an invalid {file.name} (not a JSON object)"


def weights_problem(directory: Path) -> str | None:
    """Missing, empty, truncated or corrupt weight files (a sharded checkpoint: every shard its index lists)."""
    index = next((directory / name for name in WEIGHT_INDEX_FILES if (directory / name).is_file()), None)
    if index is not None:
        problem = json_problem(index)
        if problem:
            return problem
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        missing = [shard for shard in shards if not (directory / shard).is_file()]
        if missing or not shards:
            return f"lacks {missing[0] if missing else 'the weights'} (listed in {index.name})"
        files = [directory / shard for shard in shards]
    else:
        files = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()][:1]
        if not files:
            return f"has no model weights ({' or '.join(WEIGHT_FILES)})"
    return next(filter(None, map(weight_file_problem, files)), None)


def weight_file_problem(file: Path) -> str | None:
    """An empty file, or a safetensors file or ``torch.save`` zip archive that is cut short or garbled
    (:func:`~alignkit.utils.files.file_damage`; older pickle files are not checked)."""
    if file.stat().st_size == 0:
        return f"has an empty {file.name} (0 bytes)"
    damage = file_damage(file) if file.suffix == ".safetensors" or is_zip(file) else None
    return f"has a truncated or corrupt {file.name} ({damage})" if damage else None


def check_model_paths(config: TrainConfig, extra: Sequence[tuple[str, str]] = ()) -> None:
    """Check every local model and tokenizer path a run loads, naming the key, before any data or model loads:
    ``model.path`` (and its tokenizer unless ``model.tokenizer`` is set), ``model.tokenizer``, ``reference.path``,
    and the recipe's own model directories (``extra``: (path, key) pairs, e.g. ``rl.critic_path``)."""
    model = config.model
    check_local(model.path, "model.path")
    if model.tokenizer is None:
        check_local(model.path, "model.path", model=False, tokenizer=True, hint="; set model.tokenizer")
    else:
        check_local(model.tokenizer, "model.tokenizer", model=False, tokenizer=True)
    if config.reference.path is not None:
        check_local(config.reference.path, "reference.path")
    for path, key in extra:
        check_local(path, key)


def _warn_once(message: str) -> None:
    """:func:`~alignkit.utils.io.warn`, once per process (a run tokenizes its training and held-out data with one
    tokenizer: one warning, not one per dataset)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warn(message)


_WARNED: set[str] = set()


def position_limit(model_path: str) -> int | None:
    """The model's longest sequence (``max_position_embeddings`` or its other names) from the ``config.json`` of a
    local model directory; None when unknown (a hub name is not fetched for this)."""
    file = Path(model_path).expanduser() / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], **config}  # multimodal configs keep the language model's limit inside
    return next((config[key] for key in POSITION_LIMIT_KEYS if isinstance(config.get(key), int)), None)


def warn_data_limits(model_path: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
    """One warning line each (once per run) for what silently spoils training on the data: ``data.max_length`` past
    the model's position limit (longer sequences index positions it has no embedding for, or degrade), and a
    tokenizer without an EOS token (text responses then get no end token, so the model never learns to stop)."""
    limit = position_limit(model_path)
    if limit is not None and max_length > limit:
        _warn_once(f"data.max_length={max_length} exceeds the model's position limit ({limit}, "
                   f"max_position_embeddings of {model_path}); set data.max_length <= {limit}")
    if tokenizer.eos_token is None:
        _warn_once(f"the tokenizer of {model_path} has no EOS token: text responses get no end-of-sequence token, "
                   "so the model does not learn to stop; set one (tokenizer.eos_token) or use a chat template")


# ------------------------------------------------------------------------------------------------ loading
@contextlib.contextmanager
def loading_errors(what: str, name: str) -> Iterator[None]:
    """Turn what ``from_pretrained`` raises on a bad name or directory (OSError, ValueError, a state dict that does
    not fit the config, a corrupt weight file) into one line naming the path."""
    try:
        yield
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ConfigError(f"{what}: cannot load {name} ({first_line(exc)})") from exc


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    check_local(path, "tokenizer", model=False, tokenizer=True)
    with loading_errors("tokenizer", path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenizer: {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: str = "auto", trust_remote_code: bool = False,
                   device: torch.device | str | None = None) -> PreTrainedModel:
    device = device or default_device()
    check_local(path, "model")
    with loading_errors("model", path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, device),
                                                     trust_remote_code=trust_remote_code)
    return model.to(device)


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen, eval-mode copy of ``model`` to serve as the reference policy."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference
