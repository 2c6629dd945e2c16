"""Reference log-probs cached on disk, so a rerun, a resumed run or a sweep over loss hyperparameters does not
compute them again.

The file is keyed by a digest of everything the values depend on: the reference model's weights (every tensor of
its state dict, bytes included), the tokenized data (indices, prompt, response and mismatched token ids) and the
reduction (sum or per-token mean). Change any of them and the key changes, so a stale file is never read. Files
are safetensors (no pickle), written atomically.

A file is not trusted blindly: its metadata holds the key and a sha256 of its tensors' content, and
:func:`load_cache` checks both, that every value is finite and that the records and their response counts are the
dataset's. A file failing any check (edited, truncated, written by an older alignkit, for other data) raises
:class:`CacheError` saying what is wrong; :func:`cached_or_computed` then warns in one line and recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from alignkit.data.tokenize import TokenizedRecord
from alignkit.utils.files import first_line
from alignkit.utils.io import atomic_file, warn

Cache = dict[int, dict[str, torch.Tensor]]
FORMAT = "alignkit-reference-logps/2"


class CacheError(ValueError):
    """A cache file that cannot be used as is (the message says why)."""


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor in the state dict."""
    return content_digest(model.state_dict())


def data_digest(dataset: Sequence[TokenizedRecord]) -> str:
    h = hashlib.sha256()
    for item in dataset:
        h.update(repr((item.index, item.prompt_ids, item.response_ids, item.record.ranking,
                       item.extra.get("mismatched_ids"))).encode())
    return h.hexdigest()


def cache_key(model: torch.nn.Module, dataset: Sequence[TokenizedRecord], reduction: str) -> str:
    return hashlib.sha256(f"{model_digest(model)}|{data_digest(dataset)}|{reduction}|v1".encode()).hexdigest()[:32]


def content_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors``."""
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_cache(path: Path, cache: Cache, key: str = "") -> None:
    """Write ``cache`` atomically, with ``key`` and the digest of its content in the file's metadata."""
    indices = sorted(cache)
    tensors = {"index": torch.tensor(indices, dtype=torch.long),
               "counts": torch.tensor([len(cache[i]["rows"]) for i in indices], dtype=torch.long),
               "rows": torch.cat([cache[i]["rows"] for i in indices]).contiguous()}
    if indices and "mismatched" in cache[indices[0]]:
        tensors["mismatched"] = torch.cat([cache[i]["mismatched"] for i in indices]).contiguous()
    metadata = {"format": FORMAT, "key": key, "sha256": content_digest(tensors)}
    with atomic_file(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))


def read_verified(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the cache file at ``path`` once its metadata's format, key (when given) and content digest
    match and every value is finite; else :class:`CacheError`."""
    data = path.read_bytes()  # read once: the checks and the values are of the same bytes
    try:
        tensors = load(data)
        metadata = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
    except (SafetensorError, ValueError) as exc:
        raise CacheError(f"unreadable or truncated ({first_line(exc)})") from None
    if metadata.get("format") != FORMAT:
        raise CacheError("no content digest (written by an older alignkit or another tool)")
    if key is not None and metadata.get("key") != key:
        raise CacheError(f"it holds the key {metadata.get('key')!r}, not {key!r}")
    if content_digest(tensors) != metadata.get("sha256"):
        raise CacheError("its content does not match its digest (edited or damaged)")
    if not all(t.isfinite().all() for t in tensors.values() if t.is_floating_point()):
        raise CacheError("it holds non-finite values")
    return tensors


def check_layout(tensors: dict[str, torch.Tensor], dataset: Sequence[TokenizedRecord]) -> None:
    """The records, their response counts and the mismatched values are the dataset's (else CacheError)."""
    names = {"index", "counts", "rows"}
    if not names <= tensors.keys():
        raise CacheError(f"it lacks {sorted(names - tensors.keys())}")
    items = sorted(dataset, key=lambda item: item.index)
    if tensors["index"].tolist() != [item.index for item in items]:
        raise CacheError("its records are not the dataset's")
    if tensors["counts"].tolist() != [len(item.response_ids) for item in items]:
        raise CacheError("its response counts are not the dataset's")
    if tuple(tensors["rows"].shape) != (int(tensors["counts"].sum()),):
        raise CacheError(f"its rows have shape {tuple(tensors['rows'].shape)}")
    mismatched = bool(items) and "mismatched_ids" in items[0].extra
    if ("mismatched" in tensors) != mismatched or (mismatched and tuple(tensors["mismatched"].shape) != (len(items),)):
        raise CacheError("its mismatched-response values do not fit the dataset")


def load_cache(path: Path, key: str | None = None, dataset: Sequence[TokenizedRecord] | None = None) -> Cache:
    """The cache in ``path``, verified (:func:`read_verified`; with ``dataset`` also :func:`check_layout`)."""
    tensors = read_verified(path, key)
    if dataset is not None:
        check_layout(tensors, dataset)
    cache: Cache = {}
    starts = torch.cumsum(tensors["counts"], 0) - tensors["counts"]
    for b, (index, start, count) in enumerate(zip(tensors["index"].tolist(), starts.tolist(),
                                                  tensors["counts"].tolist())):
        cache[index] = {"rows": tensors["rows"][start: start + count]}
        if "mismatched" in tensors:
            cache[index]["mismatched"] = tensors["mismatched"][b: b + 1]
    return cache


def cached_or_computed(path: Path, key: str, dataset: Sequence[TokenizedRecord], compute: Callable[[], Cache],
                       writer: bool, announce: bool = False) -> Cache:
    """The values in the cache file ``path`` when it is there and verified; otherwise ``compute()`` them and (when
    ``writer``: the main process) write them to ``path`` atomically, replacing a bad file after a one-line warning.
    ``announce``: say when the file is used."""
    if path.exists():
        try:
            values = load_cache(path, key, dataset)
        except CacheError as exc:
            warn(f"ignoring the cache file {path}: {exc}; recomputing it")
        else:
            if announce:
                print(f"[alignkit] reference log-probs from {path}")
            return values
    values = compute()
    if writer:
        save_cache(path, values, key)
    return values
