"""The per-step guide hook of the decoding loop (:func:`alignkit.sampling.generate.decode`), logits-processor style.

A :class:`Guide` sees, at every decoding step, the decoding model's next-token logits of the rows still in the
batch and returns adjusted logits (or forces tokens); the loop then draws from them exactly as it draws from the
model's own logits (temperature, top-k / top-p truncation, the same random numbers). Inference-time alignment
methods that change the next-token distribution are guides over this one loop: the Nash-MD geometric mixture
(:mod:`alignkit.decoding.mixture`), and the same shape fits reward-guided decoding (ARGS: logits + w * reward
of the top-k candidate continuations), value-guided decoding (logits + Q(s, a) / beta), nudging (a small aligned
model takes over on uncertain tokens: forced tokens) and proxy/weak-to-strong tuning (logits + (tuned - base)).

Contract, per decoded batch (``B`` rows, prompts left-padded to width ``W``)::

    guide.start(GuideBatch)                       once, before the first step: reset per-batch state
    for t in 0, 1, ...:                           at most max_new_tokens steps
        logits = model(step.input_ids, ...)       the decoding model's next-token logits [R, V]
        out = guide.process(logits, step)         -> adjusted logits [R, V], or GuideOutput(logits, tokens)
        tokens, logps = draw from out             log-probs are log softmax(adjusted / T) at the tokens
        guide.advance(tokens, step)               the chosen tokens [R] (fed to the model at step t + 1)
        if the loop drops finished rows:
            guide.select(keep)                    keep [R'] indices into the current R rows, in order

- ``R`` rows are current at a step; ``step.rows[i]`` is the *original* batch row (0..B-1) of current row ``i``,
  which also indexes :class:`GuideBatch` and the returned samples. Rows are dropped only through ``select``,
  and ``rows`` is then ``rows[keep]``: a guide with per-row state (its own KV cache, running sums) indexes it by
  ``keep`` there, or keeps it by original row and reads ``step.rows``.
- ``step.ended[i]``: row ``i`` emitted EOS at an earlier step but is still in the batch (the loop drops ended rows
  only in bulk, or never with ``drop_finished=False``); whatever is drawn for it is discarded, so a guide need not
  treat it specially but must accept it.
- ``step.input_ids`` / ``attention_mask`` / ``position_ids`` are exactly what the decoding model consumed at this
  step (the prompts at ``t = 0``, the previous step's tokens after; the mask is ``None`` when the batch has no
  padding). A guide with a model of its own on the same tokenizer feeds it the same three
  (:class:`alignkit.sampling.step.CachedLM`) and gets next-token logits for the same prefix.
- ``process`` must return ``[R, V]`` logits for the same rows (any float dtype; ``-inf`` excludes a token) and
  must not draw from the global torch RNG (that would change the loop's draws). With ``temperature = 0`` the
  loop takes their argmax. ``GuideOutput.tokens``: a token per row, ``-1`` = draw as usual; the loop still draws
  for every row (so forcing changes no other row's random numbers) and logs ``log softmax(adjusted / T)`` at the
  forced token (``-inf`` if the guide masked it).
- ``advance`` runs after every step, the last included; a guide that needs its own forward on the chosen tokens
  can do it here or, cheaper, at the next ``process`` (from ``step.input_ids``), which skips the unused forward
  after the last step.
- No guide (``guide=None``, the default) leaves the loop exactly as it was: same draws, same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch


@dataclass
class GuideBatch:
    """A batch about to be decoded: the left-padded prompts and what the loop was asked to do."""

    input_ids: torch.Tensor        # [B, W] prompts, left-padded with pad_id
    attention_mask: torch.Tensor   # [B, W] 1 on real tokens
    eos_id: int | None
    pad_id: int
    max_new_tokens: int
    temperature: float             # 0: greedy


@dataclass
class GuideStep:
    """The loop's state at step ``step`` (the ``step``-th new token is being chosen), for the ``R`` current rows."""

    step: int
    rows: torch.Tensor                    # [R] long, CPU: original batch row of every current row
    ended: torch.Tensor                   # [R] bool: ended at an earlier step, still in the batch (token discarded)
    tokens: torch.Tensor                  # [R, step] long, CPU: tokens chosen so far (pad_id after a row's EOS)
    input_ids: torch.Tensor               # [R, n] what the decoding model consumed at this step
    attention_mask: torch.Tensor | None   # [R, W + step], None when the batch has no padding
    position_ids: torch.Tensor            # [R, n]


@dataclass
class GuideOutput:
    """What :meth:`Guide.process` may return instead of bare logits: logits and forced tokens (``-1``: draw)."""

    logits: torch.Tensor
    tokens: torch.Tensor | None = None    # [R] long


class Guide:
    """A per-step guide of the decoding loop (module docstring: the contract). The loop calls these four methods
    and nothing else (any object that has them will do); subclass it to inherit the no-op defaults:
    :meth:`process` returns the logits unchanged, the other hooks do nothing. ``Guide()`` is the identity."""

    def start(self, batch: GuideBatch) -> None:
        """A new batch starts: reset per-batch state (caches, running sums)."""

    def process(self, logits: torch.Tensor, step: GuideStep) -> torch.Tensor | GuideOutput:
        """Adjusted next-token logits ``[R, V]`` for the current rows (or a :class:`GuideOutput`)."""
        return logits

    def advance(self, tokens: torch.Tensor, step: GuideStep) -> None:
        """The tokens ``[R]`` chosen at ``step`` for the current rows (garbage for ``step.ended`` rows)."""

    def select(self, keep: torch.Tensor) -> None:
        """The loop keeps only current rows ``keep`` (``[R']`` indices, increasing); drop the others' state."""
