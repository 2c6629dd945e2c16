"""What is saved is whole and finite, damaged checkpoints and caches are recognised, one run per output directory.

- Non-finite weights or optimizer state are never saved; the error names the step and the real last good checkpoint.
- resume=auto skips a damaged latest checkpoint (one warning line) and resumes to the same result; an explicit
  damaged resume=PATH is a one-line error; what a killed save left behind is removed at the next start.
- A second run on a locked output_dir fails at once, naming the holder.
- A reference log-prob cache file that is edited, truncated or non-finite is recomputed after a warning line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from alignkit.cli import main
from alignkit.config import ConfigError
from alignkit.engine import parallel, reference_cache
from alignkit.engine.checkpoint import all_finite, find_resume_checkpoint, list_checkpoints, remove_orphans
from alignkit.engine.loop import TrainingError
from alignkit.recipes import train
from alignkit.utils.io import DirectoryInUse, exclusive_lock
from shared.runs import assert_same_weights, dpo_config


def poison_after_step(monkeypatch, at_call: int, poison) -> None:
    """Make the optimizer step number ``at_call`` end with ``poison(optimizer, params)``."""
    real = parallel.Replicated.step
    calls = {"n": 0}

    def step(self, optimizer, params, max_grad_norm):
        norm = real(self, optimizer, params, max_grad_norm)
        calls["n"] += 1
        if calls["n"] == at_call:
            with torch.no_grad():
                poison(optimizer, params)
        return norm

    monkeypatch.setattr(parallel.Replicated, "step", step)


# ------------------------------------------------------------------------------------------ non-finite saves
def test_overflowing_learning_rate_saves_nothing(tiny_world, tiny_pairs, tmp_path):
    """The reviewer's case: optim.lr=1e39 max_steps=1 made every weight inf/NaN and still exited 0."""
    with pytest.raises(TrainingError, match=r"non-finite weights at step 1; .*no checkpoint was saved before it"):
        train(dpo_config(tiny_world, tiny_pairs, tmp_path, optim={"lr": 1e39}, max_steps=1))
    assert list_checkpoints(tmp_path) == [] and not (tmp_path / "model").exists()


def test_non_finite_weights_stop_naming_the_real_last_good_checkpoint(tiny_world, tiny_pairs, tmp_path,
                                                                     monkeypatch):
    poison_after_step(monkeypatch, 3, lambda optimizer, params: params[0].fill_(float("nan")))
    with pytest.raises(TrainingError, match="non-finite weights at step 3") as caught:
        train(dpo_config(tiny_world, tiny_pairs, tmp_path, save_steps=2, max_steps=4))
    good = tmp_path / "checkpoints" / "step-0000002"
    assert f"the last good checkpoint is {good}" in str(caught.value) and good.is_dir()
    assert list_checkpoints(tmp_path) == [good] and not (tmp_path / "model").exists()


def test_non_finite_optimizer_state_is_not_saved(tiny_world, tiny_pairs, tmp_path, monkeypatch):
    """Weights still finite, AdamW's second moment overflowed: the checkpoint of that step is refused."""
    def overflow(optimizer, params):
        optimizer.state[params[0]]["exp_avg_sq"].fill_(float("inf"))

    poison_after_step(monkeypatch, 2, overflow)
    with pytest.raises(TrainingError, match="non-finite optimizer state at step 2; .*no checkpoint was saved"):
        train(dpo_config(tiny_world, tiny_pairs, tmp_path, save_steps=2, max_steps=4))
    assert list_checkpoints(tmp_path) == []


def test_all_finite_finds_nan_and_infinities_and_takes_large_finite_values():
    big = torch.full((1000,), 3e38)  # a 2-norm of these overflows; they are finite
    assert all_finite([big, torch.zeros(0), torch.ones(3, dtype=torch.bfloat16), torch.arange(3)])
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not all_finite([big, torch.tensor([1.0, bad], dtype=torch.bfloat16)])


