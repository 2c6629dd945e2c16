"""Response masks mark exactly the response tokens, including where a BPE merge could cross the boundary."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from alignkit.data.collate import collate
from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import render_prompt, tokenize_records


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE that has learned the merge 'abcd', so 'ab' + 'cd' joins into one token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["xx abcd yy"] * 200 + ["ab", "cd"] * 5, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def test_merge_across_boundary_keeps_exact_mask(bpe):
    prompt, response = "xx ab", "cd yy"
    joint = bpe(prompt + response, add_special_tokens=False)["input_ids"]
    alone = bpe(prompt, add_special_tokens=False)["input_ids"]
    assert joint[: len(alone)] != alone, "the fixture must produce a merge across the boundary"

    (item,) = tokenize_records(bpe, [PreferenceRecord(prompt=prompt, responses=[response])])
    ids, mask = item.sequence(0)
    response_ids = [t for t, m in zip(ids, mask) if m]
    assert bpe.decode(response_ids) == response + "</s>"
    assert bpe.decode([t for t, m in zip(ids, mask) if not m]) == prompt
    assert mask == [0] * len(alone) + [1] * (len(ids) - len(alone))


def test_chat_template_masks_assistant_turn_only(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world / "base")
    record = PreferenceRecord.pair([{"role": "user", "content": "describe the rose ."}],
                                   [{"role": "assistant", "content": "the rose is lovely ."}],
                                   [{"role": "assistant", "content": "the rose is dull ."}])
    (item,) = tokenize_records(tok, [record])
    for k, text in enumerate(["the rose is lovely .", "the rose is dull ."]):
        ids, mask = item.sequence(k)
        assert tok.decode([t for t, m in zip(ids, mask) if m]) == text + "<|end|>"
        assert tok.decode([t for t, m in zip(ids, mask) if not m]) == "<|user|>describe the rose .<|end|><|assistant|>"
    assert render_prompt(tok, record.prompt).endswith("<|assistant|>")


def test_collate_orders_chosen_first_and_masks_padding(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world / "base")
    records = [PreferenceRecord(prompt="p", responses=["short .", "a much longer answer here ."], ranking=[1, 0]),
               PreferenceRecord.pair("q", "yes .", "no .")]
    items = tokenize_records(tok, records)
    batch = collate(items, tok.pad_token_id)
    assert batch.input_ids.shape[0] == 4
    assert batch.group.tolist() == [0, 0, 1, 1]
    # ranking [1, 0]: the longer (preferred) response comes first
    first = batch.input_ids[0][batch.response_mask[0]].tolist()
    assert tok.decode(first) == "a much longer answer here ." + "<|end|>"
    assert not batch.response_mask[batch.attention_mask == 0].any()


def test_overlength_policies_are_explicit_and_counted(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world / "base")
    long = " ".join(["the rose is lovely ."] * 30)
    records = [PreferenceRecord(prompt="describe the rose .", responses=[long], source="f.jsonl:3"),
               PreferenceRecord(prompt="describe the rose .", responses=["ok ."], source="f.jsonl:4")]
    report = DataReport()
    kept = tokenize_records(tok, records, max_length=32, max_prompt_length=8, overlength="drop", report=report)
    assert len(kept) == 1 and report.dropped["over_max_length"] == 1
    assert report.examples["over_max_length"] == ["f.jsonl:3"]

    report = DataReport()
    kept = tokenize_records(tok, records, max_length=32, max_prompt_length=8, overlength="truncate", report=report)
    assert len(kept) == 2 and report.truncated == 1
    assert len(kept[0].prompt_ids) + len(kept[0].response_ids[0]) == 32

    with pytest.raises(DataError, match=r"f\.jsonl:3.*max_length=32"):
        tokenize_records(tok, records, max_length=32, max_prompt_length=8, overlength="error")


def test_template_that_rewrites_the_prompt_is_an_error(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world / "base")
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if loop.last and m['role'] == 'user' %}"
                         "{% endif %}|{% endfor %}{% if add_generation_prompt %}>>{% endif %}")
    record = PreferenceRecord(prompt=[{"role": "user", "content": "hi"}],
                              responses=[[{"role": "assistant", "content": "yo"}]], source="x.jsonl:1")
    with pytest.raises(DataError, match=r"x\.jsonl:1.*not a prefix"):
        tokenize_records(tok, [record])


def test_pair_made_identical_by_truncation_is_handled_like_an_identical_pair(tiny_world):
    """data.drop_identical: dropped and counted under its own reason, or kept and counted as an anomaly."""
    tok = AutoTokenizer.from_pretrained(tiny_world / "base")
    shared = " ".join(["the rose is lovely ."] * 10)
    records = [PreferenceRecord.pair("describe the rose .", shared + " yes", shared + " no", source="f.jsonl:1"),
               PreferenceRecord.pair("describe the rose .", "yes .", "no .", source="f.jsonl:2")]
    report = DataReport()
    kept = tokenize_records(tok, records, max_length=24, max_prompt_length=8, report=report)
    assert [item.record.source for item in kept] == ["f.jsonl:2"]
    assert report.dropped == {"chosen_equals_rejected_after_truncation": 1}
    assert report.examples["chosen_equals_rejected_after_truncation"] == ["f.jsonl:1"]
    assert "dropped: chosen_equals_rejected_after_truncation=1" in report.summary()

    report = DataReport()
    kept = tokenize_records(tok, records, max_length=24, max_prompt_length=8, report=report, drop_identical=False)
    assert len(kept) == 2 and report.anomalies == {"chosen_equals_rejected_after_truncation": 1}
    assert kept[0].response_ids[0] == kept[0].response_ids[1] and report.truncated == 1


def test_truncated_pair_that_still_differs_is_kept(tiny_world):
    tok = AutoTokenizer.from_pretrained(tiny_world / "base")
    long = " ".join(["the rose is lovely ."] * 10)
    report = DataReport()
    kept = tokenize_records(tok, [PreferenceRecord.pair("describe the rose .", "yes " + long, "no " + long)],
                            max_length=24, max_prompt_length=8, report=report)
    assert len(kept) == 1 and report.truncated == 1 and not report.dropped and not report.anomalies


def test_chat_template_that_refuses_the_messages_names_the_record(tiny_world):
    """Templates such as Llama 2's raise ("roles must alternate"): a DataError naming file:line, not a traceback."""
    tok = AutoTokenizer.from_pretrained(tiny_world / "base")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system "
                         "messages') }}{% endif %}{{ m['content'] }}{% endfor %}")
    record = PreferenceRecord(prompt=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                              responses=[[{"role": "assistant", "content": "yo"}]], source="x.jsonl:4")
    with pytest.raises(DataError, match=r"^x\.jsonl:4 field 'prompt': the tokenizer's chat template refused these "
                                        r"messages: no system messages$"):
        tokenize_records(tok, [record])
