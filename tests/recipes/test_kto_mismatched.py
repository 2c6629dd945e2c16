"""The offline preference recipe's data additions: KTO's mismatched pairs (never a record's own prompt) and D2O's
reference samples (cached on the reference's weights, the file's content verified)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.losses import get_loss
from alignkit.recipes import preference
from alignkit.recipes.common.preference_objective import attach_mismatched, mismatched_partners
from alignkit.recipes.preference import add_reference_samples, prepare_records
from alignkit.engine.reference_cache import data_digest


# --------------------------------------------------------------------------------------------- KTO's pairs
def tokenized(records: list[PreferenceRecord]) -> list[TokenizedRecord]:
    """Stand-ins for tokenized records: record i's prompt ids are [i], its response ids [1000 + i]."""
    return [TokenizedRecord(i, r, [i], [[1000 + i]]) for i, r in enumerate(records)]


def kto_dataset(records: list[PreferenceRecord]) -> list[TokenizedRecord]:
    """Records prepared for KTO (pairs and negatives lists split into unpaired records, in order), tokenized."""
    return tokenized(prepare_records(get_loss("kto"), {}, records, DataReport()))


def partner_of(dataset: list[TokenizedRecord]) -> list[int]:
    return [item.extra["mismatched_ids"][0] - 1000 for item in dataset]


def same_prompt_pairs(dataset: list[TokenizedRecord]) -> int:
    """How many of KTO's "mismatched" (prompt_i, response_j) pairs use the record's own prompt."""
    return sum(dataset[j].record.prompt == item.record.prompt for item, j in zip(dataset, partner_of(dataset)))


def test_pairs_never_share_their_prompt():
    """4 pairs become 8 records, a pair's two next to each other: pairing record i with record i + 1 used the
    record's own prompt in 4 of the 8 KL pairs."""
    dataset = kto_dataset([PreferenceRecord.pair(f"prompt {i}", f"good {i}", f"bad {i}") for i in range(4)])
    attach_mismatched(dataset, seed=0)
    assert len(dataset) == 8 and same_prompt_pairs(dataset) == 0


def test_negatives_lists_and_consecutive_unpaired_lines_never_share_their_prompt():
    negatives = [PreferenceRecord(prompt=f"q{i}", responses=["a", "b", "c"], labels=[False] * 3) for i in range(3)]
    unpaired = [PreferenceRecord(prompt=f"u{i}", responses=[f"r{j}"], labels=[j % 2 == 0])
                for i in range(3) for j in range(4)]  # a prompt's completions on consecutive lines
    for records in (negatives, unpaired):
        dataset = kto_dataset(records)
        for seed in range(5):
            attach_mismatched(dataset, seed=seed)
            assert same_prompt_pairs(dataset) == 0


def test_one_majority_prompt_still_pairs_across_prompts():
    dataset = kto_dataset([PreferenceRecord(prompt="p", responses=[f"r{j}"], labels=[True]) for j in range(5)]
                          + [PreferenceRecord(prompt="q", responses=["s"], labels=[False])])
    attach_mismatched(dataset, seed=3)
    assert partner_of(dataset)[:5] == [5] * 5 and same_prompt_pairs(dataset) == 0


def test_prompts_are_compared_by_content():
    """Chat prompts with the same messages are the same prompt, whatever the order of the keys."""
    a = [{"role": "user", "content": "hi"}]
    b = [{"content": "hi", "role": "user"}]
    keys = [json.dumps(p, sort_keys=True) for p in (a, b)]
    with pytest.raises(ValueError):
        mismatched_partners(keys, seed=0)


def test_assignment_is_a_pure_function_of_the_prompts_and_the_seed():
    keys = [f"prompt {i // 2}" for i in range(40)]
    random.seed(123)
    state = random.getstate()
    first = mismatched_partners(keys, seed=0)
    assert random.getstate() == state                                   # no global random state consumed
    assert mismatched_partners(keys, seed=0) == first
    assert mismatched_partners(keys, seed=1) != first
    assert all(keys[j] != keys[i] for i, j in enumerate(first))


