"""Reward models: plain-transformers compatibility, the reward recipe on the one loop, ensembles, annotator heads,
data errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignkit.recipes import load_config, train
from alignkit.data.collate import collate
from alignkit.data.formats import load_records
from alignkit.data.records import DataError
from alignkit.data.tokenize import tokenize_records
from alignkit.models.loading import load_tokenizer
from alignkit.rewards import HeadLayout, head_layout, load_reward_model, score, score_ensemble, score_heads
from alignkit.recipes.reward import RewardObjective, train_seeded_ensemble
from alignkit.utils.io import write_jsonl

from shared.runs import assert_same_weights, dpo_config, straight_and_resumed  # noqa: E402
from shared.rows import sandbox_rows


@pytest.fixture(scope="module")
def rm_files(tiny_world: Path) -> dict[str, Path]:
    rows = sandbox_rows(80, seed=11, noise=0.05, k=4)
    pairs = [{**r, "margin": r["gold_chosen"] - r["gold_rejected"]} for r in rows["pairs"]]
    rankings = [{"prompt": r["prompt"], "responses": r["responses"], "ranking": r["ranking"]} for r in rows["rankings"]]
    scored = [{"prompt": r["prompt"], "responses": r["responses"], "scores": {"gold": r["gold"]}}
              for r in rows["rankings"]]
    files = {"pairs": pairs, "rankings": rankings, "scored": scored, "annotators": rows["annotators"]}
    out = {}
    for name, data in files.items():
        out[name] = tiny_world / f"rm_{name}.jsonl"
        write_jsonl(out[name], data)
    return out


def reward_config(tiny_world: Path, data: Path, out: Path, **values):
    settings = dict(recipe="reward", model={"path": str(tiny_world / "base")},
                    data={"path": str(data), "max_length": 128, "max_prompt_length": 32},
                    optim={"lr": 1e-3}, batch_size=8, max_steps=2, output_dir=str(out), progress=False, log_steps=1,
                    resume="never")
    settings.update(values)
    return load_config(None, **settings)


# ------------------------------------------------------------------------------------------------ the model
def test_saved_reward_model_scores_the_same_in_plain_transformers(tiny_world: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_world / "base"))
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_world / "base"), tokenizer, HeadLayout(), device="cpu")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert plain.config.num_labels == 1 and plain.config.pad_token_id == tokenizer.pad_token_id
    rows = sandbox_rows(6, seed=2, noise=0.0)["pairs"]
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    batched = score(load_reward_model(str(tmp_path), tokenizer, device="cpu"), tokenizer, prompts, responses,
                    batch_size=4)  # padded batches
    for prompt, response, ours in zip(prompts, responses, batched):
        text = tokenizer.apply_chat_template(prompt + response, tokenize=False)  # what a plain HF user does
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            theirs = plain(input_ids=ids).logits[0, 0]
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    text_reward = score(model, tokenizer, prompts[:2], [r[0]["content"] for r in responses[:2]])  # text reply
    torch.testing.assert_close(text_reward, batched[:2], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ objective
def test_objective_equals_an_independent_computation(tiny_world: Path, rm_files: dict[str, Path]) -> None:
    """Ensemble heads, bootstrap weights, margins and centring, recomputed from the model's scores by hand."""
    config = reward_config(tiny_world, rm_files["pairs"], tiny_world / "unused",
                           reward={"ensemble": 3, "bootstrap": True, "margin": "margin", "center_coef": 0.05})
    tokenizer = load_tokenizer(str(tiny_world / "base"))
    torch.manual_seed(0)
    model = load_reward_model(str(tiny_world / "base"), tokenizer, HeadLayout(ensemble=3), device="cpu")
    records, _ = load_records(rm_files["pairs"])
    dataset = tokenize_records(tokenizer, records[:6], max_length=128, max_prompt_length=32)
    objective = RewardObjective(config.reward, dataset, head_layout(model), seed=7)
    loss_sum, metrics = objective.loss(model, collate(dataset, tokenizer.pad_token_id))
    heads = score_heads(model, tokenizer, [r.prompt for r in records[:6] for _ in range(2)],
                        [r.responses[k] for r in records[:6] for k in (0, 1)])[:, 0]   # [12, 3]
    weights = torch.poisson(torch.ones(6, 3), generator=torch.Generator().manual_seed(7))
    assert weights.min() == 0 and weights.max() > 1  # the draw really reweights this batch
    expected = 0.0
    for b, record in enumerate(records[:6]):
        margin = record.metadata["margin"]
        for e in range(3):
            c, r = heads[2 * b, e].item(), heads[2 * b + 1, e].item()
            loss = math.log1p(math.exp(-(c - r - margin))) + 0.05 * (c + r) ** 2
            expected += weights[b, e].item() * loss / 3
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)
    assert objective.count(collate(dataset, tokenizer.pad_token_id)) == 6
    mean = heads.view(6, 2, 3).mean(-1)
    torch.testing.assert_close(metrics["accuracy"], (mean[:, 0] > mean[:, 1]).float())


