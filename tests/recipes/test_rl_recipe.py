"""``recipe: rl`` pieces (fast): configuration errors, rollout/epoch/mini-batch iteration, KL in the reward vs in the
loss, PPO-ptx mixing, value head and critic, SALSA soup, reward combinations, exact resume after an interruption."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from shared.decoding import one_thread  # noqa: F401  (autouse fixture: one torch thread)

from alignkit.config import ConfigError
from alignkit.recipes import load_config
from alignkit.data.collate import collate
from alignkit.data.records import PreferenceRecord
from alignkit.data.tokenize import TokenizedRecord
from alignkit.rl import rloo, token_kl
from alignkit.sampling.generate import Sample
from alignkit.recipes.rl import (
    RLObjective,
    RLReward,
    RLRollout,
    RLState,
    RolloutData,
    check_rl_config,
)
from alignkit.models.heads import ValueHead, weight_soup
from alignkit.recipes.rl import load_critic

ONE_PROCESS = SimpleNamespace(process_index=0, num_processes=1)


def rl_config(world, tmp_path, rl=None, online=None, **extra):
    values = {"recipe": "rl", "model": {"path": str(world / "base")},
                  "data": {"path": str(world / "data" / "prompts_train.jsonl")},
                  "online": {"reward": "sandbox-gold", "max_new_tokens": 6, "eval_prompts": 4, **(online or {})},
                  "rl": rl or {}, "batch_size": 2, "max_steps": 4, "output_dir": str(tmp_path / "run"), "progress": False,
                  "resume": "never"}
    values.update(extra)
    return load_config(None, **values)


# ------------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("rl, online, message", [
    ({"advantage": "rloo", "num_samples": 1}, {}, "at least 2"),
    ({"advantage": "grpo", "critic_path": "x"}, {}, "uses no value function"),
    ({"ptx_coef": 0.5}, {}, "PPO-ptx needs both"),
    ({"heads": ["a", "b"]}, {}, "set rl.combine"),
    ({"combine": "maxmin", "heads": ["a"]}, {}, "at least two"),
    ({"reference_soup": ["a"]}, {}, "two paths"),
    ({"old_logps": "sampler"}, {"temperature": 0.7}, "temperature 1"),
    ({"ppo_epochs": 0}, {}, "ppo_epochs"),
    ({}, {"num_samples": 4}, "rl.num_samples"),
    ({}, {"reward": "pairwise:llm:x"}, "pointwise"),
    ({"advantage": "ppo"}, {}, "unknown advantage estimator .ppo."),
])
def test_config_errors_name_the_setting(tiny_world, tmp_path, rl, online, message):
    with pytest.raises(ConfigError, match=message):
        rl_config(tiny_world, tmp_path, rl=rl, online=online)


def test_config_needs_a_reward_and_refuses_lora(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="online.reward is required"):
        rl_config(tiny_world, tmp_path, online={"reward": ""})
    config = rl_config(tiny_world, tmp_path)
    config.lora.enabled = True
    with pytest.raises(ConfigError, match="LoRA"):
        check_rl_config(config)


# ------------------------------------------------------------------------------------------------ helpers
def fake_rollout(iteration: int, prompts: int, k: int, lengths: list[int] | None = None) -> RolloutData:
    """A rollout with response lengths ``lengths`` (cycled) and random token tensors."""
    lengths = lengths or [3]
    responses = [[5 + j for j in range(lengths[i % len(lengths)])] for i in range(prompts * k)]
    width = max(map(len, responses))
    g = torch.Generator().manual_seed(iteration)
    tokens = {name: torch.randn(prompts * k, width, generator=g) for name in
              ("old_logps", "ref_logps", "advantages", "returns", "values")}
    tokens["old_logps"] = -tokens["old_logps"].abs()
    tokens["ref_logps"] = -tokens["ref_logps"].abs()
    return RolloutData(iteration, [[1, 2, 3]] * prompts, responses, tokens, torch.ones(prompts * k, dtype=torch.bool))


def batch_of(records):
    return collate(records, pad_id=0)


# ------------------------------------------------------------------------------------------------ iteration
def test_one_rollout_serves_every_epoch_and_minibatch(tiny_world, tmp_path, monkeypatch):
    config = rl_config(tiny_world, tmp_path, rl={"advantage": "rloo", "num_samples": 2, "ppo_epochs": 3,
                                                 "num_minibatches": 2})
    state = RLState(config, None, None, 1)
    objective = RLObjective(config, state)
    rows = [SimpleNamespace(prompt=f"p{i}", metadata={}) for i in range(10)]
    hook = RLRollout(config, None, None, None, state, objective, rows, [], ONE_PROCESS)
    made = []

    def make(self, iteration, model):
        made.append(iteration)
        prompts = self.iteration_prompts(iteration)
        self.state.rollout = fake_rollout(iteration, len(prompts), self.k)
        self.state.rollout.prompt_text = [p.prompt for p in prompts]
        return {"rl/proxy": torch.zeros(1)}

    monkeypatch.setattr(RLRollout, "make", make)
    assert hook.updates == 6
    seen_prompts = []
    for step in range(12):
        records, metrics = hook(step, [], None)
        assert len(records) == 2 and all(len(r.response_ids) == 2 for r in records)  # whole groups of K
        assert bool(metrics) == (step % 6 == 0)  # rollout metrics only when a rollout is made
        epoch = (step % 6) // 2
        if step % 2 == 0:
            covered = set()
        covered |= {r.index for r in records}
        if step % 2 == 1:
            assert covered == {0, 1, 2, 3}, f"epoch {epoch} of the rollout visits every prompt once"
        if step % 6 == 0:
            seen_prompts += state.rollout.prompt_text
    assert made == [0, 1]
    assert len(set(seen_prompts)) == 8, "two rollouts draw 8 distinct prompts from the data order"


def test_minibatch_order_is_reshuffled_per_epoch(tiny_world, tmp_path, monkeypatch):
    config = rl_config(tiny_world, tmp_path, rl={"advantage": "grpo", "num_samples": 2, "ppo_epochs": 4,
                                                 "num_minibatches": 4}, batch_size=1)
    state = RLState(config, None, None, 1)
    hook = RLRollout(config, None, None, None, state, RLObjective(config, state),
                     [SimpleNamespace(prompt=str(i), metadata={}) for i in range(8)], [], ONE_PROCESS)
    monkeypatch.setattr(RLRollout, "make", lambda self, it, m: setattr(self.state, "rollout", fake_rollout(it, 4, 2))
                        or {})
    orders = [[hook(e * 4 + j, [], None)[0][0].index for j in range(4)] for e in range(4)]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert len({tuple(o) for o in orders}) > 1


# ------------------------------------------------------------------------------------------------ KL placement
def test_kl_in_reward_is_subtracted_from_the_sequence_return(tiny_world, tmp_path):
    beta = 0.3
    config = rl_config(tiny_world, tmp_path, rl={"advantage": "rloo", "num_samples": 2, "kl_coef": beta})
    state = RLState(config, None, None, 1)
    hook = RLRollout(config, None, None, None, state, RLObjective(config, state), [], [], ONE_PROCESS)
    data = fake_rollout(0, 3, 2, lengths=[2, 4, 3])
    mask, old, ref = data.mask, data.tokens["old_logps"], data.tokens["ref_logps"]
    scores = torch.tensor([1.0, 0.0, 2.0, 2.5, -1.0, 0.5], dtype=torch.float64)
    adv, _, stats = hook.advantages(scores, old, ref, None, mask, data.valid)
    kl = torch.where(mask, old - ref, torch.zeros(())).sum(-1)
    expected = rloo(scores.float() - beta * kl, mask, group_size=2).advantages
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(stats["kl"], kl)

    config.rl.kl_in = "loss"
    state = RLState(config, None, None, 1)
    hook = RLRollout(config, None, None, None, state, RLObjective(config, state), [], [], ONE_PROCESS)
    adv, _, _ = hook.advantages(scores, old, ref, None, mask, data.valid)
    torch.testing.assert_close(adv, rloo(scores.float(), mask, group_size=2).advantages)


def objective_loss(config, data, logp, ptx=()):
    """RLObjective.loss on the rollout's records (+ ptx records) with the policy log-probs given as a tensor."""
    state = RLState(config, None, None, 1)
    state.rollout = data
    objective = RLObjective(config, state)
    records = [data.record(p) for p in range(len(data.prompt_ids))] + list(ptx)
    batch = batch_of(records)
    objective.forward = lambda model, b, entropy=True: (logp, torch.zeros_like(logp), None)
    return objective, batch, state


