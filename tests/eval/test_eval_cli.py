"""``alignkit eval`` end to end with the new judges: rm: with several models, llm: pairwise."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main


def strict_json(path):
    def reject(constant):
        raise ValueError(f"{constant} in {path}")
    return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture(scope="module")
def rm_dir(tiny_world, tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification

    from alignkit.models.loading import load_tokenizer

    path = tmp_path_factory.mktemp("rm_cli")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(str(tiny_world / "base"), num_labels=1).save_pretrained(path)
    load_tokenizer(str(tiny_world / "base")).save_pretrained(path)
    return path


def test_eval_rm_judge_several_models_ratings_and_html(tiny_world, rm_dir, tmp_path, capsys):
    base, out = str(tiny_world / "base"), tmp_path / "rep"
    code = main(["eval", "--model", f"a={base}", "--model", f"b={base}", "--baseline", base, "--prompts",
                 str(tiny_world / "data" / "prompts_eval.jsonl"), "--num-prompts", "6", "--max-new-tokens", "6",
                 "--judge", f"rm:{rm_dir}", "--reward-judge", "sandbox-gold", "--bootstrap", "50",
                 "--out", str(out), "--html", str(tmp_path / "page.html")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| Elo |" in printed and "LC win rate" in printed
    report = strict_json(out / "eval.json")
    assert report["judge"] == f"rm:{rm_dir}" and report["reward_judges"] == ["sandbox-gold"]
    assert {r["model"] for r in report["ratings"]} == {"baseline", "a", "b"}
    a = report["models"][1]
    assert a["win_rate"]["ties"] == 6                      # same model, same seed: the reward model ties
    assert "reward/total" in a and "reward/sandbox-gold/on_topic" in a
    assert (tmp_path / "page.html").exists() and not (out / "eval.html").exists()
    assert {"win_rates.png", "ratings.png", "eval.md"} <= {p.name for p in out.iterdir()}


def test_eval_llm_pairwise_judge_reports_protocol_and_invalid(tiny_world, tmp_path, capsys):
    base, out = str(tiny_world / "base"), tmp_path / "rep"
    code = main(["eval", "--model", f"m={base}", "--baseline", base, "--prompts",
                 str(tiny_world / "data" / "prompts_eval.jsonl"), "--num-prompts", "4", "--max-new-tokens", "6",
                 "--judge", f"llm:{base}", "--judge-mode", "pairwise", "--judge-max-new-tokens", "6",
                 "--judge-max-answer-tokens", "12", "--bootstrap", "20", "--out", str(out)])
    assert code == 0
    assert "position_consistency" in capsys.readouterr().out
    report = strict_json(out / "eval.json")
    row = report["models"][1]
    protocol = row["judge_protocol"]
    assert report["judge_mode"] == "pairwise" and protocol["comparisons"] == 4 and protocol["judge_calls"] == 8
    assert report["judge_stats"]["judge_calls"] == 8
    assert report["judge_stats"]["invalid_outputs"] == protocol["invalid_verdicts"]
    assert row["invalid"] == protocol["invalid"]
    assert (row["win_rate"] is None) == (protocol["invalid"] == 4)   # invalid comparisons are left out, counted
    assert (out / "eval.html").exists()


def test_eval_unknown_judge_is_a_clean_error(tiny_world, tmp_path, capsys):
    base = str(tiny_world / "base")
    assert main(["eval", "--model", base, "--baseline", base, "--prompts",
                 str(tiny_world / "data" / "prompts_eval.jsonl"), "--judge", "gpt-4", "--out", str(tmp_path)]) == 2
    assert "unknown judge 'gpt-4'" in capsys.readouterr().err
