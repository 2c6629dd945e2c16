"""Response-token log-probs from the gathered LM head equal a naive full-logits computation."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.models.logps import response_logps
from shared.tiny import random_batch, tiny_llama


def naive_logps(model, batch) -> torch.Tensor:
    """Sum over response tokens of log softmax(full logits) at the previous position, one row at a time."""
    out = []
    for i in range(batch.input_ids.shape[0]):
        n = int(batch.attention_mask[i].sum())
        ids = batch.input_ids[i, :n]
        logits = model(input_ids=ids[None]).logits[0]
        logp = torch.log_softmax(logits, -1)
        total = sum(logp[t - 1, ids[t]] for t in range(1, n) if batch.response_mask[i, t])
        out.append(total)
    return torch.stack(out)


def test_gathered_head_matches_full_logits():
    model = tiny_llama()
    batch = random_batch()
    fast = response_logps(model, batch)
    assert torch.allclose(fast.sum(), naive_logps(model, batch), atol=1e-10)
    assert fast.lengths.tolist() == batch.response_mask.sum(-1).tolist()
    assert torch.allclose(fast.mean(), fast.sum() / fast.lengths, atol=1e-12)


def test_fallback_path_for_softcapped_heads_matches_too():
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0  # forces the full-logits path (Llama ignores the value)
    batch = random_batch(1)
    assert torch.allclose(response_logps(model, batch).sum(), naive_logps(model, batch), atol=1e-10)


def test_gradients_flow_only_through_response_positions():
    model = tiny_llama()
    batch = random_batch(2)
    response_logps(model, batch).sum().sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_length_grouped_forwards_give_the_same_logps_and_gradients():
    model = tiny_llama()
    batch = random_batch(4)
    whole = response_logps(model, batch)
    whole.sum().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    grouped = response_logps(model, batch, rows_per_forward=3)
    grouped.sum().sum().backward()
    assert torch.allclose(whole.token_logps, grouped.token_logps, atol=1e-12)
    assert torch.equal(whole.mask, grouped.mask)
    for a, p in zip(expected, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-12)


def ranked_batch(seed: int, k: int = 3):
    """Records with k responses each (ragged lengths), so the packed rows differ in length and padding."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(4):
        p = torch.randint(1, 50, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
        rs = [torch.randint(1, 50, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
              for _ in range(k)]
        record = PreferenceRecord(prompt="p", responses=["r"] * k, ranking=list(range(k)))
        items.append(TokenizedRecord(i, record, p, rs))
    return collate(items, pad_id=0)


def grads(model, logps) -> list[torch.Tensor]:
    model.zero_grad()
    (logps.token_logps * torch.linspace(0.5, 1.5, logps.token_logps.shape[1])).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("k", [2, 3])
def test_packing_gives_the_same_logps_and_gradients(attention, k):
    model = tiny_llama(attn_implementation=attention)
    batch = ranked_batch(k, k)
    rowwise = response_logps(model, batch)
    packed = response_logps(model, batch, pack=True)
    assert torch.allclose(rowwise.token_logps, packed.token_logps, atol=1e-10)
    assert torch.equal(rowwise.mask, packed.mask)
    assert torch.allclose(packed.sum(), naive_logps(model, batch), atol=1e-10)
    # Llama's RMSNorm computes in float32 even for float64 inputs; the shared prompt sums its two responses'
    # gradients before that float32 step instead of after, so gradients agree to float32 rounding, not 1e-10.
    for a, b in zip(grads(model, rowwise), grads(model, packed)):
        assert (a - b).abs().max() <= 1e-6 * a.abs().max()


def test_packed_layout_holds_each_prompt_once_and_packs_short_records_together():
    from alignkit.models.packing import packed_layout

    shapes = [(5, [10, 9, 8]), (2, [3, 2, 3]), (3, [4, 4, 1])]  # packed sizes 32, 10, 12: two rows
    items = [TokenizedRecord(i, PreferenceRecord(prompt="p", responses=["r"] * 3, ranking=[0, 1, 2]),
                             list(range(1, p + 1)), [list(range(10, 10 + n)) for n in ns])
             for i, (p, ns) in enumerate(shapes)]
    batch = collate(items, pad_id=0)
    layout = packed_layout(batch)
    prompt_lengths = batch.response_mask.int().argmax(-1)
    real = int(batch.attention_mask.sum())
    shared = sum(int(prompt_lengths[batch.group == b][0]) * 2 for b in range(batch.num_records))
    assert int(layout.lengths.sum()) == real - shared  # each record's prompt is stored once instead of 3 times
    assert tuple(layout.input_ids.shape) == (2, 32)  # the two short records share a row
    model = tiny_llama()
    assert torch.allclose(response_logps(model, batch, pack=True).sum(), naive_logps(model, batch), atol=1e-10)
    rows, cols = torch.nonzero(batch.attention_mask.bool(), as_tuple=True)
    assert torch.equal(layout.input_ids.view(-1)[layout.where[rows, cols]], batch.input_ids[rows, cols])


def test_packing_single_response_records_matches_rowwise():
    model = tiny_llama()
    batch = random_batch(3)
    batch.responses_per_record = [1] * 10  # every row its own record (SFT / unpaired data)
    batch.group = torch.arange(10)
    packed = response_logps(model, batch, pack=True)
    assert torch.allclose(packed.sum(), naive_logps(model, batch), atol=1e-10)


def test_packing_falls_back_when_rows_do_not_share_their_prompt():
    from alignkit.models.packing import packed_layout

    batch = ranked_batch(1, 2)
    batch.input_ids[1, 0] = (batch.input_ids[0, 0] % 49) + 1  # record 0's second row: another prompt
    assert packed_layout(batch) is None
    model = tiny_llama()
    assert torch.allclose(response_logps(model, batch, pack=True).sum(), naive_logps(model, batch), atol=1e-10)


def test_packing_is_switched_off_for_a_model_whose_attention_ignores_the_block_mask(monkeypatch):
    import alignkit.models.packing as sp

    model = tiny_llama()
    batch = ranked_batch(2, 2)
    monkeypatch.setattr(sp.PackedLayout, "attention_mask",  # a model that would see the other response
                        lambda self, dtype, additive: torch.ones(1, 1, *self.record.shape[-1:] * 2, dtype=torch.bool))
    with pytest.warns(UserWarning, match="scoring row by row"):
        out = response_logps(model, batch, pack=True)
    assert torch.allclose(out.sum(), naive_logps(model, batch), atol=1e-10)
    assert sp._VERIFIED[model] is False
