"""recipe: online — configuration checks, labelling rules, the online losses against independent computations,
round handling (reference updates, APO's extrapolation) and exact resume. Behaviour on the sandbox (the gold reward
rises for every method) is in test_online_behaviour.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from alignkit.config import ConfigError
from alignkit.recipes import load_config, train
from alignkit.data.collate import collate
from alignkit.models.logps import response_logps
from alignkit.losses import PairInputs, get_loss
from alignkit.models.loading import load_causal_lm, load_tokenizer
from alignkit.sampling.generate import Sample
from alignkit.sandbox import world
from alignkit.engine.checkpoint import list_checkpoints
from alignkit.data.prompts import PromptRow, load_prompt_rows
from alignkit.recipes.online import Labeller, NashMDObjective, Rollout, Rounds, SuperHFObjective
from alignkit.recipes.common.online_methods import ONLINE_METHODS, get_online_method


def online_config(tiny_world, out, **values):
    settings = dict(recipe="online", model={"path": str(tiny_world / "base")},
                    data={"path": str(tiny_world / "data" / "prompts_train.jsonl")},
                    online={"method": "online_dpo", "reward": "sandbox-gold", "max_new_tokens": 8, "eval_prompts": 8,
                            "gold": "sandbox-gold"},
                    optim={"lr": 1e-3, "warmup_ratio": 0.0}, batch_size=4, max_steps=4, output_dir=str(out),
                    progress=False, log_steps=1, resume="never")
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return load_config(None, **settings)


# ------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("online, values, message", [
    ({"method": "online_dop"}, {}, "did you mean 'online_dpo'"),
    ({"reward": ""}, {}, "online.reward is required"),
    ({"method": "raft", "reward": "pairwise:llm:/nowhere"}, {}, "ranks samples by reward"),
    ({"loss": "kto"}, {}, "takes unpaired data"),
    ({"method": "nash_md", "loss": "dpo"}, {}, "takes no preference loss"),
    ({"num_samples": 1}, {}, "at least 2 samples"),
    ({"method": "xpo", "num_samples": 4}, {}, "one response of each kind"),
    ({}, {"lora": {"enabled": True}}, "LoRA"),
    ({}, {"loss_params": {"bta": 0.1}}, "did you mean 'beta'"),
])
def test_config_errors_name_the_problem(tiny_world, tmp_path, online, values, message):
    with pytest.raises(ConfigError, match=message):
        online_config(tiny_world, tmp_path, online=online, **values)


def test_every_method_is_documented_and_registered():
    for name, method in ONLINE_METHODS.items():
        assert method.paper and method.formula and get_online_method(name) is method
        if method.objective == "preference":
            assert get_loss(method.loss).data_kind in ("pairs", "ranked")


def test_prompt_rows_keep_metadata_and_name_bad_lines(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"prompt": "hi", "constraints": ["max_words=3"]}) + "\n")
    rows = load_prompt_rows(good)
    assert rows[0].prompt == "hi" and rows[0].metadata == {"constraints": ["max_words=3"]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(Exception, match=r"bad.jsonl:2 field 'prompt'"):
        load_prompt_rows(bad)


# ------------------------------------------------------------------------------------------- labelling rules
def fake_sample(text_ids, finished=True):
    return Sample(prompt_index=0, text=" ".join(f"w{i}" for i in text_ids), prompt_ids=[1, 2],
                  response_ids=list(text_ids), finished=finished)


def make_rollout(method, tiny_world, tmp_path, **online):
    config = online_config(tiny_world, tmp_path, online={"method": method, **online})
    return Rollout(get_online_method(method), config, None, Labeller("sandbox-gold"), None)


ROW = PromptRow("tell me about the soup .", {}, "p:1")


def test_pairs_are_best_versus_worst_and_ties_give_none(tiny_world, tmp_path):
    rollout = make_rollout("online_dpo", tiny_world, tmp_path, num_samples=3)
    group = [(fake_sample([5, 6]), "policy"), (fake_sample([7]), "policy"), (fake_sample([8, 9, 10]), "policy")]
    (record,) = rollout.label(0, ROW, group, np.array([0.2, 0.9, -0.5]))
    assert record.response_ids == [[7], [8, 9, 10]] and record.prompt_ids == [1, 2]
    assert record.record.ranking == [0, 1] and record.record.scores["reward"] == [0.9, -0.5]
    assert rollout.label(0, ROW, group[:2], np.array([0.3, 0.3])) == []
    assert rollout.skipped["ties"] == 1
    assert rollout.label(0, ROW, group[:2], np.array([float("nan"), 0.3])) == []  # one scored sample: no pair
    assert rollout.skipped["unscored"] == 1


def test_reference_samples_are_marked_for_xpo(tiny_world, tmp_path):
    rollout = make_rollout("xpo", tiny_world, tmp_path)
    group = [(fake_sample([5]), "policy"), (fake_sample([6]), "reference")]
    (record,) = rollout.label(0, ROW, group, np.array([0.1, 0.4]))
    assert record.response_ids == [[6], [5]]
    assert record.record.scores["is_reference_sample"] == [1.0, 0.0]


def test_ranked_best_topk_and_top_share(tiny_world, tmp_path):
    rewards = np.array([0.1, 0.7, 0.4, -1.0])
    group = [(fake_sample([10 + j]), "policy") for j in range(4)]
    (ranked,) = make_rollout("sppo", tiny_world, tmp_path, preference_scale=0.5).label(0, ROW, group, rewards)
    assert ranked.response_ids == [[11], [12], [10], [13]]
    assert ranked.record.scores["score"] == pytest.approx([1.4, 0.8, 0.2, -2.0])
    (best,) = make_rollout("raft", tiny_world, tmp_path).label(0, ROW, group, rewards)
    assert best.response_ids == [[11]]
    kept = make_rollout("superhf", tiny_world, tmp_path, keep=2).label(0, ROW, group, rewards)
    assert [r.response_ids for r in kept] == [[[11]], [[12]]]
    records = [make_rollout("raft", tiny_world, tmp_path).record(ROW, [s], {"reward": [r]})
               for (s, _), r in zip(group, rewards)]
    assert [r.response_ids[0][0] for r in Rollout.top_share(records, 0.5)] == [11, 12]


def test_win_probability_is_bradley_terry_on_rewards(tiny_world, tmp_path):
    rollout = make_rollout("nash_md", tiny_world, tmp_path, preference_scale=2.0)
    group = [(fake_sample([5]), "policy"), (fake_sample([6]), "mixture")]
    (record,) = rollout.label(0, ROW, group, np.array([1.0, 0.0]))
    assert record.response_ids == [[5]]
    assert record.record.scores["win_prob"][0] == pytest.approx(1 / (1 + math.exp(-0.5)))


def test_rso_pairs_accepted_samples_consecutively(tiny_world, tmp_path):
    rollout = make_rollout("rso", tiny_world, tmp_path, rso_beta=1e-4, rso_accept=4)
    rewards = np.array([0.0, 3.0, 1.0, 2.0, -1.0, 0.5, -2.0, 2.5])
    group = [(fake_sample([20 + j]), "reference") for j in range(8)]
    records = rollout.label(0, ROW, group, rewards)
    # a tiny beta accepts the top rewards in order: 3.0, 2.5 | 2.0, 1.0
    assert [r.response_ids for r in records] == [[[21], [27]], [[23], [22]]]


def test_missing_eos_penalty_is_subtracted():
    labeller = Labeller("sandbox-gold", missing_eos_penalty=0.7)
    samples = [Sample(0, "the soup is lovely .", [1], [5], True), Sample(0, "the soup is lovely .", [1], [5], False)]
    rewards = labeller.rewards([ROW.prompt] * 2, samples, [{}, {}])
    assert rewards[0] - rewards[1] == pytest.approx(0.7)
    assert rewards[0] == pytest.approx(world.gold_reward(ROW.prompt, "the soup is lovely ."))


# ------------------------------------------------------------------------------------------- losses
def pair_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(6, generator=g, dtype=torch.float64)  # noqa: E731
    flags = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    return PairInputs(r(), r(), r(), r(), scores_chosen={"is_reference_sample": flags},
                      scores_rejected={"is_reference_sample": 1 - flags})


def test_xpo_and_selm_match_their_formulas():
    x = pair_inputs()
    flags = x.scores_chosen["is_reference_sample"].tolist()
    for i in range(6):
        d = (x.policy_chosen[i] - x.ref_chosen[i]) - (x.policy_rejected[i] - x.ref_rejected[i])
        ref_policy = x.policy_chosen[i] if flags[i] else x.policy_rejected[i]
        ref_rho = (x.policy_chosen[i] - x.ref_chosen[i]) if flags[i] else (x.policy_rejected[i] - x.ref_rejected[i])
        xpo = math.log1p(math.exp(-0.1 * float(d))) + 1e-2 * float(ref_policy)
        selm = math.log1p(math.exp(-0.01 * float(d))) + 0.5 * 0.01 * float(ref_rho)
        assert get_loss("xpo")(x, alpha=1e-2).losses[i].item() == pytest.approx(xpo, rel=1e-12)
        assert get_loss("selm")(x, alpha=0.5).losses[i].item() == pytest.approx(selm, rel=1e-12)


def test_xpo_needs_the_reference_sample_flags():
    x = pair_inputs()
    x.scores_chosen, x.scores_rejected = {}, {}
    with pytest.raises(Exception, match="is_reference_sample"):
        get_loss("xpo")(x)


def tiny_batch(tiny_world, scores=None):
    from alignkit.data.records import PreferenceRecord
    from alignkit.data.tokenize import TokenizedRecord

    items = [TokenizedRecord(i, PreferenceRecord(prompt="p", responses=["r"], scores=scores and {
        k: [v[i]] for k, v in scores.items()}), [3, 4, 5][: 2 + i % 2], [[6 + i, 7, 8][: 3 - i % 2]])
             for i in range(3)]
    return collate(items, pad_id=0)


def test_nash_md_objective_is_the_reinforce_formula(tiny_world):
    policy = load_causal_lm(str(tiny_world / "base"), "float64")
    reference = load_causal_lm(str(tiny_world / "base"), "float64")
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = tiny_batch(tiny_world, {"win_prob": [0.9, 0.2, 0.5]})
    loss, metrics = NashMDObjective(reference, kl_coef=0.3, pack=False).loss(policy, batch)
    l = response_logps(policy, batch).sum()
    with torch.no_grad():
        l_ref = response_logps(reference, batch).sum()
    p = torch.tensor([0.9, 0.2, 0.5]).double()  # scores travel in float32
    expected = -((p - 0.5 - 0.3 * (l - l_ref).detach()) * l).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert metrics["kl/sample"].tolist() == pytest.approx((l - l_ref).tolist())


def test_superhf_objective_matches_an_explicit_token_sum(tiny_world):
    policy = load_causal_lm(str(tiny_world / "base"), "float64")
    prior = load_causal_lm(str(tiny_world / "base"), "float64")
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = tiny_batch(tiny_world)
    loss, _ = SuperHFObjective(prior, kl_coef=0.35).loss(policy, batch)
    with torch.no_grad():
        logits_p = torch.log_softmax(policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, -1)
        logits_q = torch.log_softmax(prior(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, -1)
    expected = 0.0
    for row in range(batch.input_ids.shape[0]):
        for t in range(1, batch.input_ids.shape[1]):
            if not batch.response_mask[row, t]:  # token t is scored, predicted at position t - 1
                continue
            target = batch.input_ids[row, t]
            q, p = logits_q[row, t - 1], logits_p[row, t - 1]
            expected += -p[target].item() + 0.35 * float((q.exp() * (q - p)).sum())
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert SuperHFObjective(prior, 0.35).count(batch) == int(batch.response_mask[:, 1:].sum())


# ------------------------------------------------------------------------------------------- rounds
class Tiny(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((2,), float(value)))


def test_apo_extrapolates_between_rounds_and_moves_the_reference(tiny_world, tmp_path):
    config = online_config(tiny_world, tmp_path, online={"method": "apo", "rounds": 3, "extrapolation": 0.5})
    initial = Tiny(1.0)
    rounds = Rounds(get_online_method("apo"), config, total_steps=6, initial=initial, main_process=True)
    policy = Tiny(3.0)  # theta_hat_1 after round 0
    rounds.before_step(1, policy)  # mid-round: nothing happens
    assert policy.w.tolist() == [3.0, 3.0]
    rounds.before_step(2, policy)  # theta_1 = 3 + 0.5 * (3 - 1) = 4
    assert policy.w.tolist() == [4.0, 4.0] and rounds.reference.w.tolist() == [4.0, 4.0]
    with torch.no_grad():
        policy.w.fill_(6.0)  # theta_hat_2
    rounds.before_step(4, policy)  # theta_2 = 6 + 0.5 * (6 - 3) = 7.5: momentum from the previous theta_hat
    assert policy.w.tolist() == [7.5, 7.5] and rounds.reference.w.tolist() == [7.5, 7.5]
    assert initial.w.tolist() == [1.0, 1.0], "the initial policy (for KL) never moves"
    resumed = Rounds(get_online_method("apo"), config, total_steps=6, initial=Tiny(1.0), main_process=True)
    resumed.resume(5)
    assert resumed.reference.w.tolist() == [7.5, 7.5] and resumed.trained_previous["w"].tolist() == [6.0, 6.0]


def test_online_run_logs_and_resumes_exactly(tiny_world, tmp_path):
    settings = dict(online={"method": "apo", "rounds": 2}, save_steps=2, max_steps=4)
    straight = train(online_config(tiny_world, tmp_path / "a", **settings))

    class Interrupted(Exception):
        pass

    def crash(step, model):
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(online_config(tiny_world, tmp_path / "b", **settings), on_step=crash)
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step-0000002"]
    resumed = train(online_config(tiny_world, tmp_path / "b", **dict(settings, resume="auto")))
    from safetensors.torch import load_file

    a, b = load_file(str(straight.model_dir / "model.safetensors")), load_file(str(resumed.model_dir / "model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    assert (tmp_path / "b" / "rounds" / "reference-1" / "model.safetensors").exists()
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"online/reward", "online/length", "online/finished"} <= set(rows[0])
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [r["step"] for r in summary["online_eval"]] == [0, 4]
    assert {"kl", "gold", "proxy", "length"} <= set(summary["online_eval"][-1])
    assert summary["online"]["method"] == "apo"
    # the gain over step 0 is paired with the step-0 rewards the interrupted run wrote, as in the straight run
    straight_eval = json.loads((tmp_path / "a" / "summary.json").read_text())["online_eval"]
    for key in ("gold_gain", "gold_gain_se", "proxy_gain", "gold_se"):
        assert summary["online_eval"][-1][key] == pytest.approx(straight_eval[-1][key], abs=1e-6), key
    assert "per_prompt" not in summary["online_eval"][-1]


def test_evaluation_gain_is_the_paired_mean_with_its_standard_error():
    from alignkit.recipes.common.sampling_run import mean_and_gain

    rng = np.random.default_rng(0)
    before = rng.normal(1.0, 1.0, 50)
    after = before + rng.normal(0.3, 0.2, 50)
    after[7] = np.nan  # a sample the source could not score: left out of the mean and of the pairs
    out = mean_and_gain("gold", after, list(before))
    kept = np.delete(np.arange(50), 7)
    d = after[kept] - before[kept]
    assert out["gold"] == pytest.approx(np.mean(after[kept]))
    assert out["gold_se"] == pytest.approx(np.std(after[kept], ddof=1) / np.sqrt(49))
    assert out["gold_gain"] == pytest.approx(d.mean())
    assert out["gold_gain_se"] == pytest.approx(np.std(d, ddof=1) / np.sqrt(49))
    assert out["gold_gain_se"] < out["gold_se"] / 2, "pairing removes the prompt-to-prompt variance"
    assert set(mean_and_gain("gold", after, None)) == {"gold", "gold_se"}


def test_evaluation_samples_several_responses_per_prompt(tiny_world, tmp_path):
    train(online_config(tiny_world, tmp_path, online={"method": "online_dpo", "eval_samples": 3, "eval_prompts": 5},
                        max_steps=1))
    rows = [json.loads(line) for line in (tmp_path / "online_eval.jsonl").read_text().splitlines()]
    assert [len(r["per_prompt"]["gold"]) for r in rows] == [5, 5]  # one mean of 3 samples per prompt
    assert rows[-1]["gold"] == pytest.approx(np.mean(rows[-1]["per_prompt"]["gold"]))


def test_sampled_token_ids_are_trained_on_verbatim(tiny_world, tmp_path):
    config = online_config(tiny_world, tmp_path)
    tokenizer = load_tokenizer(str(tiny_world / "base"))
    model = load_causal_lm(str(tiny_world / "base"))
    rounds = Rounds(get_online_method("online_dpo"), config, 4, model, True)
    rollout = Rollout(get_online_method("online_dpo"), config, tokenizer, Labeller("verify:max_words=3"), rounds)
    rows = load_prompt_rows(tiny_world / "data" / "prompts_train.jsonl")[:6]
    records, metrics = rollout(0, rows, model)
    again, _ = rollout(0, rows, model)
    assert [r.response_ids for r in records] == [r.response_ids for r in again], "sampling is seeded by the step"
    assert model.training, "the policy is back in train mode after sampling"
    for record in records:
        words = [len(tokenizer.decode(ids, skip_special_tokens=True).split()) for ids in record.response_ids]
        chosen, rejected = record.record.scores["reward"]
        assert chosen > rejected
        assert (words[0] <= 3) >= (words[1] <= 3)
    assert len(metrics["online/length"]) == 12