def test_kl_in_loss_adds_beta_times_k3(tiny_world, tmp_path):
    data = fake_rollout(0, 2, 2, lengths=[2, 3])
    config = rl_config(tiny_world, tmp_path, rl={"advantage": "grpo", "num_samples": 2, "kl_coef": 0.2})
    assert config.rl.kl_in is None  # grpo default: loss, k3
    _probe, batch, _ = objective_loss(config, data, None)
    rows = data.rows(batch)
    old = data.gather("old_logps", batch, rows)
    logp = (old + 0.05 * torch.randn(old.shape)).where(batch.response_mask, torch.zeros(()))
    objective, batch, state = objective_loss(config, data, logp)
    with_kl, metrics = objective.loss(None, batch)
    state.kl.value = 0.0
    without, _ = objective.loss(None, batch)
    ref = data.gather("ref_logps", batch, rows)
    k3 = torch.where(batch.response_mask, token_kl(logp, ref, "k3"), torch.zeros(())).sum()
    torch.testing.assert_close(with_kl - without, 0.2 * k3)
    assert "rl/kl_loss" in metrics
    config.rl.kl_in = "reward"
    objective, batch, _ = objective_loss(config, data, logp)
    torch.testing.assert_close(objective.loss(None, batch)[0], without)


def test_ptx_mixes_the_per_token_nll(tiny_world, tmp_path):
    data = fake_rollout(0, 2, 2, lengths=[2, 3])
    config = rl_config(tiny_world, tmp_path, rl={"advantage": "rloo", "num_samples": 2, "ptx_coef": 0.5,
                                                 "ptx_path": "sft.jsonl"})
    sft = [TokenizedRecord(i, PreferenceRecord(prompt="x", responses=["y"]), [1, 2], [[7] * (i + 2)])
           for i in range(4)]
    state = RLState(config, None, None, 1)
    state.rollout = data
    hook = RLRollout(config, None, None, None, state, RLObjective(config, state), [], sft, ONE_PROCESS)
    ptx = hook.ptx_records(0, [0, 1])
    assert len(ptx) == 2 and all(r.index < 0 for r in ptx)
    scale = state.ptx_scale
    objective, batch, _ = objective_loss(config, data, None, ptx)
    state_scale = scale
    rows = data.rows(batch)
    logp = torch.where(batch.response_mask, -torch.rand(batch.response_mask.shape), torch.zeros(()))
    objective, batch, state2 = objective_loss(config, data, logp, ptx)
    state2.ptx_scale = state_scale
    mixed, metrics = objective.loss(None, batch)
    config.rl.ptx_coef = 0.0
    plain, _ = objective.loss(None, batch)
    count = objective.count(batch)
    ptx_mask = (rows < 0)[:, None] & batch.response_mask
    assert count == int(((rows >= 0)[:, None] & batch.response_mask).sum())
    mean_nll = -(logp * ptx_mask).sum() / ptx_mask.sum()
    # after the loop divides by the RL normaliser: RL loss + ptx_coef * per-token NLL of the SFT rows
    torch.testing.assert_close((mixed - plain) / count, 0.5 * mean_nll)
    torch.testing.assert_close(metrics["rl/ptx_nll"][0], mean_nll)


