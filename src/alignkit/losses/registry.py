"""The loss registry: name -> :class:`LossSpec`.

Every loss is a pure function of response log-probs (and rewards, labels, masks) that returns per-example
losses and metrics. Its spec says which data kind it needs, which log-prob reduction it uses (``sum`` or
per-token ``mean`` — the choice that broke other toolkits' IPO and SimPO), whether it needs a reference
model, its hyperparameters with defaults, and the paper they come from. The CLI, the README's methods table
and the tests are all driven by this registry.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

Reduction = Literal["sum", "mean"]


@dataclass
class PairInputs:
    """Reduced log-probs of chosen (w) and rejected (l) responses, per example.

    ``policy_*`` carry gradients; ``ref_*`` are None for reference-free losses. ``chosen_nll`` is the
    per-token-mean negative log-likelihood of the chosen response (for SFT mixing terms).
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_nll: torch.Tensor | None = None


@dataclass
class LossOutput:
    losses: torch.Tensor                      # [B] per example
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B] per example


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable[..., LossOutput]
    data_kind: str
    reduction: Reduction
    needs_reference: bool
    paper: str
    defaults: dict[str, float]

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.fn) or "").splitlines()[0]

    def params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults updated with ``overrides``; unknown names are errors with a suggestion."""
        merged = dict(self.defaults)
        for key, value in (overrides or {}).items():
            if key not in self.defaults:
                raise KeyError(f"loss '{self.name}' has no parameter '{key}'{_suggest(key, self.defaults)}; "
                               f"its parameters: {sorted(self.defaults) or 'none'}")
            merged[key] = value
        return merged

    def __call__(self, inputs: Any, **overrides: Any) -> LossOutput:
        return self.fn(inputs, **self.params(overrides))


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, *, data_kind: str, reduction: Reduction, needs_reference: bool, paper: str
                  ) -> Callable[[Callable[..., LossOutput]], Callable[..., LossOutput]]:
    """Register ``fn(inputs, **params)``; its keyword defaults become the spec's documented defaults."""

    def wrap(fn: Callable[..., LossOutput]) -> Callable[..., LossOutput]:
        if name in LOSSES:
            raise ValueError(f"loss '{name}' is registered twice")
        defaults = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                    if p.default is not inspect.Parameter.empty}
        LOSSES[name] = LossSpec(name, fn, data_kind, reduction, needs_reference, paper, defaults)
        return fn

    return wrap


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'{_suggest(name, LOSSES)}; available: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def _suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
