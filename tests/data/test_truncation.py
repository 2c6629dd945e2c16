"""Truncating a prompt from the left keeps its leading special tokens (BOS of a causal LM, [CLS] of a BERT-style
reward model), and the rest of the prompt is still its last tokens."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from alignkit.data.records import DataError, DataReport, PreferenceRecord
from alignkit.data.tokenize import tokenize_records, truncate_left

WORDS = [f"w{i}" for i in range(20)]


def word_tokenizer(specials: list[str], template: str, **roles: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose post-processor adds ``template``'s special tokens (``$A`` is the text)."""
    vocab = {token: i for i, token in enumerate(specials + WORDS + ["[UNK]"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=template,
                                                       special_tokens=[(s, vocab[s]) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **roles)


@pytest.fixture(scope="module")
def bos_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-style: ``<s>`` before the text; ``</s>`` is EOS (appended to text responses)."""
    return word_tokenizer(["<pad>", "<s>", "</s>"], "<s> $A", bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def cls_tokenizer() -> PreTrainedTokenizerFast:
    """BERT-style: ``[CLS] text [SEP]``; the reward head reads the [CLS] position."""
    return word_tokenizer(["[PAD]", "[CLS]", "[SEP]"], "[CLS] $A [SEP]", cls_token="[CLS]", sep_token="[SEP]",
                          pad_token="[PAD]", eos_token="[SEP]")


PROMPT = " ".join(WORDS[:12])


@pytest.mark.parametrize("fixture,first", [("bos_tokenizer", "<s>"), ("cls_tokenizer", "[CLS]")])
def test_left_truncation_keeps_the_leading_special_token(request, fixture: str, first: str) -> None:
    tokenizer = request.getfixturevalue(fixture)
    full = tokenizer(PROMPT)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(full[0]) == first
    report = DataReport()
    (item,) = tokenize_records(tokenizer, [PreferenceRecord(prompt=PROMPT, responses=[" w19"])], max_length=8,
                               max_prompt_length=5, report=report)
    assert report.truncated == 1
    assert len(item.prompt_ids) == 5
    assert item.prompt_ids[0] == full[0]            # the special token survives
    assert item.prompt_ids[1:] == full[-4:]         # the rest is the prompt's last tokens


def test_prompts_without_special_tokens_truncate_as_before(bos_tokenizer) -> None:
    ids = bos_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert truncate_left(ids, 4, bos_tokenizer) == ids[-4:]
    assert truncate_left(ids, 40, bos_tokenizer) == ids


def test_special_tokens_filling_the_prompt_length_are_an_error(bos_tokenizer) -> None:
    ids = bos_tokenizer("<s> <s> w1 w2")["input_ids"]  # three leading <s>
    with pytest.raises(DataError, match="data.jsonl:3: 3 leading special tokens leave no room"):
        truncate_left(ids, 3, bos_tokenizer, "data.jsonl:3")
