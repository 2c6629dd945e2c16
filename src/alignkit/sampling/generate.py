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
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord, Text
from alignkit.data.tokenize import TokenizedRecord, is_conversational, render_prompt
from alignkit.models.logps import response_logps

BACKENDS = ("hf", "vllm")


@dataclass
class Sample:
    """One sampled response.

    ``logprobs`` holds, for every token of ``response_ids``, ``log softmax(logits / T)`` at the sampled token,
    where ``logits`` are the model's raw next-token logits and ``T`` the sampling temperature (``T = 1`` for
    greedy decoding): the log-probability under the temperature-scaled distribution *before* top-k / top-p
    truncation. At ``T = 1`` it is exactly the policy's per-token log-prob that a teacher-forced forward pass
    gives. ``None`` where the sampler did not provide it.
    """

    prompt_index: int
    text: str                 # the response as text (special tokens removed)
    prompt_ids: list[int]
    response_ids: list[int]   # EOS included when the model stopped by itself
    finished: bool            # ended with EOS rather than running out of tokens
    logprobs: list[float] | None = None  # one per response token (see the class docstring)

    def as_response(self, prompt: Text) -> Text:
        """This sample's text in the shape of ``prompt`` (see :func:`as_response`)."""
        return as_response(prompt, self.text)


def as_response(prompt: Text, text: str) -> Text:
    """A sampled text in the shape of ``prompt``: an assistant message for conversations, else text."""
    return [{"role": "assistant", "content": text}] if is_conversational(prompt) else text


