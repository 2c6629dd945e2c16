"""Batched sampling from Hugging Face causal LMs with the KV cache (``model.generate``), or vLLM.

Prompts are rendered exactly as in training (chat template with the generation prompt for conversational
prompts), left-padded, and sampled K times each. Results keep the token ids of every response so that
log-probs can be scored exactly later (:func:`score_samples`), and the sampler's own per-token log-probs
(:attr:`Sample.logprobs`).

Batching and determinism: the ``len(prompts) * num_samples`` jobs are sorted by prompt length (stable, so the K
samples of a prompt stay together) before they are cut into batches of ``batch_size``, which keeps left padding
small; the output is put back in prompt-major order (all samples of prompt 0 first). Each batch is seeded from
``seed`` and its position, so the samples are a deterministic function of (model, prompts, ``seed``,
``batch_size``, ``num_samples``) and do not depend on what ran before; changing ``batch_size`` changes which
random numbers a job gets, hence the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord, Text
from alignkit.data.tokenize import TokenizedRecord, is_conversational, render_prompt
from alignkit.logps import response_logps

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


# ---------------------------------------------------------------------------------------------- samplers
@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[Text], config: SamplingConfig | None = None,
             progress: bool = False, desc: str = "sampling") -> list[Sample]:
    """Sample ``config.num_samples`` responses for every prompt; returns them prompt-major.

    ``backend="hf"``: Hugging Face ``model.generate`` with the KV cache on length-sorted, left-padded batches
    (see the module docstring for determinism); each sample carries ``logprobs`` (see :class:`Sample`), read
    from the raw logits ``generate`` returns (``output_logits=True``), which it keeps for the whole batch until
    it ends: ``batch_size x vocab x max_new_tokens`` floats. ``backend="vllm"``: the model is loaded by vLLM from
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
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = encode_prompts(tokenizer, prompts)
    batches = plan_batches(encoded, config.num_samples, config.batch_size)
    sampling = config.temperature > 0
    scale = config.temperature if sampling else 1.0
    samples: list[Sample | None] = [None] * (len(encoded) * config.num_samples)
    for b, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)):
        input_ids, attention = left_pad([encoded[i] for _, i in batch], pad)
        width = input_ids.shape[1]
        torch.manual_seed(batch_seed(config.seed, b))
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                             max_new_tokens=config.max_new_tokens, do_sample=sampling,
                             temperature=config.temperature if sampling else None,
                             top_p=config.top_p if sampling else None,
                             top_k=config.top_k if sampling else None, eos_token_id=eos,
                             pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
        new = out.sequences[:, width:]
        logprobs = torch.stack([torch.log_softmax(step.float() / scale, dim=-1).gather(-1, new[:, t, None])[:, 0]
                                for t, step in enumerate(out.logits)], dim=1).cpu()
        new = new.cpu()
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
