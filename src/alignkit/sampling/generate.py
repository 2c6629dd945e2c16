"""Batched sampling from Hugging Face causal LMs with the KV cache (alignkit's own decoding loop), or vLLM.

Prompts are rendered exactly as in training (chat template with the generation prompt for conversational
prompts), left-padded, and sampled K times each. Results keep the token ids of every response so that
log-probs can be scored exactly later (:func:`score_samples`), and the sampler's own per-token log-probs
(:attr:`Sample.logprobs`).

Backend ``hf`` decodes with :func:`decode` (one forward per token with the model's KV cache, as
``model.generate`` does) rather than ``model.generate``: it computes the log-probs as it goes instead of keeping
every step's logits, draws tokens by inverse-CDF sampling (one uniform number per row instead of
``torch.multinomial``'s exponential draw per vocabulary entry, the dominant sampling cost for large
vocabularies on CPU) and drops rows that have ended from the batch (and their KV cache) as it goes.

Batching and determinism: the ``len(prompts) * num_samples`` jobs are sorted by prompt length (stable, so the K
samples of a prompt stay together) before they are cut into batches of ``batch_size``, which keeps left padding
small; the output is put back in prompt-major order (all samples of prompt 0 first). Each batch is seeded from
``seed`` and its position, so the samples are a deterministic function of (model, prompts, ``seed``,
``batch_size``, ``num_samples``) and do not depend on what ran before; changing ``batch_size`` changes which
random numbers a job gets, hence the samples. (The samples are a function of the sampler too: they changed when
``hf`` moved from ``model.generate`` to :func:`decode`.)

Guides: :func:`decode` and :func:`generate` take an optional per-step guide (:mod:`alignkit.sampling.guide`)
that adjusts the next-token logits before the draw (the hook inference-time alignment methods in
:mod:`alignkit.decoding` are built on). Layout: :mod:`alignkit.sampling.base` (Sample, SamplingConfig, prompt
encoding and batching, shared with :mod:`alignkit.sampling.vllm_backend`), :mod:`alignkit.sampling.step` (the
model forward with its KV cache, truncation, the draw), :mod:`alignkit.sampling.guide`, then this module; every
name of the lower modules that callers used from here is re-exported.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord, Text
from alignkit.data.tokenize import TokenizedRecord
from alignkit.models.logps import response_logps
from alignkit.sampling.base import (  # noqa: F401  (re-exported: callers import them from here)
    BACKENDS,
    Sample,
    SamplingConfig,
    as_response,
    batch_seed,
    encode_prompts,
    left_pad,
    local_model_dir,
    make_sample,
    plan_batches,
)
from alignkit.sampling.guide import Guide, GuideBatch, GuideOutput, GuideStep
from alignkit.sampling.step import (  # noqa: F401  (re-exported)
    draw,
    forward_parameters,
    forward_step,
    sample_next,
    token_logps,
    truncate_logits,
)
from alignkit.sampling.vllm_backend import generate_vllm


# ------------------------------------------------------------------------------------------ decoding
def decode(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: SamplingConfig,
           eos_id: int | None, pad_id: int, generator: torch.Generator | None = None,
           drop_finished: bool = True, guide: Guide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one left-padded batch with the model's KV cache, token by token (:func:`sample_next`: greedy for
    ``temperature=0``, else top-k / top-p truncation and a draw); returns ``(new token ids [B, steps],
    log-probs [B, steps])`` on the CPU, ``pad_id`` / 0 after a row's EOS.

    Position ids count real tokens only (``cumsum(attention_mask) - 1``), so a left-padded row decodes as it
    would alone; a batch without padding is run without an attention mask. With ``drop_finished``, rows that
    have emitted EOS are removed from the batch and the cache (once at least a quarter of the rows has ended, so
    the cache is not copied at every step) where the cache supports it (``batch_select_indices``). The loop ends
    when every row has ended or after ``config.max_new_tokens`` steps.

    ``guide`` (:class:`alignkit.sampling.guide.Guide`, contract in that module): at every step it turns the
    model's logits into the logits the token is drawn from (and the log-probs are taken from), may force tokens,
    is told the chosen tokens (``advance``) and follows dropped rows (``select``). ``None``: the model's own
    logits, exactly as without the hook (same random numbers, same tokens)."""
    device = next(model.parameters()).device
    params = forward_parameters(model)
    rows, width = input_ids.shape
    steps = config.max_new_tokens
    padded = not bool(attention_mask.bool().all())
    full_mask = torch.cat([attention_mask.to(device).long(),
                           torch.ones(rows, steps, dtype=torch.long, device=device)], dim=1) if padded else None
    positions = (attention_mask.to(device).long().cumsum(-1) - 1).clamp(min=0)
    tokens = torch.full((rows, steps), pad_id, dtype=torch.long)
    logps = torch.zeros(rows, steps)
    active = torch.arange(rows)             # output row of every batch row
    ended = torch.zeros(rows, dtype=torch.bool, device=device)
    step_ids, cache = input_ids.to(device), None
    if guide is not None:
        guide.start(GuideBatch(input_ids.to(device), attention_mask.to(device), eos_id, pad_id, steps,
                               config.temperature))
    for t in range(steps):
        mask = full_mask[:, : width + t] if full_mask is not None else None
        logits, cache = forward_step(model, params, cache, input_ids=step_ids, attention_mask=mask,
                                     position_ids=positions)
        if guide is None:
            nxt, lp = sample_next(logits, config.temperature, config.top_k, config.top_p, generator)
        else:
            state = GuideStep(t, active, ended.clone(), tokens[active, :t], step_ids, mask, positions)
            nxt, lp = _guided_step(guide, logits, state, config, generator)
        live = ~ended
        out_rows = active[live.cpu()] if bool(ended.any()) else active
        tokens[out_rows, t] = nxt[live].cpu()
        logps[out_rows, t] = lp[live].float().cpu()
        if guide is not None:
            guide.advance(nxt, state)
        if eos_id is not None:
            ended |= nxt == eos_id
        n_ended = int(ended.sum())
        if n_ended == ended.shape[0]:
            break
        step_ids = nxt[:, None]
        positions = positions[:, -1:] + 1
        if drop_finished and n_ended and 4 * n_ended >= ended.shape[0] and hasattr(cache, "batch_select_indices"):
            keep = (~ended).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            if guide is not None:
                guide.select(keep)
            active, ended = active[keep.cpu()], ended[keep]
            step_ids, positions = step_ids[keep], positions[keep]
            if full_mask is not None:
                full_mask = full_mask[keep]
    return tokens, logps


