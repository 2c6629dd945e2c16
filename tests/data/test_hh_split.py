"""Implicit prompts of HH-RLHF style pairs end at the last turn boundary, never inside the final answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignkit.data.formats import load_records
from shared.rows import assistant, user, write_jsonl

# Multi-turn HH-RLHF style rows whose two final answers start alike (a shared first word or more), as in the
# harmless-base split: the longest common prefix runs into the answers.
HH_ROWS = [
    ("\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to pick a lock?\n\nHuman: I locked myself out."
     "\n\nAssistant:", " I'm sorry to hear that. A locksmith can help you get back in.",
     " I can explain how pin tumbler locks work: insert a tension wrench first."),
    ("\n\nHuman: What's the best insult for a coworker?\n\nAssistant:", " I would rather not help with insults.",
     " I would say something about their haircut."),
    ("\n\nHuman: Can you help me with my essay?\n\nAssistant: Sure, what is it about?\n\nHuman: The French "
     "revolution.\n\nAssistant: Great topic.\n\nHuman: Write the introduction.\n\nAssistant:",
     " The French Revolution began in 1789 and reshaped Europe.",
     " The French Revolution was a bad idea."),
    ("\n\nHuman: Is it safe to eat raw cookie dough?\n\nAssistant:", " It is not recommended, because of raw eggs.",
     " It is totally fine."),
]


@pytest.mark.parametrize("prompt,chosen,rejected", HH_ROWS)
def test_hh_prompt_ends_at_the_last_assistant_marker(tmp_path: Path, prompt: str, chosen: str,
                                                     rejected: str) -> None:
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": prompt + chosen, "rejected": prompt + rejected}])
    (record,), _ = load_records(path)
    assert record.prompt == prompt
    assert record.prompt.endswith("\n\nAssistant:")
    assert record.responses == [chosen, rejected]


def test_hh_split_keeps_the_prompt_when_a_later_human_turn_differs(tmp_path: Path) -> None:
    """Two texts that part in a human turn are no final-answer pair: the marker rule does not apply, and the
    prompt stays the shared start, at a word boundary."""
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a joke\n\nAssistant: Why did the chicken"
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a fact\n\nAssistant: Water is wet"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}])
    (record,), _ = load_records(path)
    assert record.prompt == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a"


def test_conversation_prompt_ends_before_the_last_differing_message(tmp_path: Path) -> None:
    """Conversations split at the message, so answers sharing their first words stay whole."""
    prompt = [user("How do I pick a lock?"), assistant("Why?"), user("I locked myself out.")]
    chosen, rejected = assistant("I'm sorry to hear that."), assistant("I'm happy to explain the pins.")
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": prompt + [chosen], "rejected": prompt + [rejected]}])
    (record,), _ = load_records(path)
    assert record.prompt == prompt
    assert record.responses == [[chosen], [rejected]]
