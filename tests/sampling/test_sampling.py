"""Sampling: per-token log-probs of `generate`, the Nash-MD mixture sampler, best-of-n and RSO selection."""

from __future__ import annotations

import math
import random
import sys

import pytest
import torch

from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.decoding.best_of_n import best_of_n, best_of_n_kl
from alignkit.sampling.generate import SamplingConfig, generate
from alignkit.decoding.mixture import generate_mixture, mixture_logits, sample_next, truncate_logits
from alignkit.decoding.rso import rso_select
from alignkit.sampling.vllm_backend import generate_vllm
from alignkit.apps.sandbox_build import read_prompts


def decisive(model, seed: int, eos_id: int, like: int | None = None):
    """A random model with peaked, context-dependent next-token distributions (the sandbox's init is nearly
    uniform, so greedy decoding would hinge on float noise). ``like``: make EOS win wherever token ``like`` would,
    so that some rows stop early and others run to the limit."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=g)
        if like is not None:  # untie the LM head so that the prompts (which contain EOS) read the same
            head = torch.nn.Parameter(model.get_output_embeddings().weight.detach().clone())
            model.get_output_embeddings().weight = head
            model.config.tie_word_embeddings = False
            head[eos_id] = 1.01 * head[like]
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models decode faster on one thread, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(tiny_world):
    tok = load_tokenizer(str(tiny_world / "base"))
    prompts = read_prompts(tiny_world / "data" / "prompts_eval.jsonl")[:5]
    prompts += ["a plain text prompt", "another, rather longer plain text prompt with more words in it"]
    policy = decisive(load_causal_lm(str(tiny_world / "base")), 1, tok.eos_token_id, like=200)
    reference = decisive(load_causal_lm(str(tiny_world / "base")), 2, tok.eos_token_id, like=179)
    return tok, policy, reference, prompts


@torch.no_grad()
def teacher_forced(models, weights, sample, temperature: float) -> torch.Tensor:
    """log softmax(sum_m w_m * logits_m / T) at each response token, from one unpadded forward pass per model."""
    ids = torch.tensor([sample.prompt_ids + sample.response_ids])
    n = len(sample.prompt_ids)
    logits = sum(w * m(input_ids=ids).logits[0, n - 1: -1].double() for m, w in zip(models, weights))
    target = torch.tensor(sample.response_ids)
    return torch.log_softmax(logits / (temperature or 1.0), -1).gather(-1, target[:, None])[:, 0]


# ------------------------------------------------------------------------------------------ generate
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_generate_logprobs_equal_teacher_forced_forward(lm, temperature):
    tok, policy, _, prompts = lm
    config = SamplingConfig(num_samples=2, max_new_tokens=12, temperature=temperature, top_k=40, top_p=0.9,
                            batch_size=4, seed=3)
    samples = generate(policy, tok, prompts, config)
    assert [s.prompt_index for s in samples] == [i for i in range(len(prompts)) for _ in range(2)]
    if temperature == 0:  # the greedy policy stops early on some prompts (see `decisive`)
        assert any(s.finished for s in samples) and not all(s.finished for s in samples)
    for s in samples:
        assert len(s.logprobs) == len(s.response_ids) and s.finished == (s.response_ids[-1] == tok.eos_token_id)
        expected = teacher_forced([policy], [1.0], s, temperature)
        assert torch.allclose(torch.tensor(s.logprobs, dtype=torch.float64), expected, atol=1e-4)


def test_generate_is_seeded_and_batching_keeps_greedy_results(lm):
    tok, policy, _, prompts = lm
    config = SamplingConfig(num_samples=3, max_new_tokens=8, seed=5, batch_size=4)
    a, b = generate(policy, tok, prompts, config), generate(policy, tok, prompts, config)
    c = generate(policy, tok, prompts, SamplingConfig(num_samples=3, max_new_tokens=8, seed=6, batch_size=4))
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.logprobs for s in a] == [s.logprobs for s in b]
    assert [s.response_ids for s in a] != [s.response_ids for s in c]
    greedy = [generate(policy, tok, prompts, SamplingConfig(max_new_tokens=8, temperature=0, batch_size=bs))
              for bs in (1, 3, 16)]  # left padding must not change what a row decodes
    assert [s.response_ids for s in greedy[0]] == [s.response_ids for s in greedy[1]] == \
        [s.response_ids for s in greedy[2]]
    assert policy.training is False


def test_generate_restores_train_mode_and_validates_config(lm):
    tok, policy, _, prompts = lm
    policy.train()
    try:
        generate(policy, tok, prompts[:1], SamplingConfig(max_new_tokens=2))
        assert policy.training
    finally:
        policy.eval()
    with pytest.raises(ValueError, match="unknown sampling backend"):
        SamplingConfig(backend="sglang")


def test_vllm_backend_without_vllm_names_the_extra(lm, monkeypatch):
    tok, policy, _, prompts = lm
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed (it is not, here)
    config = SamplingConfig(max_new_tokens=4, backend="vllm")
    with pytest.raises(ImportError, match=r"pip install alignkit\[vllm\]; needs a GPU"):
        generate_vllm(policy.name_or_path, tok, prompts, config)
    with pytest.raises(ImportError, match=r"alignkit\[vllm\]"):
        generate(policy, tok, prompts, config)  # dispatches: the model's own directory is passed on
    monkeypatch.setattr(policy, "name_or_path", "not/a/model/dir")
    with pytest.raises(ValueError, match="must be a local model directory"):
        generate(policy, tok, prompts, config)


# ------------------------------------------------------------------------------------------ mixture
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


def test_truncation_and_sampling_step():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isinf(truncate_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    # nucleus: the smallest set with mass >= 0.8 is {0.5, 0.2, 0.15}
    assert torch.isinf(truncate_logits(logits, top_p=0.8)).tolist() == [[False, False, False, True, True]]
    assert torch.isinf(truncate_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True, True]]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits.expand(2000, 5), 1.0, top_k=2, generator=g)[0] for _ in range(5)])
    freq = torch.bincount(draws.flatten(), minlength=5).double() / draws.numel()
    assert freq[2:].sum() == 0 and abs(freq[0].item() - 0.5 / 0.7) < 0.02
    token, logp = sample_next(logits, 0.5, top_k=1)
    assert token.item() == 0 and abs(logp.item() - torch.log_softmax(logits / 0.5, -1)[0, 0].item()) < 1e-6


# ------------------------------------------------------------------------------------------ best-of-n
def test_best_of_n_picks_argmax_with_lowest_index_on_ties():
    rewards = torch.tensor([[0.1, 0.9, 0.3], [2.0, 2.0, 1.0], [float("nan"), -1.0, -1.0],
                            [float("nan")] * 3, [-5.0, 3.0, 3.0]])
    assert best_of_n(rewards).tolist() == [1, 0, 1, 0, 1]
    with pytest.raises(ValueError):
        best_of_n(torch.zeros(3))


def exact_best_of_n_kl(p: torch.Tensor, n: int) -> float:
    """KL(BoN || p) for a discrete p whose items are sorted by increasing (distinct) reward:
    P_BoN(i) = F(i)^n - F(i-1)^n with F the CDF."""
    cdf = p.double().cumsum(0)
    bon = cdf ** n - torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]]) ** n
    keep = bon > 0
    return float((bon[keep] * (bon[keep] / p.double()[keep]).log()).sum())


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_best_of_n_kl_bounds_the_exact_kl_and_is_tight_for_a_large_support(n):
    bound = best_of_n_kl(n)
    assert bound == pytest.approx(math.log(n) - (n - 1) / n)
    g = torch.Generator().manual_seed(n)
    for support in (3, 10, 50):
        p = torch.rand(support, generator=g, dtype=torch.float64) + 0.1
        assert exact_best_of_n_kl(p / p.sum(), n) <= bound + 1e-12
    uniform = torch.full((200_000,), 1 / 200_000, dtype=torch.float64)
    assert exact_best_of_n_kl(uniform, n) == pytest.approx(bound, abs=2e-3)


def test_best_of_n_distribution_by_monte_carlo():
    """best_of_n over n draws from p picks item i with probability F(i)^n - F(i-1)^n."""
    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    reward = torch.tensor([3.0, 0.0, 2.0, 1.0])  # item order by reward: 1, 3, 2, 0
    n, draws = 3, 40_000
    g = torch.Generator().manual_seed(0)
    items = torch.multinomial(p, draws * n, replacement=True, generator=g).view(draws, n)
    chosen = items.gather(1, best_of_n(reward[items])[:, None])[:, 0]
    freq = torch.bincount(chosen, minlength=4).double() / draws
    order = torch.argsort(reward)
    cdf = p[order].cumsum(0)
    exact_sorted = cdf ** n - torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]]) ** n
    exact = torch.empty(4, dtype=torch.float64)
    exact[order] = exact_sorted
    assert torch.allclose(freq, exact, atol=0.01)
    assert exact_best_of_n_kl(p[order], n) <= best_of_n_kl(n)


# ------------------------------------------------------------------------------------------ RSO
@pytest.mark.parametrize("make_rng", [lambda s: random.Random(s), lambda s: torch.Generator().manual_seed(s)])
def test_rso_large_beta_accepts_uniformly_small_beta_accepts_the_best(make_rng):
    rewards = [0.3, -1.0, 2.5, 0.0, 1.7, -0.2, 0.9, 2.0]
    rng = make_rng(0)
    counts = [0] * len(rewards)
    for _ in range(3000):
        picked = rso_select(rewards, beta=1e6, num_accept=2, generator=rng)
        assert len(picked) == 2 and len(set(picked)) == 2
        for i in picked:
            counts[i] += 1
    assert all(abs(c / 3000 - 2 / 8) < 0.04 for c in counts)
    assert rso_select(rewards, beta=1e-3, num_accept=3, generator=rng) == [2, 7, 4]
    assert sorted(rso_select(rewards, beta=0.5, num_accept=100, generator=rng)) == list(range(8))  # all, eventually
    assert rso_select(rewards, beta=1.0, num_accept=0, generator=rng) == []
    assert rso_select([float("-inf"), float("-inf")], beta=1.0, num_accept=1, generator=rng) in ([0], [1])
    with pytest.raises(ValueError):
        rso_select(rewards, beta=0.0, num_accept=1, generator=rng)


def test_rso_accepted_samples_follow_the_tilted_target():
    """Candidates drawn from pi_sft over 3 responses; accepted ones should follow pi_sft * exp(r / beta)."""
    reward, beta = [0.0, 1.0, 2.0], 1.0
    rng = random.Random(1)

    def frequencies(pi_sft, num_accept, draws=5000, n=48):  # n: the best response is (almost) always a candidate
        first, accepted = [0] * 3, [0] * 3
        for _ in range(draws):
            items = rng.choices(range(3), weights=pi_sft, k=n)
            picked = rso_select([reward[i] for i in items], beta, num_accept, generator=rng)
            first[items[picked[0]]] += 1
            for k in picked:
                accepted[items[k]] += 1
        return torch.tensor(first) / sum(first), torch.tensor(accepted) / sum(accepted)

    pi_sft = torch.tensor([0.5, 0.3, 0.2])
    target = pi_sft * torch.exp(torch.tensor(reward) / beta)
    target /= target.sum()
    first, accepted = frequencies(pi_sft.tolist(), num_accept=4)
    assert torch.allclose(first, target, atol=0.02) and torch.allclose(accepted, target, atol=0.015)
    # a uniform pi_sft: the softmax(r / beta) of the RSO paper
    first, _ = frequencies([1.0, 1.0, 1.0], num_accept=1)
    assert torch.allclose(first, torch.softmax(torch.tensor(reward) / beta, 0), atol=0.02)