# ------------------------------------------------------------------------------------------------ value function
def test_value_head_reads_the_state_before_each_token(tiny_world, tmp_path):
    from alignkit.models.loading import load_causal_lm

    model = load_causal_lm(str(tiny_world / "base"), device="cpu")
    config = rl_config(tiny_world, tmp_path)
    head = ValueHead(model.config.hidden_size)
    state = RLState(config, head, None, 1)
    objective = RLObjective(config, state)
    data = fake_rollout(0, 2, 1, lengths=[2, 3])
    batch = batch_of([data.record(p) for p in range(2)])
    _, _, values = objective.forward(model, batch)
    assert torch.all(values == 0), "zero-initialised head"
    torch.nn.init.normal_(head.linear.weight)
    _logp, entropy, values = objective.forward(model, batch)
    hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   output_hidden_states=True).hidden_states[-1]
    expected = head(hidden)
    torch.testing.assert_close(values[:, 1:], expected[:, :-1].float())
    assert values.requires_grad and torch.all(entropy[batch.response_mask] > 0)
    assert objective.parameters() == list(head.parameters())


def test_critic_starts_from_the_reward_model(tiny_world, tmp_path):
    from alignkit.models.loading import load_tokenizer
    from alignkit.rewards.model import HeadLayout, load_reward_model

    tokenizer = load_tokenizer(str(tiny_world / "base"))
    torch.manual_seed(0)
    rm = load_reward_model(str(tiny_world / "base"), tokenizer, HeadLayout(ensemble=2), device="cpu")
    rm.save_pretrained(tmp_path / "rm")
    critic = load_critic(str(tmp_path / "rm"), tokenizer, device="cpu")
    torch.testing.assert_close(critic.head.weight[0], rm.score.weight.mean(0))
    data = fake_rollout(0, 1, 1, lengths=[4])
    batch = batch_of([data.record(0)])
    values = critic(batch)
    with torch.no_grad():
        reward = rm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.mean(-1)
        last = critic.head(critic.backbone(input_ids=batch.input_ids).last_hidden_state[:, -1]).squeeze(-1)
    torch.testing.assert_close(last, reward)  # the critic's value of the full sequence is the mean reward
    assert values.shape == batch.input_ids.shape and values[0, 0] == 0


