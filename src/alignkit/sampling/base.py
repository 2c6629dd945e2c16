"""The bottom of ``sampling/``: what every sampler shares.

:class:`Sample` (one sampled response with its token ids and per-token log-probs), :class:`SamplingConfig`, and
the helpers both backends use to turn prompts into the same token ids and results back into samples: prompt
encoding (chat template with the generation prompt, as in training), length-sorted batching, per-batch seeds,
left padding, cutting a generated row after EOS. Both the Hugging Face loop (:mod:`alignkit.sampling.generate`)
and the vLLM backend (:mod:`alignkit.sampling.vllm_backend`) import from here, and nothing here imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from alignkit.data.records import Text
from alignkit.data.tokenize import is_conversational, render_prompt

BACKENDS = ("hf", "vllm")


@dataclass
class Sample:
    """One sampled response.

    ``logprobs`` holds, for every token of ``response_ids``, ``log softmax(logits / T)`` at the sampled token,
    where ``logits`` are the next-token logits the token was drawn from (the model's raw logits, or a guide's
    adjusted logits when decoding with a guide, :mod:`alignkit.sampling.guide`) and ``T`` the sampling
    temperature (``T = 1`` for greedy decoding): the log-probability under the temperature-scaled distribution
    *before* top-k / top-p truncation. Unguided at ``T = 1`` it is exactly the policy's per-token log-prob that a
    teacher-forced forward pass gives. ``None`` where the sampler did not provide it.
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


def uses_chat(tokenizer: Any, chat: bool = True) -> bool:
    """Whether prompts given to a model with ``tokenizer`` go through its chat template: always when the tokenizer
    has one, unless ``chat`` is False (``--no-chat``). A chat model answers a user turn; given bare text it
    continues it and rarely stops (one rule for eval, generate and eval rm)."""
    return chat and bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, prompt: Text, chat: bool = True) -> Text:
    """``prompt`` as a chat model is asked: a text prompt becomes one user turn when :func:`uses_chat`, which
    :func:`encode_prompts` then renders with the chat template and the generation prompt exactly as training
    renders conversational prompts (:func:`alignkit.data.tokenize.render_prompt`). Conversations are unchanged."""
    if isinstance(prompt, str) and uses_chat(tokenizer, chat):
        return [{"role": "user", "content": prompt}]
    return prompt


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
