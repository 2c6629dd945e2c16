"""Held-out evaluation (data.eval_path) for the sft, preference and reward recipes: what is logged and when, that
the numbers are the held-out set's (checked against independent computations), and that evaluating changes
nothing in training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from shared.runs import assert_same_weights, dpo_config

from alignkit.config import ConfigError
from alignkit.data.collate import collate
from alignkit.engine.loop import make_accelerator
from alignkit.models.loading import load_tokenizer
from alignkit.models.logps import response_logps
from alignkit.recipes import load_config, train
from alignkit.recipes.common.data import load_training_records
from alignkit.recipes.common.models import load_policy
from alignkit.recipes.preference import loss_records, preference_objective
from alignkit.recipes.sft import imitation_records, sft_objective
from alignkit.utils.io import write_jsonl

PAIR_METRICS = ("loss", "rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected", "logps/chosen",
                "logps/rejected")


@pytest.fixture
def split_pairs(tiny_pairs, tmp_path):
    """The tiny pairs as 48 training and 16 held-out records (separate files)."""
    rows = [json.loads(line) for line in tiny_pairs.read_text().splitlines()]
    write_jsonl(tmp_path / "train.jsonl", rows[:48])
    write_jsonl(tmp_path / "heldout.jsonl", rows[48:])
    return tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"


def data(train_path, heldout_path, **extra):
    return {"path": str(train_path), "eval_path": str(heldout_path), "max_length": 128, "max_prompt_length": 32,
            **extra}


def build(config, builder, shape):
    """The recipe's objective and held-out evaluator on the initial policy, as run_offline builds them."""
    accelerator = make_accelerator()
    tokenizer = load_tokenizer(config.model.path)
    policy = load_policy(config, None, accelerator.device)
    records, report = load_training_records(config, shape)
    objective, dataset, evaluate = builder(config, tokenizer, records, report, accelerator, policy)
    return policy, evaluate


def test_dpo_logs_heldout_metrics_at_eval_steps_and_the_end(tiny_world, split_pairs, tmp_path):
    result = train(dpo_config(tiny_world, None, tmp_path / "run", data=data(*split_pairs), max_steps=5,
                              eval_steps=2))
    rows = {row["step"]: row for row in result.metrics}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    for step in (2, 4, 5):
        assert all(math.isfinite(rows[step][f"eval/{name}"]) for name in PAIR_METRICS), rows[step]
    assert not any(key.startswith("eval/") for step in (1, 3) for key in rows[step])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval"] == {k[len("eval/"):]: v for k, v in rows[5].items() if k.startswith("eval/")}
    # training lowers the held-out DPO loss from log 2 (a 1e-3 lr on noiseless pairs)
    assert rows[5]["eval/loss"] < math.log(2)


@pytest.mark.parametrize("mode", ["precompute", "copy"])
def test_heldout_numbers_of_the_initial_policy(tiny_world, split_pairs, tmp_path, mode):
    """Policy == reference: the held-out DPO loss is log 2, rewards and margins 0;
    logps/chosen is the mean summed log-prob of the held-out chosen responses, computed one record at a time."""
    config = dpo_config(tiny_world, None, tmp_path, data=data(*split_pairs), reference={"mode": mode},
                        model={"path": str(tiny_world / "base"), "dtype": "float64"}, batch_size=5)
    policy, evaluate = build(config, preference_objective, loss_records(config))
    values = evaluate(0, policy)
    assert set(PAIR_METRICS) <= set(values)
    assert values["loss"] == pytest.approx(math.log(2), abs=1e-9)
    assert values["rewards/margin"] == pytest.approx(0, abs=1e-9)
    assert values["rewards/chosen"] == pytest.approx(0, abs=1e-9)  # accuracy: ties broken by float rounding
    assert not policy.training, "the evaluator puts the model in eval mode (the loop restores train mode)"
    with torch.no_grad():
        chosen = [response_logps(policy, collate([item], 0)).reduce("sum")[0].item() for item in evaluate.items]
    assert len(chosen) == 16
    # metrics are summed in float32 (engine.loop.add_metrics, as in training): equal to float32 rounding
    assert values["logps/chosen"] == pytest.approx(sum(chosen) / len(chosen), rel=1e-6)