# ------------------------------------------------------------------------------------------------ references, rewards
def test_salsa_soup_is_the_weight_average(tiny_world):
    from alignkit.models.loading import load_causal_lm

    a = load_causal_lm(str(tiny_world / "base"), device="cpu")
    b = load_causal_lm(str(tiny_world / "base"), device="cpu")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    wa = {k: v.clone() for k, v in a.state_dict().items()}
    soup = weight_soup([a, b], [0.25, 0.75])
    for name, value in soup.state_dict().items():
        torch.testing.assert_close(value, wa[name] + 0.75 * (1.0 if value.is_floating_point() else 0))


def sample(text: str, finished: bool = True) -> Sample:
    return Sample(0, text, [1], [2], finished)


def test_maxmin_robust_and_missing_eos(tiny_world, tmp_path):
    from alignkit.sandbox import world

    prompt = [{"role": "user", "content": "tell me about the garden"}]
    texts = ["the rose is lovely thanks", "please the tulip is wonderful and great and pleasant thanks kindly",
             "awful"]
    groups = {g: [world.gold_reward(prompt[0]["content"], t, g) for t in texts] for g in world.GROUP_WEIGHTS}
    spec = {"sandbox-gold-warm": 0.5, "sandbox-gold-terse": 0.5}
    samples = [sample(t) for t in texts]
    config = rl_config(tiny_world, tmp_path, online={"reward": spec},
                       rl={"combine": "maxmin", "heads": ["sandbox-gold-warm", "sandbox-gold-terse"]})
    scores, heads = RLReward(config).score([prompt] * 3, samples, [{}] * 3)
    worst = min(groups, key=lambda g: sum(groups[g]))
    torch.testing.assert_close(scores, torch.tensor(groups[worst], dtype=torch.float64))
    assert set(heads) == {"sandbox-gold-warm", "sandbox-gold-terse"}
    config.rl.combine, config.rl.robust_lam = "robust", 0.3
    scores, _ = RLReward(config).score([prompt] * 3, samples, [{}] * 3)
    mean = [(w + t) / 2 for w, t in zip(groups["warm"], groups["terse"])]
    torch.testing.assert_close(scores, torch.tensor([0.3 * m + 0.7 * min(w, t) for m, w, t in
                                                     zip(mean, groups["warm"], groups["terse"])], dtype=torch.float64))
    config.rl.heads = ["sandbox-gold-warm", "nope"]
    with pytest.raises(ValueError, match="no component"):
        RLReward(config).score([prompt] * 3, samples, [{}] * 3)
    config = rl_config(tiny_world, tmp_path, online={"missing_eos_penalty": 2.0})
    scores, _ = RLReward(config).score([prompt] * 2, [sample(texts[0]), sample(texts[0], finished=False)], [{}] * 2)
    assert scores[0] - scores[1] == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------ end to end
