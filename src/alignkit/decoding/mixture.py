"""Sampling from the geometric mixture of a policy and a reference, token by token (Nash-MD).

Munos et al. 2023, "Nash Learning from Human Feedback" (arXiv:2312.00886), regularise the policy towards a
reference ``mu`` by playing against the geometric mixture ``pi_c(y|x) ∝ pi(y|x)^(1-c) * mu(y|x)^c``. As in the
paper's experiments (and TRL's Nash-MD trainer), the mixture is formed per token: the next token is drawn from

    softmax(((1 - c) * policy_logits + c * reference_logits) / T),

which equals ``pi(.|x,y<t)^(1-c) * mu(.|x,y<t)^c`` renormalised (at ``T = 1``; the per-row constants of the
log-softmax cancel in the softmax). ``c = mixture_coef`` is the weight on the *reference*: ``c = 0`` samples the
policy, ``c = 1`` the reference. Both models decode in lock-step with their own KV cache.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from alignkit.data.records import Text
from alignkit.sampling.generate import (  # noqa: F401  (sample_next, truncate_logits: re-exported)
    Sample,
    SamplingConfig,
    _forward,
    _forward_parameters,
    batch_seed,
    encode_prompts,
    left_pad,
    make_sample,
    plan_batches,
    sample_next,
    truncate_logits,
)


def mixture_logits(policy_logits: torch.Tensor, reference_logits: torch.Tensor, mixture_coef: float) -> torch.Tensor:
    """Logits of the geometric mixture (Munos et al. 2023, "Nash Learning from Human Feedback", Nash-MD):
    ``(1 - c) * policy_logits + c * reference_logits`` with ``c = mixture_coef`` in [0, 1], in float32;
    ``softmax`` of it is ``pi^(1-c) * mu^c`` renormalised. ``c = 0`` / ``c = 1`` return the policy's / the
    reference's logits exactly."""
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    if mixture_coef == 0.0:
        return policy_logits.float()
    if mixture_coef == 1.0:
        return reference_logits.float()
    return (1.0 - mixture_coef) * policy_logits.float() + mixture_coef * reference_logits.float()


def decode_mixture(models: Sequence[Any], weights: Sequence[float], input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, config: SamplingConfig, eos_id: int | None, pad_id: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one left-padded batch from ``softmax(sum_m weights[m] * logits_m / T)`` (Munos et al. 2023,
    "Nash Learning from Human Feedback": the token-level geometric mixture ``prod_m pi_m^{w_m}`` renormalised),
    every model with its own KV cache; returns ``(new token ids [B, steps], log-probs [B, steps])``.

    Position ids count real tokens only (``cumsum(attention_mask) - 1``), so a left-padded row decodes as it
    would alone. A row stops at its EOS (later positions hold ``pad_id``); the loop ends when every row has
    stopped or after ``config.max_new_tokens`` steps."""
    out_device = next(models[0].parameters()).device
    params = [_forward_parameters(m) for m in models]
    rows = input_ids.shape[0]
    mask = attention_mask.to(out_device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    step_ids = input_ids.to(out_device)
    caches: list[Any] = [None] * len(models)
    finished = torch.zeros(rows, dtype=torch.bool, device=out_device)
    tokens, logps = [], []
    for _ in range(config.max_new_tokens):
        mixed = None
        for m, (model, weight) in enumerate(zip(models, weights)):
            logits, caches[m] = _forward(model, params[m], caches[m], input_ids=step_ids, attention_mask=mask,
                                         position_ids=positions)
            logits = logits.float().to(out_device)
            if mixed is not None and logits.shape[-1] != mixed.shape[-1]:
                raise ValueError(f"the models' vocabularies differ ({mixed.shape[-1]} vs {logits.shape[-1]} "
                                 "logits); a geometric mixture needs a shared tokenizer")
            mixed = logits if len(models) == 1 else (weight * logits if mixed is None else mixed + weight * logits)
        nxt, lp = sample_next(mixed, config.temperature, config.top_k, config.top_p, generator)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        logps.append(lp)
        if eos_id is not None:
            finished |= nxt == eos_id
        if bool(finished.all()):
            break
        step_ids = nxt[:, None]
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        positions = positions[:, -1:] + 1
    return torch.stack(tokens, 1).cpu(), torch.stack(logps, 1).cpu()


@torch.no_grad()
def generate_mixture(policy: Any, reference: Any, tokenizer: Any, prompts: Sequence[Text], mixture_coef: float,
                     config: SamplingConfig | None = None) -> list[Sample]:
    """Sample from Nash-MD's geometric mixture of ``policy`` and ``reference`` (Munos et al. 2023, "Nash
    Learning from Human Feedback", arXiv:2312.00886): at every token ``y_t ~ softmax(((1 - c) * z_pi +
    c * z_mu) / T)`` with ``z`` the next-token logits, ``c = mixture_coef`` the weight on the reference
    (``c = 0``: the policy alone, ``c = 1``: the reference alone; the unused model is not run), optional
    top-k / top-p truncation after the temperature.

    Returns ``config.num_samples`` samples per prompt, prompt-major, with ``logprobs`` of the mixture
    (``log softmax(mixed / T)`` at the sampled token, before truncation; see :class:`Sample`). Batching and
    seeding are those of :func:`alignkit.sampling.generate.generate` (length-sorted jobs, batch ``b`` seeded
    with ``batch_seed(seed, b)`` through its own ``torch.Generator``), so results depend on ``seed`` and
    ``batch_size``. Both models must share ``tokenizer``'s vocabulary; their train/eval modes are restored."""
    config = config or SamplingConfig()
    if config.backend != "hf":
        raise ValueError("generate_mixture decodes with its own loop over two HF models; backend must be 'hf'")
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    pairs = [(policy, 1.0 - mixture_coef), (reference, mixture_coef)]
    active = [(m, w) for m, w in pairs if w > 0.0]
    models, weights = [m for m, _ in active], [w for _, w in active]
    modes = [(m, m.training) for m, _ in pairs]
    for m, _ in pairs:
        m.eval()
    try:
        device = next(models[0].parameters()).device
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        encoded = encode_prompts(tokenizer, prompts)
        samples: list[Sample | None] = [None] * (len(encoded) * config.num_samples)
        for b, batch in enumerate(plan_batches(encoded, config.num_samples, config.batch_size)):
            input_ids, attention = left_pad([encoded[i] for _, i in batch], pad)
            generator = torch.Generator(device=device).manual_seed(batch_seed(config.seed, b))
            new, logps = decode_mixture(models, weights, input_ids, attention, config, eos, pad, generator)
            for row, (j, i) in enumerate(batch):
                samples[j] = make_sample(tokenizer, i, encoded[i], new[row].tolist(), eos, logps[row].tolist())
        return samples  # type: ignore[return-value]  # every position is filled
    finally:
        for m, training in modes:
            m.train(training)