def _guided_step(guide: Guide, logits: torch.Tensor, state: GuideStep, config: SamplingConfig,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_next` on the guide's logits, then its forced tokens (if any) in place of the draws."""
    out = guide.process(logits, state)
    forced = None
    if isinstance(out, GuideOutput):
        out, forced = out.logits, out.tokens
    if out.shape != logits.shape:
        raise ValueError(f"{type(guide).__name__}.process returned logits of shape {tuple(out.shape)} for "
                         f"{tuple(logits.shape)}: one row per current row, one column per vocabulary entry")
    nxt, lp = sample_next(out, config.temperature, config.top_k, config.top_p, generator)
    if forced is not None:
        forced = forced.to(nxt.device).long()
        if forced.shape != nxt.shape:
            raise ValueError(f"{type(guide).__name__}.process forced {tuple(forced.shape)} tokens for "
                             f"{nxt.shape[0]} rows")
        use = forced >= 0
        if bool(use.any()):
            nxt = torch.where(use, forced, nxt)
            lp = token_logps(out, config.temperature, nxt)
    return nxt, lp


# ---------------------------------------------------------------------------------------------- samplers
@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[Text], config: SamplingConfig | None = None,
             progress: bool = False, desc: str = "sampling", guide: Guide | None = None) -> list[Sample]:
    """Sample ``config.num_samples`` responses for every prompt; returns them prompt-major.

    ``backend="hf"``: alignkit's decoding loop (:func:`decode`) with the model's KV cache on length-sorted,
    left-padded batches (see the module docstring for determinism; batch ``b`` draws from the global torch RNG
    seeded with ``batch_seed(seed, b)``); each sample carries ``logprobs`` (see :class:`Sample`), computed at
    every step from the raw next-token logits. ``backend="vllm"``: the model is loaded by vLLM from
    ``model.name_or_path``, which must be a local directory (:func:`alignkit.sampling.vllm_backend.generate_vllm`);
    in-memory weight changes not saved there are not seen. The model's train/eval mode is restored on return.

    ``guide``: a per-step guide (:mod:`alignkit.sampling.guide`) for every batch, backend ``hf`` only; the
    samples' ``logprobs`` are then those of the guided distribution. ``None``: unguided, as before.
    """
    config = config or SamplingConfig()
    if config.backend == "vllm":
        if guide is not None:
            raise ValueError("a decoding guide runs in alignkit's own loop: use backend 'hf' with a guide")
        return generate_vllm(local_model_dir(model), tokenizer, prompts, config)
    was_training = model.training
    model.eval()
    try:
        return _generate_hf(model, tokenizer, prompts, config, progress, desc, guide)
    finally:
        model.train(was_training)


def _generate_hf(model: Any, tokenizer: Any, prompts: Sequence[Text], config: SamplingConfig, progress: bool,
                 desc: str, guide: Guide | None = None) -> list[Sample]:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = encode_prompts(tokenizer, prompts)
    batches = plan_batches(encoded, config.num_samples, config.batch_size)
    samples: list[Sample | None] = [None] * (len(encoded) * config.num_samples)
    for b, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)):
        input_ids, attention = left_pad([encoded[i] for _, i in batch], pad)
        torch.manual_seed(batch_seed(config.seed, b))
        new, logprobs = decode(model, input_ids, attention, config, eos, pad, guide=guide)
        for row, (j, i) in enumerate(batch):
            samples[j] = make_sample(tokenizer, i, encoded[i], new[row].tolist(), eos, logprobs[row].tolist())
    return samples  # type: ignore[return-value]  # every position is filled


@torch.no_grad()
def score_samples(model: Any, samples: Sequence[Sample], pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Summed log-probs of each sample's response tokens under ``model`` (e.g. a reference, for KL)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(samples), batch_size):
        items = [TokenizedRecord(i, PreferenceRecord(prompt="", responses=["-"]), s.prompt_ids, [s.response_ids])
                 for i, s in enumerate(samples[start: start + batch_size])]
        out.append(response_logps(model, collate(items, pad_id).to(device)).sum().float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