def test_changed_pairs_change_the_reference_cache_key():
    dataset = kto_dataset([PreferenceRecord.pair(f"prompt {i}", f"good {i}", f"bad {i}") for i in range(8)])
    attach_mismatched(dataset, seed=0)
    before = data_digest(dataset)
    attach_mismatched(dataset, seed=1)
    assert data_digest(dataset) != before


def test_large_dataset_is_paired_in_linear_time():
    keys = [f"prompt {i // 3}" for i in range(100_000)]
    partners = mismatched_partners(keys, seed=0)
    assert all(keys[j] != keys[i] for i, j in enumerate(partners))


@pytest.mark.parametrize("count", [1, 2, 6])
def test_one_prompt_only_is_a_data_error(count):
    dataset = tokenized([PreferenceRecord(prompt="p", responses=[f"r{j}"], labels=[j % 2 == 0],
                                          source=f"d.jsonl:{j + 1}") for j in range(count)])
    with pytest.raises(DataError, match=rf"d.jsonl:1 field 'prompt': KTO estimates its reference point z0 on "
                                        rf"mismatched pairs .* all {count} records have this same prompt"):
        attach_mismatched(dataset, seed=0)


# ----------------------------------------------------------------------------------- D2O's reference samples
class FakeSampler:
    """Stands in for ``generate``: counts calls; the n-th call's samples are "call n sample j"."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, tokenizer, prompts, config, progress, desc):
        self.calls += 1
        return [type("S", (), {"text": f"call {self.calls} sample {j}"})()
                for j in range(len(prompts) * config.num_samples)]


@pytest.fixture
def sampler(monkeypatch):
    fake = FakeSampler()
    monkeypatch.setattr(preference, "generate", fake)
    return fake


def reference(weight: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(model.weight, weight)
    torch.nn.init.zeros_(model.bias)
    model.name_or_path = "runs/reference"  # the same path for different weights
    return model


def sample(model, cache):
    records = [PreferenceRecord(prompt=p, responses=["bad"], labels=[False]) for p in ("p1", "p2", "p1")]
    out = add_reference_samples(records, model, None, 2, max_new_tokens=4, seed=0, cache=cache, progress=False)
    return [r.responses[1:] for r in out]


def test_reference_samples_are_reused_for_the_same_weights(sampler, tmp_path):
    cache = tmp_path / "reference_samples.json"
    first = sample(reference(1.0), cache)
    assert first[0] == first[2] and sampler.calls == 1
    assert sample(reference(1.0), cache) == first and sampler.calls == 1


def test_reference_samples_are_keyed_on_the_weights_not_the_path(sampler, tmp_path):
    cache = tmp_path / "reference_samples.json"
    sample(reference(1.0), cache)
    assert sample(reference(2.0), cache)[0] == ["call 2 sample 0", "call 2 sample 1"] and sampler.calls == 2


@pytest.mark.parametrize("damage, reason", [
    (lambda text: text[: len(text) // 2], "unreadable (JSONDecodeError: "),
    (lambda text: text.replace("call 1 sample 0", "an edited sample"), "its samples do not match their digest"),
    (lambda text: text.replace('"call 1 sample 1"', '"call 1 sample 1", "one more"', 1),
     "its samples do not match their digest"),
    (lambda text: "[1, 2]", "not a reference samples file"),
    (lambda text: "\udcff", "unreadable (UnicodeDecodeError: "),
])
def test_a_damaged_samples_file_is_resampled_with_a_warning(sampler, tmp_path, capsys, damage, reason):
    cache = tmp_path / "reference_samples.json"
    sample(reference(1.0), cache)
    text = damage(cache.read_text())
    cache.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert sample(reference(1.0), cache)[0] == ["call 2 sample 0", "call 2 sample 1"] and sampler.calls == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"alignkit: warning: {cache}: {reason}")
    assert err.endswith("; sampling the reference again\n")
    assert sample(reference(1.0), cache)[0] == ["call 2 sample 0", "call 2 sample 1"]  # the new file is used
