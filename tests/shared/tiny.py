"""A tiny random Llama (float64) and a random batch of tokenized pairs for exact log-prob comparisons."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord


def tiny_llama(**extra) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64, **extra)
    return LlamaForCausalLM(config).double()


def random_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(5):
        p = torch.randint(1, 50, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
        rs = [torch.randint(1, 50, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
              for _ in range(2)]
        items.append(TokenizedRecord(i, PreferenceRecord(prompt="p", responses=["a", "b"], ranking=[0, 1]), p, rs))
    return collate(items, pad_id=0)
