"""progress=false hides the bar, never the data summary; the reward recipe loads its data like the others
(data.on_invalid, data.limit, a missing data.path named by its key)."""

from __future__ import annotations

import json

import pytest
from shared.runs import dpo_config

from alignkit.data.records import DataError
from alignkit.recipes import load_config, train


def test_progress_false_still_prints_the_data_summary(tiny_world, tiny_pairs, tmp_path, capsys):
    train(dpo_config(tiny_world, tiny_pairs, tmp_path / "run", max_steps=1, progress=False))
    assert f"[alignkit] data {tiny_pairs}:" in capsys.readouterr().out


def reward_run(tiny_world, data, out, **values):
    return load_config(None, recipe="reward", model={"path": str(tiny_world / "base")},
                       data={"path": str(data), "max_length": 128, "max_prompt_length": 32, **values},
                       batch_size=4, max_steps=1, output_dir=str(out), progress=False, resume="never")


def test_reward_recipe_skips_invalid_rows_when_asked(tiny_world, tiny_pairs, tmp_path):
    data = tmp_path / "pairs.jsonl"
    lines = tiny_pairs.read_text().splitlines()[:12]
    data.write_text("\n".join(lines[:5] + ["[1, 2]"] + lines[5:]) + "\n")  # line 6 is not a record
    with pytest.raises(DataError, match=r"pairs\.jsonl:6: expected an object"):
        train(reward_run(tiny_world, data, tmp_path / "strict"))
    train(reward_run(tiny_world, data, tmp_path / "skip", on_invalid="skip"))
    dropped = json.loads((tmp_path / "skip" / "summary.json").read_text())["data"]["dropped"]
    assert sum(dropped.values()) == 1 and all(reason.startswith("invalid") for reason in dropped), dropped
