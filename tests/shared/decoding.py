"""Sampling and decoding test helpers: the one-thread fixture (tiny models run several times faster on one torch
thread of a shared 2-core machine; other folders use it too), the sandbox's tiny model made decisive (policy +
reference), and teacher-forced log-probs of a guided sample. Import fixtures into a conftest or a test module to
use them: ``from shared.decoding import lm, one_thread  # noqa: F401``."""

from __future__ import annotations

import pytest
import torch

from alignkit.apps.sandbox_build import read_prompts
from alignkit.models.loading import load_causal_lm, load_tokenizer


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
