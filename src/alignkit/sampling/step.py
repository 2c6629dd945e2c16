"""One decoding step: a causal LM's forward with its own KV cache, top-k / top-p truncation, the token draw.

Used by the decoding loop (:func:`alignkit.sampling.generate.decode`) and by guides that step a model of their
own beside it (:class:`CachedLM`, e.g. the reference of a geometric mixture, a value model, a small tuned model
for nudging).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def truncate_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) truncation (Holtzman et al. 2020, "The Curious Case of Neural Text
    Degeneration"): tokens outside the ``top_k`` largest, then outside the smallest set of most likely tokens
    whose probability reaches ``top_p``, get ``-inf``. ``top_k=0`` and ``top_p=1`` disable them."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs        # mass of the more likely tokens
        drop_sorted = mass_before >= top_p            # the first token is never dropped (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs`` ([rows, vocab], non-negative, rows need not sum to 1) by inverse-CDF
    sampling: the first token whose cumulative probability exceeds ``u * total`` with ``u ~ U[0, 1)``. Tokens of
    probability 0 are never drawn. Uses one random number per row (``torch.multinomial`` draws one exponential
    per vocabulary entry, which dominates a decoding step's sampling cost for large vocabularies on CPU)."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=torch.float64)
    tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
    return tokens.clamp(max=probs.shape[-1] - 1)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: ``(next token ids, their log-probs)``. The token is the argmax for ``temperature=0``,
    else a draw (:func:`draw`) from ``softmax(truncate(logits / T))``; the log-prob is ``log softmax(logits / T)``
    at it, before truncation (``T = 1`` for greedy), the convention of :attr:`Sample.logprobs`."""
    logits = logits.float()
    scaled = logits if temperature <= 0 else logits / temperature
    logps = torch.log_softmax(scaled, dim=-1)
    if temperature <= 0:
        tokens = logits.argmax(-1)
    elif top_k or top_p < 1.0:
        tokens = draw(torch.softmax(truncate_logits(scaled, top_k, top_p), dim=-1), generator)
    else:
        tokens = draw(logps.exp(), generator)
    return tokens, logps.gather(-1, tokens[:, None])[:, 0]


def token_logps(logits: torch.Tensor, temperature: float, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits / T)`` at ``tokens`` (``T = 1`` for greedy), as :func:`sample_next` computes it."""
    logits = logits.float()
    scaled = logits if temperature <= 0 else logits / temperature
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None])[:, 0]


def forward_parameters(model: Any) -> set[str]:
    """Keyword parameters of the model's ``forward`` (of the wrapped model for PEFT wrappers)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return set()


def forward_step(model: Any, params: set[str], cache: Any, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """Last-position logits and the updated KV cache, passed as ``cache=`` where the model's ``forward`` takes it
    (recent transformers), else as ``past_key_values=``. ``params``: :func:`forward_parameters` of the model;
    inputs (``input_ids``, ``attention_mask``, ``position_ids``; ``None`` values allowed) are moved to the
    model's device."""
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}
    if "logits_to_keep" in params:
        inputs["logits_to_keep"] = 1  # no full-vocabulary logits for the prompt positions
    inputs["cache" if "cache" in params else "past_key_values"] = cache
    out = model(**inputs, use_cache=True)
    new_cache = out.get("cache") if "cache" in params else out.get("past_key_values")
    return out.logits[:, -1, :], new_cache


class CachedLM:
    """A causal LM stepped token by token with its own KV cache, for a guide that runs a second model in
    lock-step with the decoding loop: feed it the step's ``input_ids`` / ``attention_mask`` / ``position_ids``
    (:class:`alignkit.sampling.guide.GuideStep`) and it returns its next-token logits; :meth:`select` follows the
    loop when it drops finished rows. The model must share the decoding model's tokenizer (same ids)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.params = forward_parameters(model)
        self.cache: Any = None

    def reset(self) -> None:
        """Forget the cache (a new batch starts)."""
        self.cache = None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[rows, vocab]`` (on the model's device) after feeding these positions."""
        logits, self.cache = forward_step(self.model, self.params, self.cache, input_ids=input_ids,
                                          attention_mask=attention_mask, position_ids=position_ids)
        return logits

    def select(self, keep: torch.Tensor) -> None:
        """Keep only rows ``keep`` (indices into the current rows) of the cache."""
        if self.cache is None:
            return
        if not hasattr(self.cache, "batch_select_indices"):
            raise TypeError(f"{type(self.cache).__name__} cannot drop rows (no batch_select_indices)")
        self.cache.batch_select_indices(keep.to(next(self.model.parameters()).device))