def test_sft_perplexity_is_exp_of_the_heldout_token_nll(tiny_world, tmp_path):
    rows = [json.loads(line) for line in (tiny_world / "data" / "sft.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "heldout.jsonl", rows[-12:])
    config = load_config(None, recipe="sft", model={"path": str(tiny_world / "base"), "dtype": "float64"},
                         data=data(tiny_world / "data" / "sft.jsonl", tmp_path / "heldout.jsonl"), batch_size=5,
                         output_dir=str(tmp_path / "run"), progress=False)
    policy, evaluate = build(config, sft_objective, imitation_records)
    values = evaluate(0, policy)
    nll, tokens = 0.0, 0
    with torch.no_grad():  # a plain forward per record: -sum log p(response token | everything before it)
        for item in evaluate.items:
            ids, mask = item.sequence(0)
            logps = policy(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            token_logps = logps.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            nll -= float((token_logps * torch.tensor(mask[1:], dtype=token_logps.dtype)).sum())
            tokens += sum(mask[1:])
    assert len(evaluate.items) == 12
    assert values["loss"] == pytest.approx(nll / tokens, rel=1e-9)
    assert values["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-9)


def test_reward_model_logs_heldout_accuracy(tiny_world, split_pairs, tmp_path):
    result = train(dpo_config(tiny_world, None, tmp_path / "run", recipe="reward", data=data(*split_pairs),
                              max_steps=3, eval_steps=3))
    last = result.metrics[-1]
    assert last["step"] == 3 and 0 <= last["eval/accuracy"] <= 1 and math.isfinite(last["eval/loss"])
    assert {"accuracy", "reward_margin", "loss"} <= set(result.eval)


def test_evaluating_changes_nothing_in_training(tiny_world, split_pairs, tmp_path):
    """BCO keeps a running reward shift: evaluation reads it and must not update it; the loop restores the random
    state and train mode. Same weights and training metrics with and without held-out evaluation."""
    common = dict(loss="bco", max_steps=4, model={"path": str(tiny_world / "base"), "dtype": "float64"})
    plain = train(dpo_config(tiny_world, None, tmp_path / "a", data=data(split_pairs[0], split_pairs[1]) | {
        "eval_path": None}, **common))
    evaluated = train(dpo_config(tiny_world, None, tmp_path / "b", data=data(*split_pairs), eval_steps=1, **common))
    assert_same_weights(plain.model_dir, evaluated.model_dir, atol=1e-12)
    assert [r["loss"] for r in plain.metrics] == pytest.approx([r["loss"] for r in evaluated.metrics], abs=1e-12)
    assert all("eval/loss" in r for r in evaluated.metrics)


def test_eval_path_is_read_by_the_offline_recipes(tiny_world, split_pairs, tmp_path):
    for recipe in ("sft", "preference", "reward"):
        dpo_config(tiny_world, None, tmp_path, recipe=recipe, data=data(*split_pairs))  # accepted
    with pytest.raises(ConfigError, match="data.eval_path: held-out evaluation of 'd2o'"):
        dpo_config(tiny_world, None, tmp_path, loss="d2o", data=data(*split_pairs))


def test_a_bad_heldout_file_is_an_error_naming_it(tiny_world, split_pairs, tmp_path):
    from alignkit.data.records import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c", "label": true}\n')  # unpaired: DPO needs pairs
    with pytest.raises(DataError, match=r"bad\.jsonl:1.*needs pairs"):
        train(dpo_config(tiny_world, None, tmp_path / "run", data=data(split_pairs[0], bad)))
