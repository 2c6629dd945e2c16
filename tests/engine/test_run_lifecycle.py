"""The run's life around the loop: held-out evaluation and log hooks, reruns in an existing output_dir, Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignkit.config import read_config
from alignkit.engine.loop import make_accelerator, train_loop


class Regressor(torch.nn.Module):
    """A model with dropout (so both the train/eval mode and the random state matter) that saves itself."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.linear(self.dropout(x))

    def save_pretrained(self, path, safe_serialization=True, **kw):
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "weights.pt")



class Squares:
    name = "squares"

    def collate(self, items):
        return torch.stack(items)

    def count(self, batch):
        return len(batch)

    def loss(self, model, batch):
        return ((model(batch[:, :4]).squeeze(-1) - batch[:, 4]) ** 2).sum(), {}


DATA = [torch.randn(5, generator=torch.Generator().manual_seed(i)) for i in range(32)]


def fit(tmp_path, name, **hooks):
    config = read_config(None, model={"path": "unused"}, data={"path": "unused"}, output_dir=str(tmp_path / name), batch_size=4, max_steps=6, log_steps=2,
                         eval_steps=3, progress=False, resume="never", optim={"lr": 0.1})
    model = Regressor()
    result = train_loop(config, model=model, processor=None, dataset=DATA, objective=Squares(),
                        accelerator=make_accelerator(), **hooks)
    return result, model


def test_evaluate_runs_every_eval_steps_and_at_the_end_without_changing_training(tmp_path):
    calls = []

    def evaluate(step, model):
        model.eval()
        calls.append(step)
        torch.rand(100)  # an evaluator that draws random numbers must not shift the training's dropout masks
        return {"loss": float(step), "accuracy": torch.tensor(0.5)}

    logged = []
    plain, plain_model = fit(tmp_path, "plain")
    hooked, hooked_model = fit(tmp_path, "hooked", evaluate=evaluate, on_log=logged.append)
    assert calls == [3, 6]
    assert hooked_model.training
    for a, b in zip(plain_model.parameters(), hooked_model.parameters()):
        assert torch.equal(a, b)
    rows = [json.loads(line) for line in (tmp_path / "hooked" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    assert rows[1] == {"step": 3, "eval/loss": 3.0, "eval/accuracy": 0.5}  # a row of its own between log steps
    assert rows[3]["eval/loss"] == 6.0 and "loss" in rows[3] and "lr" in rows[3]
    assert logged == rows == hooked.metrics
    summary = json.loads((tmp_path / "hooked" / "summary.json").read_text())
    assert summary["eval"] == hooked.eval == {"loss": 6.0, "accuracy": 0.5}
    assert "eval" not in json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert [r["step"] for r in plain.metrics] == [2, 4, 6]


def test_train_calls_on_log_with_every_logged_row(tiny_world, tiny_pairs, tmp_path):
    from shared.runs import dpo_config

    from alignkit.recipes import train

    rows = []
    result = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "run", max_steps=3), on_log=rows.append)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows == result.metrics and all("loss" in r and "lr" in r for r in rows)


