"""The Nash-MD geometric mixture (Munos et al. 2023) as a guide on the decoding loop: its log-probs are the
teacher-forced mixture's, its endpoints are each model, and its samples are bit-identical to an explicit,
unguided two-model decoding loop with the same random numbers."""

from __future__ import annotations

import pytest
import torch

from alignkit.decoding.mixture import GeometricMixture, decode_mixture, generate_mixture, mixture_logits
from alignkit.sampling.base import batch_seed, encode_prompts, left_pad, make_sample, plan_batches
from alignkit.sampling.generate import SamplingConfig, generate
from alignkit.sampling.step import forward_parameters, forward_step, sample_next
from shared.decoding import teacher_forced


def test_mixture_endpoints_equal_greedy_generate_of_each_model(lm):
    tok, policy, reference, prompts = lm
    config = SamplingConfig(num_samples=1, max_new_tokens=12, temperature=0.0, batch_size=3)
    for coef, model in ((0.0, policy), (1.0, reference)):
        want = generate(model, tok, prompts, config)
        got = generate_mixture(policy, reference, tok, prompts, coef, config)
        assert [s.response_ids for s in got] == [s.response_ids for s in want]
        assert [s.finished for s in got] == [s.finished for s in want]
        assert [s.text for s in got] == [s.text for s in want]
        for g, w in zip(got, want):
            assert max(abs(x - y) for x, y in zip(g.logprobs, w.logprobs)) < 1e-4
    assert [s.response_ids for s in generate(policy, tok, prompts, config)] != \
        [s.response_ids for s in generate(reference, tok, prompts, config)]


def test_mixture_one_step_logits_are_the_geometric_mixture(lm):
    tok, policy, reference, prompts = lm
    c = 0.3
    text = tok.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        lp, lr = policy(input_ids=ids).logits[0, -1].double(), reference(input_ids=ids).logits[0, -1].double()
    mixed = mixture_logits(lp, lr, c)
    # pi^(1-c) * mu^c renormalised, computed from the normalised distributions
    geometric = (1 - c) * torch.log_softmax(lp, -1) + c * torch.log_softmax(lr, -1)
    assert torch.allclose(torch.log_softmax(mixed.double(), -1), torch.log_softmax(geometric, -1), atol=1e-5)
    assert torch.equal(mixture_logits(lp, lr, 0.0), lp.float()) and torch.equal(mixture_logits(lp, lr, 1.0), lr.float())
    with pytest.raises(ValueError):
        mixture_logits(lp, lr, 1.5)
    # the first sampled token of generate_mixture: its log-prob is log softmax(mixed / T) at it
    config = SamplingConfig(num_samples=4, max_new_tokens=1, temperature=0.8, seed=1)
    for s in generate_mixture(policy, reference, tok, prompts[:1], c, config):
        assert s.prompt_ids == ids[0].tolist()
        expected = torch.log_softmax(mixed.double() / 0.8, -1)[s.response_ids[0]]
        assert abs(s.logprobs[0] - expected.item()) < 1e-4


@pytest.mark.parametrize("coef,temperature", [(0.3, 0.8), (0.5, 0.0)])
def test_mixture_logprobs_equal_teacher_forced_mixture(lm, coef, temperature):
    tok, policy, reference, prompts = lm
    config = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=temperature, top_k=50, batch_size=4,
                            seed=2)
    samples = generate_mixture(policy, reference, tok, prompts, coef, config)
    assert [s.prompt_index for s in samples] == [i for i in range(len(prompts)) for _ in range(2)]
    for s in samples:
        assert len(s.logprobs) == len(s.response_ids) and (s.finished or len(s.response_ids) == 12)
        expected = teacher_forced([policy, reference], [1 - coef, coef], s, temperature)
        assert torch.allclose(torch.tensor(s.logprobs, dtype=torch.float64), expected, atol=1e-4)
    again = generate_mixture(policy, reference, tok, prompts, coef, config)
    assert [s.response_ids for s in again] == [s.response_ids for s in samples]
    if temperature:
        other = generate_mixture(policy, reference, tok, prompts, coef, SamplingConfig(
            num_samples=2, max_new_tokens=12, temperature=temperature, top_k=50, batch_size=4, seed=3))
        assert [s.response_ids for s in other] != [s.response_ids for s in samples]


