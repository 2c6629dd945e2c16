"""The decoding loop's per-step guide hook (alignkit.sampling.guide): its contract, on toy Llamas."""

from __future__ import annotations

import pytest
import torch

from alignkit.sampling.base import encode_prompts, left_pad
from alignkit.sampling.generate import SamplingConfig, decode, generate
from alignkit.sampling.guide import Guide, GuideOutput

CONFIGS = [SamplingConfig(num_samples=3, max_new_tokens=12, temperature=1.0, batch_size=bs, seed=2)
           for bs in (1, 4, 16)] + [
    SamplingConfig(num_samples=2, max_new_tokens=12, temperature=0.7, top_k=8, top_p=0.9, batch_size=5, seed=1),
    SamplingConfig(num_samples=2, max_new_tokens=12, temperature=0.0, batch_size=16)]


class Recorder(Guide):
    """Returns the logits unchanged and checks the loop's bookkeeping as it goes: the rows it is shown follow
    `select`, `step.tokens` is what it was told in `advance`, ended rows are those that emitted EOS."""

    def __init__(self):
        self.batches, self.selects, self.max_rows_dropped = 0, 0, 0

    def start(self, batch):
        self.batches += 1
        self.batch = batch
        self.rows = torch.arange(batch.input_ids.shape[0])
        self.seen = {r: [] for r in range(batch.input_ids.shape[0])}   # tokens by original row
        self.ended = torch.zeros(batch.input_ids.shape[0], dtype=torch.bool)
        self.t = 0

    def process(self, logits, step):
        assert step.step == self.t and torch.equal(step.rows, self.rows)
        assert logits.shape[0] == len(self.rows) == step.ended.shape[0] == step.input_ids.shape[0]
        assert torch.equal(step.ended.cpu(), self.ended[self.rows])
        assert step.tokens.shape == (len(self.rows), self.t)
        for i, r in enumerate(step.rows.tolist()):
            assert step.tokens[i].tolist() == self.seen[r]
        if self.t == 0:
            assert torch.equal(step.input_ids.cpu(), self.batch.input_ids.cpu())
        width = self.batch.input_ids.shape[1]
        assert step.attention_mask is None or step.attention_mask.shape == (len(self.rows), width + self.t)
        return logits

    def advance(self, tokens, step):
        assert tokens.shape == (len(self.rows),)
        for i, r in enumerate(step.rows.tolist()):
            ended = bool(step.ended[i])
            self.seen[r].append(self.batch.pad_id if ended else int(tokens[i]))
            if not ended and int(tokens[i]) == self.batch.eos_id:
                self.ended[r] = True
        self.t += 1

    def select(self, keep):
        assert torch.equal(keep.cpu(), (~self.ended[self.rows]).nonzero()[:, 0])  # exactly the ended rows go
        self.selects += 1
        self.max_rows_dropped = max(self.max_rows_dropped, len(self.rows) - len(keep))
        self.rows = self.rows[keep.cpu()]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"T{c.temperature}-bs{c.batch_size}")