def test_annotator_heads_learn_only_from_their_group(tiny_world: Path, rm_files: dict[str, Path]) -> None:
    config = reward_config(tiny_world, rm_files["annotators"], tiny_world / "unused", reward={"group_by": "gold_group"})
    tokenizer = load_tokenizer(str(tiny_world / "base"))
    layout = HeadLayout(("terse", "warm"))
    model = load_reward_model(str(tiny_world / "base"), tokenizer, layout, device="cpu")
    records, _ = load_records(rm_files["annotators"])
    warm = [r for r in records if r.metadata["gold_group"] == "warm"][:4]
    dataset = tokenize_records(tokenizer, warm, max_length=128, max_prompt_length=32)
    loss_sum, _ = RewardObjective(config.reward, dataset, layout, seed=0).loss(model, collate(dataset, 0))
    loss_sum.backward()
    grad = model.score.weight.grad
    assert grad[layout.group_index("terse")].abs().sum() == 0
    assert grad[layout.group_index("warm")].abs().sum() > 0
    assert model.config.id2label == {0: "terse", 1: "warm"}


# ------------------------------------------------------------------------------------------------ recipe
def test_reward_recipe_from_yaml_trains_an_ensemble(tiny_world: Path, rm_files: dict[str, Path],
                                                    tmp_path: Path) -> None:
    yaml_file = tmp_path / "rm.yaml"
    yaml_file.write_text(f"recipe: reward\nmodel: {{path: {tiny_world / 'base'}}}\n"
                         f"data: {{path: {rm_files['pairs']}, max_length: 128, max_prompt_length: 32}}\n"
                         "reward: {loss: bt, margin: margin, center_coef: 0.01, ensemble: 3, bootstrap: true}\n"
                         f"optim: {{lr: 1.0e-3}}\nbatch_size: 8\nmax_steps: 3\nlog_steps: 1\nprogress: false\n"
                         f"output_dir: {tmp_path / 'run'}\nresume: never\n")
    result = train(load_config(yaml_file))
    assert [row["step"] for row in result.metrics] == [1, 2, 3]
    assert {"loss", "accuracy", "reward_margin", "ensemble_std"} <= set(result.metrics[0])
    plain = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert plain.config.num_labels == 3 and plain.config.alignkit_reward == {"groups": [], "ensemble": 3}
    tokenizer = load_tokenizer(str(result.model_dir))
    model = load_reward_model(str(result.model_dir), tokenizer, device="cpu")
    rows = sandbox_rows(5, seed=4, noise=0.0)["pairs"]
    scores = score_ensemble([model], tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert scores.members.shape == (len(rows), 3)
    assert (scores.std > 0).all()  # differently initialised heads disagree
    torch.testing.assert_close(scores.mean, score(model, tokenizer, [r["prompt"] for r in rows],
                                                  [r["chosen"] for r in rows]))


@pytest.mark.parametrize("loss,data", [("pl", "rankings"), ("regression", "scored")])
def test_reward_recipe_ranking_and_regression_losses(tiny_world: Path, rm_files: dict[str, Path], tmp_path: Path,
                                                     loss: str, data: str) -> None:
    config = reward_config(tiny_world, rm_files[data], tmp_path, reward={"loss": loss, "score_key": "gold"},
                           max_steps=3, optim={"lr": 3e-3, "warmup_ratio": 0.0})
    result = train(config)
    first, last = result.metrics[0], result.metrics[-1]
    assert ("mse" in first) == (loss == "regression") and ("accuracy" in first) == (loss == "pl")
    assert math.isfinite(last["loss"])
    assert AutoModelForSequenceClassification.from_pretrained(result.model_dir).config.num_labels == 1


def test_seeded_ensemble_members_differ(tiny_world: Path, rm_files: dict[str, Path], tmp_path: Path) -> None:
    results = train_seeded_ensemble(reward_config(tiny_world, rm_files["pairs"], tmp_path, max_steps=1), [1, 2])
    assert [r.model_dir for r in results] == [tmp_path / "seed-1" / "model", tmp_path / "seed-2" / "model"]
    tokenizer = load_tokenizer(str(results[0].model_dir))
    models = [load_reward_model(str(r.model_dir), tokenizer, device="cpu") for r in results]
    rows = sandbox_rows(4, seed=5, noise=0.0)["pairs"]
    scores = score_ensemble(models, tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert scores.members.shape == (len(rows), 2) and (scores.std > 0).all()
    assert (scores.worst_case <= scores.mean).all() and (scores.conservative(1.0) <= scores.mean).all()


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("data,reward,field", [
    ("scored", {"loss": "bt"}, "ranking"),
    ("pairs", {"loss": "regression", "score_key": "helpfulness"}, "helpfulness"),
    ("pairs", {"group_by": "annotator"}, "annotator"),
    ("rankings", {"margin": "margin"}, "ranking"),
    ("pairs", {"margin": "gold_missing"}, "gold_missing"),
])
def test_data_errors_name_file_line_and_field(tiny_world: Path, rm_files: dict[str, Path], tmp_path: Path,
                                              data: str, reward: dict, field: str) -> None:
    with pytest.raises(DataError, match=rf"rm_{data}\.jsonl:1 field '{field}'"):
        train(reward_config(tiny_world, rm_files[data], tmp_path, reward=reward))


# ------------------------------------------------------------------------------------------------ the loop's guarantees
def test_reward_recipe_resumes_exactly(tiny_world: Path, tiny_pairs: Path, tmp_path: Path) -> None:
    straight, resumed = straight_and_resumed(tiny_world, tiny_pairs, tmp_path, crash_step=3, save_steps=2,
                                             max_steps=4, recipe="reward",
                                             reward={"ensemble": 2, "bootstrap": True, "center_coef": 0.01})
    assert_same_weights(straight.model_dir, resumed.model_dir, atol=1e-6)


def test_reward_recipe_gradient_accumulation_is_exact(tiny_world: Path, tiny_pairs: Path, tmp_path: Path) -> None:
    common = dict(recipe="reward", max_steps=2, model={"path": str(tiny_world / "base"), "dtype": "float64"})
    whole = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "a", batch_size=8, **common))
    accumulated = train(dpo_config(tiny_world, tiny_pairs, tmp_path / "b", batch_size=4, grad_accum=2, **common))
    assert_same_weights(whole.model_dir, accumulated.model_dir, atol=1e-10)


def test_a_damaged_reward_model_directory_is_a_one_line_config_error(tiny_world, tmp_path):
    """`rm:PATH`, `alignkit eval rm` and the reward recipe load through load_reward_model: a truncated weight file
    or a missing directory names the path and what is wrong instead of a transformers traceback."""
    import shutil

    from alignkit.config import ConfigError
    from alignkit.models.loading import load_tokenizer
    from alignkit.rewards import load_reward_model

    tokenizer = load_tokenizer(str(tiny_world / "base"))
    damaged = tmp_path / "rm"
    shutil.copytree(tiny_world / "base", damaged)
    with open(damaged / "model.safetensors", "r+b") as fh:
        fh.truncate(500)
    with pytest.raises(ConfigError, match=r"reward model: .*rm has a truncated or corrupt model.safetensors"):
        load_reward_model(str(damaged), tokenizer)
    with pytest.raises(ConfigError, match="reward model: .*missing does not exist"):
        load_reward_model(str(tmp_path / "missing"), tokenizer)
