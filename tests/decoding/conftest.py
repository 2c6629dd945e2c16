"""Fixtures of the decoding tests: the sandbox's tiny model made decisive (policy + reference), and toy Llamas
with a whitespace tokenizer for exact (bit-level) comparisons of decoding loops."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from shared.decoding import decisive, lm, one_thread  # noqa: F401  (fixtures)

TOY_EOS, TOY_PAD = 2, 0


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
