"""Fixtures of the decoding tests: the sandbox's tiny model made decisive (policy + reference), and toy Llamas
with a whitespace tokenizer for exact (bit-level) comparisons of decoding loops."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignkit.apps.sandbox_build import read_prompts
from alignkit.models.loading import load_causal_lm, load_tokenizer

TOY_EOS, TOY_PAD = 2, 0


def decisive(model, seed: int, eos_id: int, like: int | None = None):
    """A random model with peaked, context-dependent next-token distributions (the sandbox's init is nearly
    uniform, so greedy decoding would hinge on float noise). ``like``: make EOS win wherever token ``like`` would,
    so that some rows stop early and others run to the limit. (As in tests/sampling/test_sampling.py.)"""
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


class ToyTokenizer:
    """Whitespace-separated token ids: ``"5 6 7"`` is ``[5, 6, 7]``."""

    eos_token_id, pad_token_id, chat_template = TOY_EOS, TOY_PAD, None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(x) for x in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i in (TOY_EOS, TOY_PAD)))


def toy_llama(seed: int, like: int) -> LlamaForCausalLM:
    """A 2-layer Llama over 50 tokens (tests/models/test_logps.py's tiny_llama, float32) made decisive; EOS wins
    where token ``like`` would."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64))
    return decisive(model, seed, TOY_EOS, like=like)


@pytest.fixture(scope="module")
def toy():
    """``(tokenizer, policy, reference, padded prompts, unpadded prompts)``: prompts of different lengths (a
    left-padded batch) and of one length (no padding); rows end at different steps."""
    padded = ["5 6 7", "8 9", "10 11 12 13 14 15", "3", "20 21 22 23", "30 31 32 33 34 35 36 37", "40 41"]
    unpadded = ["5 6 7", "8 9 10", "11 12 13", "14 15 16"]
    return ToyTokenizer(), toy_llama(1, 20), toy_llama(2, 17), padded, unpadded