def files_with_times(directory):
    """Every file the run wrote (the lock file aside: taking the lock touches it) with its bytes and time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".alignkit.lock"}


def test_rerun_of_a_finished_run_changes_nothing(tiny_world, tiny_pairs, tmp_path, capsys):
    from shared.runs import dpo_config

    from alignkit.recipes import train

    out = tmp_path / "run"
    first = train(dpo_config(tiny_world, tiny_pairs, out, max_steps=3))
    before = files_with_times(out)
    again = train(dpo_config(tiny_world, tiny_pairs, out, max_steps=3, resume="auto", log_steps=2))
    assert f"run in {out} already finished at step 3; nothing to do" in capsys.readouterr().out
    assert files_with_times(out) == before  # model/, config.json, metrics: same bytes, same times
    assert again.steps == 3 and again.metrics == first.metrics and again.model_dir == out / "model"


def test_a_run_saved_by_an_older_alignkit_is_still_recognised(tiny_world, tiny_pairs, tmp_path, capsys):
    """A run's config.json from before a setting existed (no gradient_checkpointing, data.on_invalid) or with other
    defaults in sections this recipe does not read (rl.gamma 1.0 before rl.advantage_params) is the same run."""
    from shared.runs import dpo_config

    from alignkit.recipes import train

    out = tmp_path / "run"
    train(dpo_config(tiny_world, tiny_pairs, out, max_steps=2))
    saved = json.loads((out / "config.json").read_text())
    del saved["gradient_checkpointing"], saved["data"]["on_invalid"]
    saved["rl"]["gamma"] = 1.0
    (out / "config.json").write_text(json.dumps(saved))
    train(dpo_config(tiny_world, tiny_pairs, out, max_steps=2, resume="auto"))
    assert f"run in {out} already finished at step 2; nothing to do" in capsys.readouterr().out


def test_rerun_with_changed_settings_is_refused(tiny_world, tiny_pairs, tmp_path):
    import pytest
    from shared.runs import dpo_config

    from alignkit.config import ConfigError
    from alignkit.recipes import train

    out = tmp_path / "run"
    train(dpo_config(tiny_world, tiny_pairs, out, max_steps=2))
    saved = (out / "config.json").read_text()
    changed = dpo_config(tiny_world, tiny_pairs, out, max_steps=2, resume="auto",
                         optim={"lr": 2e-3, "warmup_ratio": 0.2}, seed=5)
    with pytest.raises(ConfigError, match=r"optim.lr: 0.001 -> 0.002, seed: 0 -> 5\); .*resume=never") as info:
        train(changed)
    assert "\n" not in str(info.value)
    assert (out / "config.json").read_text() == saved  # the record stays true


def test_longer_run_resumes_and_never_starts_fresh_beside_the_old_one(tiny_world, tiny_pairs, tmp_path, capsys):
    from shared.runs import dpo_config

    from alignkit.recipes import train

    out = tmp_path / "run"
    train(dpo_config(tiny_world, tiny_pairs, out, max_steps=2))
    longer = train(dpo_config(tiny_world, tiny_pairs, out, max_steps=4, resume="auto"))
    assert (longer.start, longer.steps) == (2, 4)
    assert f"resuming from step 2 ({out / 'checkpoints' / 'step-0000002'})" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["max_steps"] == 4
    assert [r["step"] for r in longer.metrics] == [1, 2, 3, 4]

    fresh = train(dpo_config(tiny_world, tiny_pairs, out, max_steps=1, resume="never"))
    assert f"was moved to {out / 'earlier-runs' / '1'}" in capsys.readouterr().out
    assert (fresh.start, fresh.steps) == (0, 1)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000001"]
    assert (out / "earlier-runs" / "1" / "checkpoints" / "step-0000004").is_dir()
    assert json.loads((out / "earlier-runs" / "1" / "config.json").read_text())["max_steps"] == 4


def test_ctrl_c_says_where_to_resume_and_the_rerun_resumes(tiny_world, tiny_pairs, tmp_path, capsys, monkeypatch):
    import yaml

    import alignkit.recipes
    from alignkit import cli

    def interrupt_at_3(step, model):
        if step == 3:
            raise KeyboardInterrupt

    real_train = alignkit.recipes.train
    monkeypatch.setattr(alignkit.recipes, "train", lambda config: real_train(config, on_step=interrupt_at_3))
    settings = dict(recipe="preference", model={"path": str(tiny_world / "base")},
                    data={"path": str(tiny_pairs), "max_length": 128, "max_prompt_length": 32}, batch_size=8,
                    max_steps=4, save_steps=2, progress=False, output_dir=str(tmp_path / "run"))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    assert cli.main(["train", "--config", str(tmp_path / "run.yaml")]) == 130
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000002"
    assert capsys.readouterr().err == (f"alignkit: interrupted at step 3; last checkpoint: step 2 ({checkpoint}); "
                                       "rerun the same command to resume\n")
    monkeypatch.setattr(alignkit.recipes, "train", real_train)
    assert cli.main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"[alignkit] resuming from step 2 ({checkpoint})" in out
    assert "[alignkit] trained 2 steps (2 -> 4) in " in out
