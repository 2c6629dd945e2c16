"""One prompt rule for ``alignkit eval``, ``generate`` and ``eval rm``: a text prompt is asked as a user turn through
the tokenizer's chat template when it has one (as training renders conversations); ``--no-chat`` opts out. The
tiny world's tokenizer has a ChatML-like template (``<|user|>...<|end|><|assistant|>``)."""

from __future__ import annotations

import json

import pytest

from alignkit.apps.sandbox_build import read_prompts
from alignkit.cli import main
from alignkit.eval.evaluate import evaluate
from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.rewards.judges import SandboxGoldJudge
from alignkit.sampling.base import chat_prompt, encode_prompts
from alignkit.sampling.generate import SamplingConfig, generate
from alignkit.utils.io import write_jsonl


@pytest.fixture(scope="module")
def text_prompts(tiny_world, tmp_path_factory):
    """The tiny world's eval prompts as plain text rows (what a user's prompts file holds)."""
    path = tmp_path_factory.mktemp("chat") / "prompts.jsonl"
    write_jsonl(path, [{"prompt": p[0]["content"]} for p in read_prompts(tiny_world / "data" / "prompts_eval.jsonl")])
    return path


def texts(path):
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


def test_text_prompts_render_through_the_chat_template_unless_opted_out(tiny_world):
    tok = load_tokenizer(str(tiny_world / "base"))
    asked = chat_prompt(tok, "tell me about the harbour .")
    assert asked == [{"role": "user", "content": "tell me about the harbour ."}]
    assert tok.decode(encode_prompts(tok, [asked])[0]) == "<|user|>tell me about the harbour .<|end|><|assistant|>"
    assert chat_prompt(tok, "tell me", chat=False) == "tell me"
    tok.chat_template = None
    assert chat_prompt(tok, "tell me") == "tell me"   # no template: plain text, the only rendering there is


def test_generate_asks_chat_models_with_the_template_and_no_chat_without(tiny_world, text_prompts, tmp_path):
    base = str(tiny_world / "base")
    model, tok = load_causal_lm(base), load_tokenizer(base)
    prompts = texts(text_prompts)[:4]
    config = SamplingConfig(max_new_tokens=6, seed=1, batch_size=4)
    as_chat = generate(model, tok, [chat_prompt(tok, p) for p in prompts], config)
    as_text = generate(model, tok, prompts, config)
    assert [s.response_ids for s in as_chat] != [s.response_ids for s in as_text]
    for extra, want in (((), as_chat), (("--no-chat",), as_text)):
        out = tmp_path / f"rows{len(extra)}.jsonl"
        assert main(["generate", "--model", base, "--prompts", str(text_prompts), "--out", str(out), "--num-prompts",
                     "4", "--max-new-tokens", "6", "--seed", "1", "--batch-size", "4", "--quiet", *extra]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["response_ids"] for r in rows] == [s.response_ids for s in want]
        assert [r["prompt"] for r in rows] == prompts   # rows keep the prompts as given


def test_eval_asks_chat_models_with_the_template_and_shows_the_finished_share(tiny_world, text_prompts, tmp_path):
    base = str(tiny_world / "base")
    model, tok = load_causal_lm(base), load_tokenizer(base)
    prompts = texts(text_prompts)[:4]
    sampling = SamplingConfig(max_new_tokens=6)
    for chat in (True, False):
        report = evaluate({"m": base}, base, prompts, SandboxGoldJudge(), sampling=sampling, progress=False,
                          out_dir=tmp_path / str(chat), chat=chat, n_bootstrap=10)
        want = generate(model, tok, [chat_prompt(tok, p, chat) for p in prompts], sampling)
        assert report["chat_template"] is chat
        assert [e["baseline"] for e in report["examples"]] == [s.text for s in want]
        finished = sum(s.finished for s in want) / len(want)
        assert report["models"][0]["finished"] == pytest.approx(finished)
        assert "finished" in (tmp_path / str(chat) / "eval.md").read_text().splitlines()[2]
        assert "finished" in (tmp_path / str(chat) / "eval.html").read_text()


def test_eval_cli_no_chat_reaches_the_report(tiny_world, text_prompts, tmp_path, capsys):
    base = str(tiny_world / "base")
    for extra in ((), ("--no-chat",)):
        out = tmp_path / f"r{len(extra)}"
        assert main(["eval", "--model", f"m={base}", "--baseline", base, "--prompts", str(text_prompts),
                     "--num-prompts", "3", "--max-new-tokens", "4", "--bootstrap", "10", "--out", str(out),
                     *extra]) == 0
        assert json.loads((out / "eval.json").read_text())["chat_template"] == (not extra)
        assert "| finished |" in capsys.readouterr().out