# ------------------------------------------------------------------------------------------ damaged checkpoints
@pytest.fixture(scope="module")
def finished_run(tiny_world, tiny_pairs, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 (copied by each test before it damages one)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(dpo_config(tiny_world, tiny_pairs, out, save_steps=2, max_steps=4))
    return out


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGES = {
    "model/model.safetensors": (truncate, "model/model.safetensors is truncated or unreadable"),
    "optimizer.pt": (truncate, "optimizer.pt is truncated or unreadable"),
    "trainer_state.json": (lambda path: path.write_text("{garbage"), "trainer_state.json is unreadable"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_resume_auto_skips_a_damaged_latest_checkpoint_with_one_warning(finished_run, tmp_path, capsys, name):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    damage, reason = DAMAGES[name]
    damage(out / "checkpoints" / "step-0000004" / name)
    assert find_resume_checkpoint(out, "auto") == out / "checkpoints" / "step-0000002"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"alignkit: warning: skipping damaged checkpoint {out / 'checkpoints' / 'step-0000004'}: "
                               f"{reason}")
    assert lines[0].endswith(f"resuming from {out / 'checkpoints' / 'step-0000002'}")


def test_resume_after_a_damaged_checkpoint_reaches_the_same_result(finished_run, tiny_world, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    truncate(out / "checkpoints" / "step-0000004" / "model" / "model.safetensors")
    shutil.rmtree(out / "model")
    train(dpo_config(tiny_world, tiny_pairs, out, save_steps=2, max_steps=4, resume="auto"))
    assert_same_weights(finished_run / "model", out / "model", atol=1e-6)
    assert load_file(str(out / "checkpoints" / "step-0000004" / "model" / "model.safetensors"))  # rewritten whole


def test_no_usable_checkpoint_starts_over_and_says_so(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    for step in ("step-0000002", "step-0000004"):
        truncate(out / "checkpoints" / step / "rng.pt")
    assert find_resume_checkpoint(out, "auto") is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith("no earlier usable checkpoint: starting from step 0") for line in lines)


def test_explicit_damaged_resume_is_a_one_line_error(finished_run, tiny_world, tiny_pairs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    checkpoint = out / "checkpoints" / "step-0000004"
    truncate(checkpoint / "optimizer.pt")
    with pytest.raises(ConfigError, match=f"resume: {checkpoint} is not a usable alignkit checkpoint: optimizer.pt"):
        find_resume_checkpoint(out, str(checkpoint))
    settings = {"recipe": "preference", "loss": "dpo", "model": {"path": str(tiny_world / "base")},
                "data": {"path": str(tiny_pairs), "max_length": 128, "max_prompt_length": 32},
                "output_dir": str(tmp_path / "other"), "progress": False, "resume": str(checkpoint)}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"alignkit: error: resume: {checkpoint} is not a usable"), err


def test_orphans_of_a_killed_save_are_removed_and_nothing_else(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    orphans = [checkpoints / ".step-0000004.k2j4_x9a.tmp", checkpoints / ".step-0000004.shards",
               checkpoints / ".step-0000002.old", tmp_path / ".model.ab12cd34.tmp",
               tmp_path / "reference_logps" / f".{'0' * 32}.safetensors.q1w2e3r4.tmp"]
    kept = [checkpoints / "step-0000002", checkpoints / ".notes.tmp", tmp_path / ".mine.ab12cd34.tmp",
            tmp_path / "results.old", tmp_path / "model.tmp", tmp_path / ".config.json.old"]
    for path in orphans[:4] + kept[:1]:
        path.mkdir(parents=True)
    for path in [orphans[4], tmp_path / ".summary.json.zz99yy88.tmp"] + kept[1:]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (tmp_path / ".model.old").mkdir()  # killed between atomic_dir's renames: model/ gone, the old one whole
    (tmp_path / ".model.old" / "config.json").write_text("{}")
    removed = remove_orphans(tmp_path)
    assert sorted(removed) == sorted(orphans + [tmp_path / ".summary.json.zz99yy88.tmp"])
    assert not any(p.exists() for p in removed) and all(p.exists() for p in kept)
    assert (tmp_path / "model" / "config.json").exists() and not (tmp_path / ".model.old").exists()


def test_a_run_starts_by_removing_orphans(tiny_world, tiny_pairs, tmp_path):
    orphan = tmp_path / "checkpoints" / ".step-0000001.abcd1234.tmp"
    orphan.mkdir(parents=True)
    train(dpo_config(tiny_world, tiny_pairs, tmp_path, max_steps=1))
    assert not orphan.exists() and list_checkpoints(tmp_path)


def test_a_torn_last_metrics_line_does_not_stop_a_resume(tiny_world, tiny_pairs, tmp_path):
    train(dpo_config(tiny_world, tiny_pairs, tmp_path, max_steps=2))
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "lo')  # killed while appending
    result = train(dpo_config(tiny_world, tiny_pairs, tmp_path, max_steps=3, resume="auto"))
    assert [row["step"] for row in result.metrics] == [1, 2, 3]


# ------------------------------------------------------------------------------------------ one run per output_dir
HOLD = "import sys; from alignkit.utils.io import exclusive_lock\nwith exclusive_lock(sys.argv[1]):\n" \
       "    print('held', flush=True); sys.stdin.read()"


def test_a_second_run_on_a_locked_output_dir_fails_at_once_naming_the_holder(tiny_world, tiny_pairs, tmp_path,
                                                                            capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryInUse, match=f"in use by another alignkit run \\(pid {holder.pid} on host .*, "
                                                 "started 20"):
            train(dpo_config(tiny_world, tiny_pairs, tmp_path, max_steps=1))
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    train(dpo_config(tiny_world, tiny_pairs, tmp_path, max_steps=1))  # released when the holder ended


def test_the_lock_is_released_when_a_run_fails(tmp_path):
    with pytest.raises(RuntimeError), exclusive_lock(tmp_path):
        raise RuntimeError("crash")
    with exclusive_lock(tmp_path), pytest.raises(DirectoryInUse, match=f"pid {os.getpid()}"), exclusive_lock(tmp_path):
        pass


# ------------------------------------------------------------------------------------------ reference cache
def precompute_config(tiny_world, tiny_pairs, out):
    return dpo_config(tiny_world, tiny_pairs, out, reference={"mode": "precompute"}, max_steps=1)


def only_cache_file(out):
    (path,) = (out / "reference_logps").glob("*.safetensors")
    return path


def edit_values(path):
    """Change the values and keep the file's metadata (its digest no longer matches)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    save_file({**tensors, "rows": tensors["rows"] * 100}, str(path), metadata=metadata)


@pytest.mark.parametrize("damage, reason", [(edit_values, "its content does not match its digest"),
                                            (truncate, "unreadable or truncated")])
def test_a_damaged_reference_cache_is_recomputed_after_a_warning(tiny_world, tiny_pairs, tmp_path, capsys, damage,
                                                                  reason):
    train(precompute_config(tiny_world, tiny_pairs, tmp_path / "a"))
    path = only_cache_file(tmp_path / "a")
    damage(path)
    capsys.readouterr()
    result = train(precompute_config(tiny_world, tiny_pairs, tmp_path / "a"))  # same output_dir: same cache file
    assert result.metrics[0]["loss"] == pytest.approx(0.6931, abs=1e-3), "policy == reference at step 1"
    lines = [line for line in capsys.readouterr().err.splitlines() if "alignkit: warning" in line]
    assert len(lines) == 1 and lines[0].startswith(f"alignkit: warning: ignoring the cache file {path}: {reason}")
    assert reference_cache.load_cache(path)  # rewritten, verified


def fake_dataset(counts):
    return [SimpleNamespace(index=i, response_ids=[[1]] * n, extra={}) for i, n in enumerate(counts)]


def test_reference_cache_refuses_non_finite_values_other_keys_and_other_data(tmp_path):
    path = tmp_path / "cache.safetensors"
    reference_cache.save_cache(path, {0: {"rows": torch.tensor([1.0, 2.0])}, 1: {"rows": torch.tensor([3.0, 4.0])}},
                               key="k")
    assert reference_cache.load_cache(path, "k", fake_dataset([2, 2]))[1]["rows"].tolist() == [3.0, 4.0]
    for key, dataset, reason in [("other", None, "it holds the key 'k', not 'other'"),
                                 ("k", fake_dataset([2, 2, 2]), "its records are not the dataset's"),
                                 ("k", fake_dataset([2, 3]), "its response counts are not the dataset's")]:
        with pytest.raises(reference_cache.CacheError, match=reason):
            reference_cache.load_cache(path, key, dataset)
    reference_cache.save_cache(path, {0: {"rows": torch.tensor([1.0, float("nan")])}}, key="k")
    with pytest.raises(reference_cache.CacheError, match="non-finite"):
        reference_cache.load_cache(path, "k")
    save_file({"rows": torch.ones(2)}, str(path))  # written by an older alignkit: no digest
    with pytest.raises(reference_cache.CacheError, match="no content digest"):
        reference_cache.load_cache(path)


def test_orphans_of_a_recipes_own_output_files_are_removed_when_it_names_them(tmp_path):
    from alignkit.engine.checkpoint import LOOP_OUTPUTS

    orphan = tmp_path / ".online_eval.jsonl.ab12cd34.tmp"
    orphan.write_text("x")
    assert remove_orphans(tmp_path) == [] and orphan.exists()  # the loop alone does not know this file
    assert remove_orphans(tmp_path, LOOP_OUTPUTS + ("online_eval.jsonl",)) == [orphan] and not orphan.exists()
