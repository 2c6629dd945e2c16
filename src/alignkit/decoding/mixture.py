"""Sampling from the geometric mixture of a policy and a reference, token by token (Nash-MD).

Munos et al. 2023, "Nash Learning from Human Feedback" (arXiv:2312.00886), regularise the policy towards a
reference ``mu`` by playing against the geometric mixture ``pi_c(y|x) ∝ pi(y|x)^(1-c) * mu(y|x)^c``. As in the
paper's experiments (and TRL's Nash-MD trainer), the mixture is formed per token: the next token is drawn from

    softmax(((1 - c) * policy_logits + c * reference_logits) / T),

which equals ``pi(.|x,y<t)^(1-c) * mu(.|x,y<t)^c`` renormalised (at ``T = 1``; the per-row constants of the
log-softmax cancel in the softmax). ``c = mixture_coef`` is the weight on the *reference*: ``c = 0`` samples the
policy, ``c = 1`` the reference.

It is a guide on the decoding loop (:class:`GeometricMixture`, a :class:`alignkit.sampling.guide.Guide`): the
loop decodes the policy with its KV cache, the guide steps the reference with its own KV cache on the same
tokens and returns the mixed logits, from which the loop draws. :func:`generate_mixture` is the Nash-MD sampler
the online recipe uses (its own seeding, see there); ``generate(policy, ..., guide=GeometricMixture(...))``
samples the same distribution with :func:`alignkit.sampling.generate.generate`'s seeding.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from alignkit.data.records import Text
from alignkit.sampling.base import (
    Sample,
    SamplingConfig,
    batch_seed,
    encode_prompts,
    left_pad,
    make_sample,
    plan_batches,
)
from alignkit.sampling.generate import decode
from alignkit.sampling.guide import Guide, GuideBatch, GuideStep
from alignkit.sampling.step import CachedLM, sample_next, truncate_logits  # noqa: F401  (re-exported)


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


class GeometricMixture(Guide):
    """Guide for the token-level geometric mixture (Munos et al. 2023, "Nash Learning from Human Feedback",
    Nash-MD): the logits the loop draws from are

        weights[0] * z_0 + weights[1] * z_1 + ... + weights[M] * z_M       (float32, summed in this order)

    with ``z_0`` the decoding model's logits and ``z_m`` those of ``models[m - 1]``, each stepped with its own
    KV cache (:class:`alignkit.sampling.step.CachedLM`) on the tokens the loop feeds the decoding model;
    ``softmax`` of it is ``prod_m pi_m^{w_m}`` renormalised. Nash-MD: ``GeometricMixture([reference],
    [1 - c, c])``. Every model must share the decoding model's tokenizer (a vocabulary of another size is an
    error). Follows dropped rows (``select``), so it works with ``decode(drop_finished=True)`` too."""

    def __init__(self, models: Sequence[Any], weights: Sequence[float]) -> None:
        if len(weights) != len(models) + 1:
            raise ValueError(f"need one weight for the decoding model and one per guide model: {len(models)} "
                             f"models, {len(weights)} weights")
        self.weights = [float(w) for w in weights]
        self.models = [CachedLM(m) for m in models]

    def start(self, batch: GuideBatch) -> None:
        for m in self.models:
            m.reset()

    def process(self, logits: torch.Tensor, step: GuideStep) -> torch.Tensor:
        mixed = self.weights[0] * logits.float()
        for model, weight in zip(self.models, self.weights[1:]):
            other = model(step.input_ids, step.attention_mask, step.position_ids).float().to(mixed.device)
            if other.shape[-1] != mixed.shape[-1]:
                raise ValueError(f"the models' vocabularies differ ({mixed.shape[-1]} vs {other.shape[-1]} "
                                 "logits); a geometric mixture needs a shared tokenizer")
            mixed = mixed + weight * other
        return mixed

    def select(self, keep: torch.Tensor) -> None:
        for m in self.models:
            m.select(keep)


def decode_mixture(models: Sequence[Any], weights: Sequence[float], input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, config: SamplingConfig, eos_id: int | None, pad_id: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one left-padded batch from ``softmax(sum_m weights[m] * logits_m / T)`` (Munos et al. 2023,
    "Nash Learning from Human Feedback": the token-level geometric mixture ``prod_m pi_m^{w_m}`` renormalised);
    returns ``(new token ids [B, steps], log-probs [B, steps])`` on the CPU, ``steps`` the number of steps run.

    :func:`alignkit.sampling.generate.decode` of ``models[0]`` guided by :class:`GeometricMixture` over the
    others (one model: unguided, its weight unused), every model with its own KV cache, with ``drop_finished``
    off: ended rows stay in the batch and keep taking their random number at every step, so a row's draws do not
    depend on when the others end. A row stops at its EOS (later positions hold ``pad_id`` and log-prob 0); the
    loop ends when every row has stopped or after ``config.max_new_tokens`` steps."""
    guide = GeometricMixture(models[1:], weights) if len(models) > 1 else None
    tokens, logps = decode(models[0], input_ids, attention_mask, config, eos_id, pad_id, generator,
                           drop_finished=False, guide=guide)
    steps = tokens.shape[1]
    if eos_id is not None:
        is_eos = tokens == eos_id
        if bool(is_eos.any(1).all()):  # every row ended: the loop stopped after the last row's EOS
            steps = int(is_eos.int().argmax(1).max()) + 1
    return tokens[:, :steps], logps[:, :steps]


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
    seeding are those of :func:`alignkit.sampling.generate.generate` (length-sorted jobs), except that batch
    ``b`` draws from its own ``torch.Generator`` seeded with ``batch_seed(seed, b)`` and ended rows are not
    dropped (:func:`decode_mixture`), so results depend on ``seed`` and ``batch_size``. Both models must share
    ``tokenizer``'s vocabulary; their train/eval modes are restored."""
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
