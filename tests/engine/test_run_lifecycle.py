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
