"""``alignkit eval rm``: ECE by hand, RewardBench and alignkit files, per-subset / per-group accuracy, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.cli import main
from alignkit.models.loading import load_tokenizer
from alignkit.rewards import HeadLayout, load_reward_model, reliability, score
from alignkit.sandbox import world
from alignkit.utils.io import write_jsonl

from shared.rows import sandbox_rows  # noqa: E402


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_ece_by_hand() -> None:
    # confidences / correct: 0.55 right, 0.55 wrong, a tie (0.5, half right), 0.75 wrong, 0.95 right twice, 1.0 right
    margins = [logit(0.55), -logit(0.55), 0.0, -logit(0.75), logit(0.95), logit(0.95), 60.0]
    table = reliability(margins, bins=5)  # bins of width 0.1 over [0.5, 1]
    assert table.counts.tolist() == [3, 0, 1, 0, 3]
    # bin 1: confidence (0.55 + 0.55 + 0.5) / 3, accuracy (1 + 0 + 0.5) / 3; bin 3: 0.75 vs 0; bin 5: 2.9/3 vs 1
    expected = (3 / 7) * abs(1.5 / 3 - 1.6 / 3) + (1 / 7) * 0.75 + (3 / 7) * abs(1 - 2.9 / 3)
    assert table.ece == pytest.approx(expected, abs=1e-9)
    assert np.isnan(table.accuracy[1]) and table.accuracy[2] == 0.0


@pytest.fixture(scope="module")
def rm_dir(tiny_world: Path) -> Path:
    """An (untrained) reward model saved like the recipe saves one."""
    tokenizer = load_tokenizer(str(tiny_world / "base"))
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_world / "base"), tokenizer, HeadLayout(), device="cpu")
    out = tiny_world / "rm_untrained"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_rewardbench_file_with_subsets(rm_dir: Path, tmp_path: Path) -> None:
    rows = sandbox_rows(30, seed=8, noise=0.0)["pairs"]
    bench = [{"prompt": r["prompt"][0]["content"], "chosen": r["chosen"][0]["content"],
              "rejected": r["rejected"][0]["content"], "subset": "odd" if i % 2 else "even", "id": i}
             for i, r in enumerate(rows)]
    data = tmp_path / "bench.jsonl"
    write_jsonl(data, bench)
    out = tmp_path / "report"
    assert main(["eval", "rm", "--model", str(rm_dir), "--data", str(data), "--out", str(out), "--bins", "4"]) == 0
    result = json.loads((out / "rm_eval.json").read_text())
    tokenizer = load_tokenizer(str(rm_dir))
    model = load_reward_model(str(rm_dir), tokenizer, device="cpu")
    prompts = [r["prompt"] for r in rows]  # the chat form: the tokenizer has a chat template
    margins = (score(model, tokenizer, prompts, [r["chosen"] for r in rows])
               - score(model, tokenizer, prompts, [r["rejected"] for r in rows])).numpy()
    assert result["pairs"] == len(rows) and result["accuracy"] == pytest.approx(float((margins > 0).mean()))
    for name, parity in (("even", 0), ("odd", 1)):
        mine = margins[parity::2]
        assert result["by_subset"][name]["n"] == len(mine)
        assert result["by_subset"][name]["accuracy"] == pytest.approx(float((mine > 0).mean()))
    assert result["calibration"]["ece"] == pytest.approx(reliability(margins, bins=4).ece, abs=1e-6)
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## By subset" in (out / "rm_eval.md").read_text()


def test_annotator_pairs_by_group_with_gold(rm_dir: Path, tmp_path: Path) -> None:
    rows = sandbox_rows(40, seed=9, noise=0.0)["annotators"]
    data = tmp_path / "annotators.jsonl"
    write_jsonl(data, rows)
    out = tmp_path / "report"
    assert main(["eval", "rm", "--model", str(rm_dir), "--data", str(data), "--out", str(out), "--group-by",
                 "gold_group", "--gold", "sandbox"]) == 0
    result = json.loads((out / "rm_eval.json").read_text())
    assert set(result["by_group"]) == {"warm", "terse"}
    assert sum(g["n"] for g in result["by_group"].values()) == len(rows)
    tokenizer = load_tokenizer(str(rm_dir))
    model = load_reward_model(str(rm_dir), tokenizer, device="cpu")
    prompts = [r["prompt"] for r in rows]
    margins = (score(model, tokenizer, prompts, [r["chosen"] for r in rows])
               - score(model, tokenizer, prompts, [r["rejected"] for r in rows])).numpy()
    gold = np.array([world.gold_reward(r["prompt"][0]["content"], r["chosen"][0]["content"], r["gold_group"])
                     - world.gold_reward(r["prompt"][0]["content"], r["rejected"][0]["content"], r["gold_group"])
                     for r in rows])
    decided = gold != 0
    assert result["gold"]["n_decided"] == int(decided.sum())
    assert result["gold"]["agreement"] == pytest.approx(float((np.sign(margins) == np.sign(gold))[decided].mean()))
    assert result["gold"]["label_agrees_with_gold"] == 1.0  # noiseless labels follow the group's gold


@pytest.mark.parametrize("rows,where", [
    ([{"prompt": "hello", "chosen": "a", "rejected": "b"}, {"prompt": "hi", "chosen": 3, "rejected": "b"}],
     ":2 field 'chosen'"),
    ([{"prompt": "hi", "completion": "a", "label": True}], ":1 field 'chosen'"),  # unpaired: nothing to compare
])
def test_bad_rows_name_file_line_and_field(rm_dir: Path, tmp_path: Path, capsys, rows: list, where: str) -> None:
    data = tmp_path / "bad.jsonl"
    write_jsonl(data, rows)
    assert main(["eval", "rm", "--model", str(rm_dir), "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    assert f"{data}{where}" in capsys.readouterr().err


def bench_file(tmp_path: Path, rows: list) -> Path:
    """The pairs as a RewardBench-style text file."""
    path = tmp_path / "bench.jsonl"
    write_jsonl(path, [{"prompt": r["prompt"][0]["content"], "chosen": r["chosen"][0]["content"],
                        "rejected": r["rejected"][0]["content"]} for r in rows])
    return path


def test_no_chat_scores_text_rows_as_text(rm_dir: Path, tmp_path: Path) -> None:
    rows = sandbox_rows(20, seed=8, noise=0.0)["pairs"]
    data = bench_file(tmp_path, rows)
    tokenizer = load_tokenizer(str(rm_dir))
    model = load_reward_model(str(rm_dir), tokenizer, device="cpu")
    for extra, shape in (((), lambda m: m), (("--no-chat",), lambda m: m[0]["content"])):
        out = tmp_path / f"r{len(extra)}"
        assert main(["eval", "rm", "--model", str(rm_dir), "--data", str(data), "--out", str(out), *extra]) == 0
        result = json.loads((out / "rm_eval.json").read_text())
        prompts = [shape(r["prompt"]) for r in rows]
        margins = (score(model, tokenizer, prompts, [shape(r["chosen"]) for r in rows])
                   - score(model, tokenizer, prompts, [shape(r["rejected"]) for r in rows])).numpy()
        assert result["accuracy"] == pytest.approx(float((margins > 0).mean()))
        assert result["calibration"]["ece"] == pytest.approx(reliability(margins).ece, abs=1e-6)


def test_scores_at_the_lengths_saved_with_the_model_unless_overridden(rm_dir: Path, tmp_path: Path, capsys) -> None:
    tokenizer = load_tokenizer(str(rm_dir))
    model = load_reward_model(str(rm_dir), tokenizer, device="cpu")
    model.config.alignkit_lengths = {"max_length": 20, "max_prompt_length": 8}   # as the reward recipe saves them
    saved = tmp_path / "rm_short"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    rows = sandbox_rows(20, seed=8, noise=0.0)["pairs"]
    data = bench_file(tmp_path, rows)
    longest = [max(len(tokenizer(tokenizer.apply_chat_template(r["prompt"] + r[k], tokenize=False))["input_ids"])
                   for k in ("chosen", "rejected")) for r in rows]
    assert main(["eval", "rm", "--model", str(saved), "--data", str(data), "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "rm_eval.json").read_text())
    assert result["lengths"] == {"max_length": 20, "max_prompt_length": 8, "source": "saved with the model"}
    assert result["truncated_pairs"] == sum(n > 20 for n in longest) > 0
    assert "lengths 20/8 (saved with the model)" in capsys.readouterr().out
    assert main(["eval", "rm", "--model", str(saved), "--data", str(data), "--out", str(tmp_path / "b"),
                 "--max-length", "150", "--max-prompt-length", "60"]) == 0
    result = json.loads((tmp_path / "b" / "rm_eval.json").read_text())
    assert result["lengths"]["source"] == "options" and result["truncated_pairs"] == 0
    assert main(["eval", "rm", "--model", str(saved), "--data", str(data), "--max-prompt-length", "30"]) == 2
    assert capsys.readouterr().err.strip() == ("alignkit: error: <data>: max_prompt_length=30 must be below "
                                               "max_length=20 (options)")


def test_the_reward_recipe_saves_its_lengths_with_the_model(tiny_world: Path, tiny_pairs: Path, tmp_path: Path) -> None:
    from alignkit.recipes import load_config, train
    from transformers import AutoConfig

    config = load_config(None, recipe="reward", model={"path": str(tiny_world / "base")},
                         data={"path": str(tiny_pairs), "max_length": 96, "max_prompt_length": 40}, batch_size=8,
                         max_steps=1, output_dir=str(tmp_path / "run"), progress=False, resume="never")
    result = train(config)
    saved = AutoConfig.from_pretrained(result.model_dir).alignkit_lengths
    assert saved == {"max_length": 96, "max_prompt_length": 40}
