"""Batched sampling from Hugging Face causal LMs with the KV cache (``model.generate``).

Prompts are rendered exactly as in training (chat template with the generation prompt for conversational
prompts), left-padded, and sampled K times each. Results keep the token ids of every response so that
log-probs can be scored exactly later (:func:`score_samples`). Each batch is seeded from ``seed`` and its
position, so results do not depend on what ran before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord, Text
from alignkit.data.tokenize import TokenizedRecord, is_conversational, render_prompt
from alignkit.logps import response_logps


@dataclass
class Sample:
    prompt_index: int
    text: str                 # the response as text (special tokens removed)
    prompt_ids: list[int]
    response_ids: list[int]   # EOS included when the model stopped by itself
    finished: bool            # ended with EOS rather than running out of tokens

    def as_response(self, prompt: Text) -> Text:
        return as_response(prompt, self.text)


def as_response(prompt: Text, text: str) -> Text:
    """A sampled text in the shape of ``prompt``: an assistant message for conversations, else text."""
    return [{"role": "assistant", "content": text}] if is_conversational(prompt) else text


@dataclass
class SamplingConfig:
    num_samples: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 64
    seed: int = 0


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[Text], config: SamplingConfig | None = None,
             progress: bool = False, desc: str = "sampling") -> list[Sample]:
    """Sample ``config.num_samples`` responses for every prompt; returns them prompt-major."""
    config = config or SamplingConfig()
    model.eval()
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    encoded = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=not is_conversational(p))["input_ids"]
               for p in prompts]
    jobs = [(i, ids) for i, ids in enumerate(encoded) for _ in range(config.num_samples)]
    samples: list[Sample] = []
    for b, start in enumerate(tqdm(range(0, len(jobs), config.batch_size), desc=desc, disable=not progress,
                                   dynamic_ncols=True, leave=False)):
        chunk = jobs[start: start + config.batch_size]
        width = max(len(ids) for _, ids in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, (_, ids) in enumerate(chunk):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        torch.manual_seed(config.seed * 1_000_003 + b)
        sampling = config.temperature > 0
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                             max_new_tokens=config.max_new_tokens, do_sample=sampling,
                             temperature=config.temperature if sampling else None,
                             top_p=config.top_p if sampling else None,
                             top_k=config.top_k if sampling else None, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
        for row, (i, ids) in enumerate(chunk):
            new = out[row, width:].tolist()
            finished = eos in new
            new = new[: new.index(eos) + 1] if finished else new
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            samples.append(Sample(i, text, list(ids), new, finished))
    return samples


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