@dataclass
class SamplingConfig:
    """How to sample: K samples per prompt, length, temperature (0: greedy), nucleus / top-k truncation
    (``top_p=1`` and ``top_k=0`` disable them), jobs per batch, seed, and the engine (``hf`` | ``vllm``)."""

    num_samples: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 64
    seed: int = 0
    backend: str = "hf"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown sampling backend '{self.backend}'; choose one of {', '.join(BACKENDS)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.num_samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("num_samples, batch_size and max_new_tokens must be >= 1")


# ------------------------------------------------------------------------------------ shared by the samplers
def encode_prompts(tokenizer: Any, prompts: Sequence[Text]) -> list[list[int]]:
    """Token ids of every rendered prompt (chat template + generation prompt for conversations)."""
    return [tokenizer(render_prompt(tokenizer, p), add_special_tokens=not is_conversational(p))["input_ids"]
            for p in prompts]


def plan_batches(encoded: Sequence[Sequence[int]], num_samples: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Jobs ``(output position, prompt index)``, ``num_samples`` per prompt, sorted by prompt length (stable)
    and cut into batches of ``batch_size``. Output position ``j`` is the job's place in prompt-major order."""
    jobs = [(i * num_samples + k, i) for i in range(len(encoded)) for k in range(num_samples)]
    jobs.sort(key=lambda job: len(encoded[job[1]]))
    return [jobs[s: s + batch_size] for s in range(0, len(jobs), batch_size)]


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch number ``batch`` of a sampling run seeded with ``seed``."""
    return seed * 1_000_003 + batch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``rows`` left-padded with ``pad_id`` to the longest row."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long)
        attention[row, width - len(ids):] = 1
    return input_ids, attention


def make_sample(tokenizer: Any, prompt_index: int, prompt_ids: Sequence[int], new_ids: Sequence[int],
                eos_id: int | None, logprobs: Sequence[float] | None = None) -> Sample:
    """A :class:`Sample` from generated ids: cut after the first EOS (kept), log-probs cut alike, text decoded."""
    new = list(new_ids)
    finished = eos_id is not None and eos_id in new
    if finished:
        new = new[: new.index(eos_id) + 1]
    lps = None if logprobs is None else [float(x) for x in list(logprobs)[: len(new)]]
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return Sample(prompt_index, text, list(prompt_ids), new, finished, lps)


def local_model_dir(model: Any) -> str:
    """The local directory a loaded model came from (``model.name_or_path``), for engines that load by path."""
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not path or not (Path(path) / "config.json").is_file():
        raise ValueError("backend 'vllm' loads the model by path: `model.name_or_path` must be a local model "
                         f"directory with a config.json (got {path!r}); save the model with save_pretrained and "
                         "load it from there, or use backend 'hf'")
    return str(path)


# ------------------------------------------------------------------------------------------ decoding
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


def _forward_parameters(model: Any) -> set[str]:
    """Keyword parameters of the model's ``forward`` (of the wrapped model for PEFT wrappers)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _forward(model: Any, params: set[str], cache: Any, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """Last-position logits and the updated KV cache, passed as ``cache=`` where the model's ``forward`` takes it
    (recent transformers), else as ``past_key_values=``."""
    device = next(model.parameters()).device
    inputs = {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}
    if "logits_to_keep" in params:
        inputs["logits_to_keep"] = 1  # no full-vocabulary logits for the prompt positions
    inputs["cache" if "cache" in params else "past_key_values"] = cache
    out = model(**inputs, use_cache=True)
    new_cache = out.get("cache") if "cache" in params else out.get("past_key_values")
    return out.logits[:, -1, :], new_cache


def decode(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, config: SamplingConfig,
           eos_id: int | None, pad_id: int, generator: torch.Generator | None = None,
           drop_finished: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one left-padded batch with the model's KV cache, token by token (:func:`sample_next`: greedy for
    ``temperature=0``, else top-k / top-p truncation and a draw); returns ``(new token ids [B, steps],
    log-probs [B, steps])`` on the CPU, ``pad_id`` / 0 after a row's EOS.

    Position ids count real tokens only (``cumsum(attention_mask) - 1``), so a left-padded row decodes as it
    would alone; a batch without padding is run without an attention mask. With ``drop_finished``, rows that
    have emitted EOS are removed from the batch and the cache (once at least a quarter of the rows has ended, so
    the cache is not copied at every step) where the cache supports it (``batch_select_indices``). The loop ends
    when every row has ended or after ``config.max_new_tokens`` steps."""
    device = next(model.parameters()).device
    params = _forward_parameters(model)
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
    for t in range(steps):
        mask = full_mask[:, : width + t] if full_mask is not None else None
        logits, cache = _forward(model, params, cache, input_ids=step_ids, attention_mask=mask,
                                 position_ids=positions)
        nxt, lp = sample_next(logits, config.temperature, config.top_k, config.top_p, generator)
        live = ~ended
        out_rows = active[live.cpu()] if bool(ended.any()) else active
        tokens[out_rows, t] = nxt[live].cpu()
        logps[out_rows, t] = lp[live].float().cpu()
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
            active, ended = active[keep.cpu()], ended[keep]
            step_ids, positions = step_ids[keep], positions[keep]
            if full_mask is not None:
                full_mask = full_mask[keep]
    return tokens, logps


# ---------------------------------------------------------------------------------------------- samplers
@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[Text], config: SamplingConfig | None = None,
             progress: bool = False, desc: str = "sampling") -> list[Sample]:
    """Sample ``config.num_samples`` responses for every prompt; returns them prompt-major.

    ``backend="hf"``: alignkit's decoding loop (:func:`decode`) with the model's KV cache on length-sorted,
    left-padded batches (see the module docstring for determinism; batch ``b`` draws from the global torch RNG
    seeded with ``batch_seed(seed, b)``); each sample carries ``logprobs`` (see :class:`Sample`), computed at
    every step from the raw next-token logits. ``backend="vllm"``: the model is loaded by vLLM from
    ``model.name_or_path``, which must be a local directory (:func:`alignkit.sampling.vllm_backend.generate_vllm`);
    in-memory weight changes not saved there are not seen. The model's train/eval mode is restored on return.
    """
    config = config or SamplingConfig()
    if config.backend == "vllm":
        from alignkit.sampling.vllm_backend import generate_vllm

        return generate_vllm(local_model_dir(model), tokenizer, prompts, config)
    was_training = model.training
    model.eval()
    try:
        return _generate_hf(model, tokenizer, prompts, config, progress, desc)
    finally:
        model.train(was_training)


def _generate_hf(model: Any, tokenizer: Any, prompts: Sequence[Text], config: SamplingConfig, progress: bool,
                 desc: str) -> list[Sample]:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = encode_prompts(tokenizer, prompts)
    batches = plan_batches(encoded, config.num_samples, config.batch_size)
    samples: list[Sample | None] = [None] * (len(encoded) * config.num_samples)
    for b, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)):
        input_ids, attention = left_pad([encoded[i] for _, i in batch], pad)
        torch.manual_seed(batch_seed(config.seed, b))
        new, logprobs = decode(model, input_ids, attention, config, eos, pad)
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