def test_runs_and_resumes_to_the_same_weights(tiny_world, tmp_path):
    from safetensors.torch import load_file

    from alignkit.recipes import train

    rl = {"advantage": "gae", "num_minibatches": 2, "reward_norm": True, "kl_target": 1.0, "kl_horizon": 100}
    # two updates per rollout: the checkpoint of step 3 sits inside the second rollout, whose samples it must keep
    common = {"rl": rl, "online": {"gold": "sandbox-gold", "eval_every": 2}, "max_steps": 4, "save_steps": 3,
                  "optim": {"lr": 1e-3}}
    full = train(rl_config(tiny_world, tmp_path / "a", **common))
    final = full.metrics[-1]
    for key in ("rl/proxy", "rl/gold", "rl/kl", "rl/entropy", "rl/clip_fraction", "rl/explained_variance",
                "rl/length", "rl/value_loss"):
        assert any(key in row for row in full.metrics), key
    assert final["step"] == 4

    class Stop(Exception):
        pass

    def interrupt(step, model):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        train(rl_config(tiny_world, tmp_path / "b", **common), on_step=interrupt)
    resumed = train(rl_config(tiny_world, tmp_path / "b", **{**common, "resume": "auto"}))
    a, b = load_file(str(full.model_dir / "model.safetensors")), load_file(str(resumed.model_dir / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    initial = load_file(str(tiny_world / "base" / "model.safetensors"))
    assert any(not torch.equal(a[n], initial[n]) for n in a), "training moved the weights"


def test_sequence_mean_aggregation_counts_responses(tiny_world, tmp_path):
    data = fake_rollout(0, 2, 2, lengths=[2, 4])
    config = rl_config(tiny_world, tmp_path, rl={"advantage": "grpo", "num_samples": 2, "kl_coef": 0.0,
                                                 "loss_aggregation": "sequence_mean"})
    _, batch, _ = objective_loss(config, data, None)
    rows = data.rows(batch)
    old = data.gather("old_logps", batch, rows)  # ratio 1: the loss is -A averaged per response, summed over them
    objective, batch, _ = objective_loss(config, data, old.clone().requires_grad_())
    loss, _ = objective.loss(None, batch)
    adv = data.gather("advantages", batch, rows)
    mask = batch.response_mask
    expected = -sum(adv[i][mask[i]].mean() for i in range(4))
    assert objective.count(batch) == 4
    torch.testing.assert_close(loss, expected)


def test_critic_soup_ptx_and_robust_reward_run_end_to_end(tiny_world, tmp_path):
    """Every optional part at once: a critic from a reward-model directory, SALSA's soup reference, PPO-ptx,
    reward-robust combination of ensemble heads, sequence-level ratios, KL in the loss, sequence-mean loss."""
    from alignkit.models.loading import load_tokenizer
    from alignkit.rewards.model import HeadLayout, load_reward_model
    from alignkit.recipes import train

    tokenizer = load_tokenizer(str(tiny_world / "base"))
    torch.manual_seed(0)
    load_reward_model(str(tiny_world / "base"), tokenizer, HeadLayout(ensemble=3), device="cpu").save_pretrained(
        tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    base = str(tiny_world / "base")
    rl = {"advantage": "gae", "critic_path": str(tmp_path / "rm"), "reference_soup": [base, base],
          "ptx_path": str(tiny_world / "data" / "sft.jsonl"), "ptx_coef": 0.5, "combine": "robust",
          "ratio_level": "sequence", "kl_in": "loss", "loss_aggregation": "sequence_mean", "ppo_epochs": 2}
    result = train(rl_config(tiny_world, tmp_path, rl=rl, online={"reward": f"rm:{tmp_path / 'rm'}"}, max_steps=2))
    logged = {k for row in result.metrics for k in row}
    assert {"rl/ptx_nll", "rl/kl_loss", "rl/value_loss", "rl/explained_variance"} <= logged
    assert {"rl/reward/head:reward/0", "rl/reward/head:reward/2"} <= logged
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rl"]["reference"] == "soup" and summary["rl"]["combine"] == "robust"
