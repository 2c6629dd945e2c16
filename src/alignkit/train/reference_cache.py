"""Reference log-probs cached on disk, so a rerun, a resumed run or a sweep over loss hyperparameters does not
compute them again.

The file is keyed by a digest of everything the values depend on: the reference model's weights (every tensor of
its state dict, bytes included), the tokenized data (indices, prompt, response and mismatched token ids) and the
reduction (sum or per-token mean). Change any of them and the key changes, so a stale file is never read. Files
are safetensors (no pickle), written atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save

from alignkit.data.tokenize import TokenizedRecord
from alignkit.utils.io import atomic_file

Cache = dict[int, dict[str, torch.Tensor]]


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor in the state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_digest(dataset: Sequence[TokenizedRecord]) -> str:
    h = hashlib.sha256()
    for item in dataset:
        h.update(repr((item.index, item.prompt_ids, item.response_ids, item.record.ranking,
                       item.extra.get("mismatched_ids"))).encode())
    return h.hexdigest()


def cache_key(model: torch.nn.Module, dataset: Sequence[TokenizedRecord], reduction: str) -> str:
    return hashlib.sha256(f"{model_digest(model)}|{data_digest(dataset)}|{reduction}|v1".encode()).hexdigest()[:32]


def save_cache(path: Path, cache: Cache) -> None:
    indices = sorted(cache)
    tensors = {"index": torch.tensor(indices, dtype=torch.long),
               "counts": torch.tensor([len(cache[i]["rows"]) for i in indices], dtype=torch.long),
               "rows": torch.cat([cache[i]["rows"] for i in indices]).contiguous()}
    if indices and "mismatched" in cache[indices[0]]:
        tensors["mismatched"] = torch.cat([cache[i]["mismatched"] for i in indices]).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as f:
        f.write(save(tensors))


def load_cache(path: Path) -> Cache:
    tensors = load_file(str(path))
    cache: Cache = {}
    starts = torch.cumsum(tensors["counts"], 0) - tensors["counts"]
    for b, (index, start, count) in enumerate(zip(tensors["index"].tolist(), starts.tolist(),
                                                  tensors["counts"].tolist())):
        cache[index] = {"rows": tensors["rows"][start: start + count]}
        if "mismatched" in tensors:
            cache[index]["mismatched"] = tensors["mismatched"][b: b + 1]
    return cache
