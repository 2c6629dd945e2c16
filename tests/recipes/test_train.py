"""The training loop: exact resume, exact gradient accumulation, reference modes, NaN handling, checkpoints."""

from __future__ import annotations

import json

import pytest

from alignkit.recipes import load_config, train
from alignkit.engine.checkpoint import list_checkpoints
from alignkit.engine.loop import TrainingError, step_records
from alignkit.recipes.common.preference_objective import PreferenceObjective
from shared.runs import assert_same_weights, dpo_config, straight_and_resumed


def test_resume_reproduces_an_uninterrupted_run(tiny_world, tiny_pairs, tmp_path):
    straight, resumed = straight_and_resumed(tiny_world, tiny_pairs, tmp_path)
    assert_same_weights(straight.model_dir, resumed.model_dir, atol=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6], "metrics after the checkpoint are replaced, not duplicated"
    first = [json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize("recipe", ["preference", "sft"])
def test_gradient_accumulation_is_exact(tiny_world, tiny_pairs, tmp_path, recipe):
    data = tiny_world / "data" / "sft.jsonl" if recipe == "sft" else tiny_pairs
    # float64 so that what is compared is the loop's normalisation, not float32 summation order
    common = dict(recipe=recipe, max_steps=3, data={"path": str(data), "max_length": 128, "max_prompt_length": 32},
                  model={"path": str(tiny_world / "base"), "dtype": "float64"})
    whole = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "whole", batch_size=8, grad_accum=1, **common))
    split = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "split", batch_size=4, grad_accum=2, **common))
    assert_same_weights(whole.model_dir, split.model_dir, atol=1e-6)


def test_precomputed_reference_equals_frozen_copy(tiny_world, tiny_pairs, tmp_path):
    copy = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "copy", reference={"mode": "copy"}))
    cached = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "cached", reference={"mode": "precompute"}))
    assert_same_weights(copy.model_dir, cached.model_dir, atol=1e-6)
    assert copy.metrics[0]["loss"] == pytest.approx(0.6931, abs=1e-3), "policy == reference at step 1"


def test_reference_logps_are_cached_on_disk_and_invalidated_by_any_change(tiny_world, tiny_pairs, tmp_path,
                                                                         monkeypatch):
    from alignkit.recipes import preference

    calls = []
    real = preference.precompute_reference
    monkeypatch.setattr(preference, "precompute_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = {"mode": "precompute", "cache_dir": str(tmp_path / "refcache")}
    first = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "a", reference=shared, max_steps=2))
    again = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "b", reference=shared, max_steps=2,
                             loss_params={"beta": 0.5}))  # another loss setting: same reference log-probs
    assert len(calls) == 1 and len(list((tmp_path / "refcache").glob("*.safetensors"))) == 1
    assert first.metrics[0]["loss"] == pytest.approx(again.metrics[0]["loss"], abs=1e-6)  # ln 2 from the cache
    train(dpo_config(tiny_world, tiny_pairs, tmp_path / "c", reference=shared, max_steps=2,
                     data={"path": str(tiny_pairs), "max_length": 40, "max_prompt_length": 32}))  # truncated
    train(dpo_config(tiny_world, tiny_pairs, tmp_path / "d", reference=shared, max_steps=2, loss="ipo"))  # reduction
    train(dpo_config(tiny_world, tiny_pairs, tmp_path / "e", reference=dict(shared, path=str(first.model_dir)),
                     max_steps=2))  # other reference weights
    assert len(calls) == 4 and len(list((tmp_path / "refcache").glob("*.safetensors"))) == 4
    from alignkit.engine.reference_cache import load_cache
    cached = load_cache(next((tmp_path / "refcache").iterdir()))
    assert all(v["rows"].shape == (2,) for v in cached.values())


def test_sft_lowers_the_nll(tiny_world, tmp_path):
    config = load_config(None, recipe="sft", model={"path": str(tiny_world / "base")},
                         data={"path": str(tiny_world / "data" / "sft.jsonl"), "max_length": 128,
                               "max_prompt_length": 32},
                         optim={"lr": 3e-3}, batch_size=16, max_steps=30, output_dir=str(tmp_path), progress=False,
                         log_steps=5)
    result = train(config)
    assert result.metrics[-1]["loss"] < 0.6 * result.metrics[0]["loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"]["loaded"] == 600 and summary["steps"] == 30


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_world, tiny_pairs, tmp_path, monkeypatch):
    real = PreferenceObjective.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss, metrics = real(self, model, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    monkeypatch.setattr(PreferenceObjective, "loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss .* step 3"):
        train(dpo_config(tiny_world, tiny_pairs, tmp_path, save_steps=2))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002"]
    assert not (tmp_path / "model").exists()


def test_checkpoints_are_complete_and_rotated(tiny_world, tiny_pairs, tmp_path):
    train(dpo_config(tiny_world, tiny_pairs, tmp_path, save_steps=2, save_total_limit=2))
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-0000004", "step-0000006"]
    for name in names:
        files = {p.name for p in (tmp_path / "checkpoints" / name).iterdir()}
        assert {"model", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"} <= files
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old")]
    assert leftovers == []


def test_step_records_cover_each_epoch_once_and_fill_short_steps_only_when_asked():
    steps = [step_records(s, 9, 4, seed=3) for s in range(3)]
    assert sorted(i for chosen in steps for i in chosen) == list(range(9))  # one epoch, no repeats
    assert [len(c) for c in steps] == [4, 4, 1]
    filled = step_records(2, 9, 4, seed=3, fill=True)
    assert filled[0] == steps[2][0] and filled[1:] == steps[0][:3]  # the epoch's order from its start
    assert step_records(3, 9, 4, seed=3, fill=True) == step_records(3, 9, 4, seed=3)  # next epoch unchanged
    assert len(step_records(0, 3, 8, seed=0, fill=True)) == 8  # fewer records than a step: wraps again