def test_an_identity_guide_gives_exactly_the_unguided_samples(toy, config):
    tok, policy, _, padded, unpadded = toy
    for prompts in (padded, unpadded):
        want = generate(policy, tok, prompts, config)
        recorder = Recorder()
        got = generate(policy, tok, prompts, config, guide=recorder)
        assert [s.response_ids for s in got] == [s.response_ids for s in want]
        assert all(torch.equal(torch.tensor(g.logprobs), torch.tensor(w.logprobs)) for g, w in zip(got, want))
        assert recorder.batches == -(-len(prompts) * config.num_samples // config.batch_size)
    # plain Guide() (all defaults) is the identity too
    assert [s.logprobs for s in generate(policy, tok, padded, config, guide=Guide())] == \
        [s.logprobs for s in generate(policy, tok, padded, config)]


def test_the_guide_sees_consistent_rows_as_finished_rows_are_dropped(toy):
    """Rows end at different steps; the loop drops them in bulk and the guide is told (Recorder's checks); the
    tokens it was told per original row are the returned ones."""
    tok, policy, _, padded, _ = toy
    ids, mask = left_pad(encode_prompts(tok, padded * 3), tok.pad_token_id)
    config = SamplingConfig(max_new_tokens=30, temperature=1.0)
    torch.manual_seed(3)  # 8 of the 21 rows end, at steps 0 to 28: a bulk drop of 6
    want, _ = decode(policy, ids, mask, config, tok.eos_token_id, tok.pad_token_id)
    recorder = Recorder()
    torch.manual_seed(3)
    got, _ = decode(policy, ids, mask, config, tok.eos_token_id, tok.pad_token_id, guide=recorder)
    assert torch.equal(got, want)
    assert recorder.selects >= 1 and recorder.max_rows_dropped >= 6
    ends = [row.index(tok.eos_token_id) for row in got.tolist() if tok.eos_token_id in row]
    assert len(set(ends)) > 1 and len(ends) < len(got)  # ended at different steps, some never
    for r, seen in recorder.seen.items():
        assert seen == got[r, : len(seen)].tolist()
        assert all(t == tok.pad_token_id for t in got[r, len(seen):].tolist())


class OnlyToken(Guide):
    """Masks every token but ``token``."""

    def __init__(self, token):
        self.token = token

    def process(self, logits, step):
        out = torch.full_like(logits, float("-inf"))
        out[:, self.token] = logits[:, self.token]
        return out


@pytest.mark.parametrize("config", CONFIGS[2:], ids=lambda c: f"T{c.temperature}")
def test_a_guide_that_masks_all_but_one_token_forces_it(toy, config):
    tok, policy, _, padded, _ = toy
    for s in generate(policy, tok, padded, config, guide=OnlyToken(7)):
        assert s.response_ids == [7] * config.max_new_tokens and not s.finished
        assert s.logprobs == [0.0] * config.max_new_tokens  # the only token left has probability 1
    ended = generate(policy, tok, padded, config, guide=OnlyToken(tok.eos_token_id))
    assert all(s.response_ids == [tok.eos_token_id] and s.finished for s in ended)


class ForceEvenRows(Guide):
    """Forces token 9 on even original rows (GuideOutput.tokens); the others draw as usual."""

    def process(self, logits, step):
        forced = torch.where(step.rows % 2 == 0, 9, -1)
        return GuideOutput(logits, forced)


def test_forced_tokens_leave_the_other_rows_draws_unchanged(toy):
    tok, policy, _, padded, _ = toy
    ids, mask = left_pad(encode_prompts(tok, padded), tok.pad_token_id)
    config = SamplingConfig(max_new_tokens=10, temperature=0.8)
    args = (policy, ids, mask, config, tok.eos_token_id, tok.pad_token_id)
    want, want_lp = decode(*args, generator=torch.Generator().manual_seed(3), drop_finished=False)
    got, got_lp = decode(*args, generator=torch.Generator().manual_seed(3), drop_finished=False,
                         guide=ForceEvenRows())
    assert torch.equal(got[1::2], want[1::2]) and torch.equal(got_lp[1::2], want_lp[1::2])
    assert bool((got[0::2] == 9).all())
    with torch.no_grad():  # the forced token's log-prob: log softmax(logits / T) at it
        n = int(mask[0].sum())
        seq = torch.cat([ids[0, -n:], got[0]])[None]
        expected = torch.log_softmax(policy(input_ids=seq).logits[0, n - 1: -1].double() / 0.8, -1)[:, 9]
    assert torch.allclose(got_lp[0].double(), expected, atol=1e-5)


class WrongShape(Guide):
    def process(self, logits, step):
        return logits[:, :-1]


def test_guide_errors(toy):
    tok, policy, _, padded, _ = toy
    with pytest.raises(ValueError, match="WrongShape.process returned logits of shape"):
        generate(policy, tok, padded, SamplingConfig(max_new_tokens=2), guide=WrongShape())
    with pytest.raises(ValueError, match="use backend 'hf' with a guide"):
        generate(policy, tok, padded, SamplingConfig(max_new_tokens=2, backend="vllm"), guide=Guide())
    assert isinstance(OnlyToken(1), Guide)
