"""vLLM backend for :func:`alignkit.sampling.generate.generate` (``SamplingConfig(backend="vllm")``).

Install with ``pip install alignkit[vllm]`` (vLLM >= 0.10.2, which has ``logprobs_mode``); vLLM needs a GPU.
**This module is unchecked on a GPU here**: the development machines have no GPU and no vLLM; only the error
path without vLLM is tested. It is written against vLLM's documented offline API (``LLM``,
``SamplingParams``, ``TokensPrompt``).

What it does, so that results have the same shape and meaning as the Hugging Face backend:

- prompts are rendered and tokenized by alignkit (:func:`alignkit.sampling.base.encode_prompts`, chat
  template with the generation prompt) and passed to vLLM as token ids, so the engine sees exactly what training
  sees;
- each prompt is one request with ``n = num_samples`` and its own seed ``batch_seed(seed, prompt_index)``:
  results do not depend on how vLLM schedules the requests (but vLLM's sampler is not the Hugging Face one, so
  the two backends draw different samples from the same seed);
- generation stops at the tokenizer's EOS (``stop_token_ids``), which is kept in ``response_ids`` as with HF;
- ``logprobs``: vLLM returns the sampled token's log-prob (``SamplingParams(logprobs=0)``) computed from the
  raw logits (``logprobs_mode="raw_logprobs"``), i.e. ``log softmax(logits)`` at temperature 1. That is the
  :class:`~alignkit.sampling.base.Sample` convention for ``temperature`` 0 (greedy) and 1; for any other
  temperature vLLM cannot return ``log softmax(logits / T)`` before truncation, so ``logprobs`` is ``None``
  (score the samples with :func:`alignkit.sampling.generate.score_samples` instead).

The model is loaded from a path (or hub name): ``generate`` with ``backend="vllm"`` passes
``model.name_or_path``, which must be a local directory holding the weights to sample from (save the policy with
``save_pretrained`` first; in-memory changes are not seen). A new engine is built on every call.
"""

from __future__ import annotations

from typing import Any, Sequence

from alignkit.data.records import Text
from alignkit.sampling.base import Sample, SamplingConfig, batch_seed, encode_prompts, make_sample

INSTALL_HINT = "the vLLM backend needs vLLM: pip install alignkit[vllm]; needs a GPU"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return vllm


def generate_vllm(model_path_or_name: str, tokenizer: Any, prompts: Sequence[Text],
                  config: SamplingConfig | None = None, **engine_kwargs: Any) -> list[Sample]:
    """Sample ``config.num_samples`` responses per prompt with vLLM (Kwon et al. 2023, "Efficient Memory
    Management for Large Language Model Serving with PagedAttention"); returns :class:`Sample` objects in
    prompt-major order, like the HF backend (module docstring: seeding, EOS, which ``logprobs`` are returned).

    ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``tensor_parallel_size``, ``dtype``).
    Raises ImportError naming ``pip install alignkit[vllm]`` when vLLM is not installed."""
    vllm = _import_vllm()
    from vllm.inputs import TokensPrompt

    config = config or SamplingConfig(backend="vllm")
    eos = tokenizer.eos_token_id
    greedy = config.temperature <= 0
    keep_logprobs = greedy or config.temperature == 1.0
    encoded = encode_prompts(tokenizer, prompts)
    params = [vllm.SamplingParams(n=config.num_samples, temperature=0.0 if greedy else config.temperature,
                                  top_p=1.0 if greedy else config.top_p,
                                  top_k=config.top_k if (config.top_k > 0 and not greedy) else -1,
                                  max_tokens=config.max_new_tokens, seed=batch_seed(config.seed, i),
                                  stop_token_ids=[eos] if eos is not None else None, logprobs=0)
              for i in range(len(encoded))]
    options = {"seed": config.seed, "logprobs_mode": "raw_logprobs", **engine_kwargs}
    llm = vllm.LLM(model=str(model_path_or_name), **options)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params, use_tqdm=False)
    samples: list[Sample] = []
    for i, request in enumerate(outputs):  # vLLM returns the requests in input order
        completions = list(request.outputs)
        if len(completions) != config.num_samples:
            raise RuntimeError(f"vLLM returned {len(completions)} samples for prompt {i}, "
                               f"expected {config.num_samples}")
        for completion in sorted(completions, key=lambda c: c.index):
            ids = list(completion.token_ids)
            logprobs = None
            if keep_logprobs and completion.logprobs is not None:
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            if completion.finish_reason == "stop" and eos is not None and (not ids or ids[-1] != eos):
                ids, logprobs = ids + [eos], None  # stopped at EOS without returning it: add it, log-prob unknown
            samples.append(make_sample(tokenizer, i, encoded[i], ids, eos, logprobs))
    return samples