# ------------------------------------------------------------------------------ bit-identity with an explicit loop
@torch.no_grad()
def explicit_mixture(policy, reference, tok, prompts, c, config):
    """Nash-MD sampling written out without the guide hook (the loop alignkit had before it): per batch, both
    models step with their own KV cache on every row (ended rows stay, fed pad), the next token is drawn by
    sample_next from (1 - c) * z_pi + c * z_ref (one model alone at c = 0 or 1) with the batch's generator."""
    models = [m for m, w in ((policy, 1 - c), (reference, c)) if w > 0]
    weights = [w for w in (1 - c, c) if w > 0]
    encoded = encode_prompts(tok, prompts)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    out = [None] * (len(encoded) * config.num_samples)
    for b, batch in enumerate(plan_batches(encoded, config.num_samples, config.batch_size)):
        ids, mask = left_pad([encoded[i] for _, i in batch], pad)
        generator = torch.Generator().manual_seed(batch_seed(config.seed, b))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        caches = [None] * len(models)
        finished = torch.zeros(len(batch), dtype=torch.bool)
        tokens, logps = [], []
        for _ in range(config.max_new_tokens):
            mixed = None
            for m, (model, w) in enumerate(zip(models, weights)):
                logits, caches[m] = forward_step(model, forward_parameters(model), caches[m], input_ids=ids,
                                                 attention_mask=mask, position_ids=positions)
                mixed = logits.float() if len(models) == 1 else (
                    w * logits.float() if mixed is None else mixed + w * logits.float())
            nxt, lp = sample_next(mixed, config.temperature, config.top_k, config.top_p, generator)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            tokens.append(nxt)
            logps.append(lp)
            finished |= nxt == eos
            if bool(finished.all()):
                break
            ids = nxt[:, None]
            mask = torch.cat([mask, mask.new_ones(len(batch), 1)], dim=1)
            positions = positions[:, -1:] + 1
        new, lps = torch.stack(tokens, 1), torch.stack(logps, 1)
        for row, (j, i) in enumerate(batch):
            out[j] = make_sample(tok, i, encoded[i], new[row].tolist(), eos, lps[row].tolist())
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 10, 0.9), (0.0, 0, 1.0)])
def test_mixture_guide_is_bit_identical_to_an_explicit_two_model_loop(toy, temperature, top_k, top_p):
    tok, policy, reference, padded, unpadded = toy
    finished = 0
    for prompts in (padded, unpadded):  # a left-padded batch (attention mask) and one without padding (none)
        for seed, batch_size in ((0, 3), (4, 16)):
            config = SamplingConfig(num_samples=2, max_new_tokens=10, temperature=temperature, top_k=top_k,
                                    top_p=top_p, batch_size=batch_size, seed=seed)
            for c in (0.0, 0.3, 0.5, 1.0):
                got = generate_mixture(policy, reference, tok, prompts, c, config)
                want = explicit_mixture(policy, reference, tok, prompts, c, config)
                assert [s.response_ids for s in got] == [s.response_ids for s in want]
                assert all(torch.equal(torch.tensor(g.logprobs), torch.tensor(w.logprobs)) for g, w in zip(got, want))
                finished += sum(s.finished for s in got)
    assert finished > 0  # rows end at different steps (some by EOS, others at the limit)


def test_decode_mixture_of_three_models_and_its_width(toy):
    tok, policy, reference, padded, _ = toy
    ids, mask = left_pad(encode_prompts(tok, padded), tok.pad_token_id)
    config = SamplingConfig(max_new_tokens=30, temperature=0.0)
    third = reference.__class__(reference.config)  # random init: a third vocabulary-compatible model
    third.eval()
    new, lps = decode_mixture([policy, reference, third], [0.5, 0.3, 0.2], ids, mask, config, 2, 0)
    with torch.no_grad():  # greedy: each row's tokens are the argmax of the teacher-forced 3-model mixture
        for row in range(new.shape[0]):
            n = int(mask[row].sum())
            seq = torch.cat([ids[row, -n:], new[row]])[None]
            logits = sum(w * m(input_ids=seq).logits[0, n - 1: -1] for m, w in
                         zip([policy, reference, third], [0.5, 0.3, 0.2]))
            mine = new[row].tolist()
            stop = mine.index(2) + 1 if 2 in mine else len(mine)
            assert logits[:stop].argmax(-1).tolist() == mine[:stop]
            assert all(t == 0 for t in mine[stop:]) and float(lps[row, stop:].abs().sum()) == 0.0
    ended = [2 in r for r in new.tolist()]
    assert new.shape[1] == (max(r.index(2) + 1 for r in new.tolist()) if all(ended) else 30)
    with pytest.raises(ValueError, match="one weight for the decoding model"):
        GeometricMixture([reference], [1.0])


def test_mixture_guide_follows_dropped_rows(toy):
    """Through `generate` (finished rows dropped from the batch and from the guide's reference cache), greedy
    mixture samples equal those of the loop that keeps every row, and sampled ones have the teacher-forced
    mixture's log-probs."""
    tok, policy, reference, padded, _ = toy
    c = 0.4
    greedy = SamplingConfig(num_samples=1, max_new_tokens=12, temperature=0.0, batch_size=16)
    dropped = generate(policy, tok, padded, greedy, guide=GeometricMixture([reference], [1 - c, c]))
    kept = generate_mixture(policy, reference, tok, padded, c, greedy)
    assert [s.response_ids for s in dropped] == [s.response_ids for s in kept]
    assert 0 < sum(s.finished for s in dropped) < len(dropped)  # rows were dropped while others went on
    config = SamplingConfig(num_samples=3, max_new_tokens=12, temperature=0.9, batch_size=16, seed=1)
    for s in generate(policy, tok, padded, config, guide=GeometricMixture([reference], [1 - c, c])):
        expected = teacher_forced([policy, reference], [1 - c, c], s, 0.9)
        assert torch.allclose(torch.tensor(s.logprobs, dtype=torch.float64), expected, atol=1e-4)
