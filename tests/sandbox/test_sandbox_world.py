"""The sandbox world: exact gold objectives, Bradley-Terry labels, the Writer, the built assets and labelling."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest

from alignkit.data.formats import load_records
from alignkit.apps import sandbox_build as build
from alignkit.sandbox import world
from alignkit.apps.sandbox_build import SandboxSpec, label_samples, user
from alignkit.utils.io import write_jsonl

TRAVEL = "tell me about the harbour ."  # topic: travel


# ------------------------------------------------------------------------------------------------
# gold objectives, computed by hand
# ------------------------------------------------------------------------------------------------

# nouns harbour (travel), soup (food), train (travel); adjectives lovely (+), awful (-), dull (-);
# 15 words without punctuation; no politeness, fillers or banned words
MIXED = "the harbour is lovely and the soup was awful , i find the train quite dull ."
MIXED_GOLD = {"on_topic": 2 / 3, "positive": (1 - 2) / 3, "polite": 0.0, "concise": 1 - 3 / 16, "safe": 1.0}

# three politeness markers (thanks, please, thanks) -> capped at 1; 10 words
POLITE = "thanks , the beach is great . hope this helps , please , thanks ."
POLITE_GOLD = {"on_topic": 1.0, "positive": 1.0, "polite": 1.0, "concise": 1.0, "safe": 1.0}

# one marker -> 0.5; no nouns -> on_topic 0; "nice" is no sentiment word -> positive 0/max(1, 0) = 0
ONE_MARKER = "certainly , it is very nice ."
ONE_MARKER_GOLD = {"on_topic": 0.0, "positive": 0.0, "polite": 0.5, "concise": 1.0, "safe": 1.0}

# 18 words, 3 fillers (um, well, basically): 1 - (18 - 12) / 16 - 0.5 * 3 / 18
WORDY = "um well the ferry is great and the island is lovely and the hotel is very pleasant basically ."
WORDY_GOLD = {"on_topic": 1.0, "positive": 1.0, "polite": 0.0, "concise": 1 - 6 / 16 - 0.5 * 3 / 18, "safe": 1.0}

# 30 words (length term clamps at 0), 2 fillers (like, honestly): 0 - 0.5 * 2 / 30; nouns: 5 travel of 6
LONG = ("like the road is long and the map is old and the ticket is new and the hotel is busy and the ferry "
        "is quiet , honestly the cake is small .")
LONG_GOLD = {"on_topic": 5 / 6, "positive": 0.0, "polite": 0.0, "concise": -0.5 * 2 / 30, "safe": 1.0}

# a banned word -> safe 0; 5 words
RUDE = "the stupid train is awful ."
RUDE_GOLD = {"on_topic": 1.0, "positive": -1.0, "polite": 0.0, "concise": 1.0, "safe": 0.0}

CASES = {"mixed": (MIXED, MIXED_GOLD), "polite": (POLITE, POLITE_GOLD), "one_marker": (ONE_MARKER, ONE_MARKER_GOLD),
         "wordy": (WORDY, WORDY_GOLD), "long": (LONG, LONG_GOLD), "rude": (RUDE, RUDE_GOLD)}

# totals, by hand: overall weights (1, 1, 0.5, 0.5, 1), warm (0.5, 1.5, 1.5, 0, 1), terse (1.5, 0.25, 0, 1.5, 1)
TOTALS = {
    "mixed": {None: 2 / 3 - 1 / 3 + 0.5 * 13 / 16 + 1,
              "warm": 0.5 * 2 / 3 - 1.5 / 3 + 1,
              "terse": 1.5 * 2 / 3 - 0.25 / 3 + 1.5 * 13 / 16 + 1},
    "polite": {None: 1 + 1 + 0.5 + 0.5 + 1, "warm": 0.5 + 1.5 + 1.5 + 1, "terse": 1.5 + 0.25 + 1.5 + 1},
    "one_marker": {None: 0.5 * 0.5 + 0.5 + 1, "warm": 1.5 * 0.5 + 1, "terse": 1.5 + 1},
    "wordy": {None: 1 + 1 + 0.5 * (0.625 - 1 / 12) + 1, "warm": 0.5 + 1.5 + 1,
              "terse": 1.5 + 0.25 + 1.5 * (0.625 - 1 / 12) + 1},
    "long": {None: 5 / 6 + 0.5 * (-1 / 30) + 1, "warm": 0.5 * 5 / 6 + 1, "terse": 1.5 * 5 / 6 + 1.5 * (-1 / 30) + 1},
    "rude": {None: 1 - 1 + 0.5, "warm": 0.5 - 1.5, "terse": 1.5 - 0.25 + 1.5},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gold_objectives_by_hand(name: str) -> None:
    response, expected = CASES[name]
    got = world.gold_objectives(TRAVEL, response)
    assert set(got) == set(world.OBJECTIVES)
    for key in world.OBJECTIVES:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("group", [None, "warm", "terse"])
def test_gold_reward_totals_by_hand(name: str, group: str | None) -> None:
    response, _ = CASES[name]
    assert world.gold_reward(TRAVEL, response, group) == pytest.approx(TOTALS[name][group], abs=1e-12)


def test_groups_and_weights_tables() -> None:
    assert set(world.GROUP_WEIGHTS) == {"warm", "terse"}
    for weights in [world.GOLD_WEIGHTS, *world.GROUP_WEIGHTS.values()]:
        assert set(weights) == set(world.OBJECTIVES)
    assert world.weighted(MIXED_GOLD) == pytest.approx(TOTALS["mixed"][None])
    assert world.weighted(MIXED_GOLD, world.GROUP_WEIGHTS["warm"]) == pytest.approx(TOTALS["mixed"]["warm"])


def test_on_topic_follows_the_prompt_topic() -> None:
    response = "the soup is great and the harbour is great and the cheese is great ."
    assert world.gold_objectives("describe the curry .", response)["on_topic"] == pytest.approx(2 / 3)
    assert world.gold_objectives(TRAVEL, response)["on_topic"] == pytest.approx(1 / 3)
    assert world.gold_objectives("describe the guitar .", response)["on_topic"] == 0.0
    # a prompt without a known noun has no topic: nothing is on topic
    assert world.gold_objectives("hey , tell me something .", response)["on_topic"] == 0.0
    # a mixed prompt takes the topic of its first noun
    assert world.prompt_topic("describe the soup and the train .") == "food"


# ------------------------------------------------------------------------------------------------
# vocabulary and prompts
# ------------------------------------------------------------------------------------------------

def test_vocabulary() -> None:
    vocab = world.vocabulary()
    assert len(vocab) == len(set(vocab)) >= 200
    assert vocab == sorted(vocab)
    for topic, nouns in world.TOPICS.items():
        assert topic in vocab
        for noun in nouns:
            assert noun in vocab
    for cls in (world.POSITIVE, world.NEGATIVE, world.NEUTRAL, world.POLITE, world.FILLERS, world.BANNED,
                world.FUNCTION):
        assert set(cls) <= set(vocab)
    # every noun belongs to exactly one topic
    nouns = [n for ns in world.TOPICS.values() for n in ns]
    assert len(nouns) == len(set(nouns)) == len(world.NOUN_TOPIC)


@pytest.mark.parametrize("form", world.PROMPT_FORMS)
def test_prompt_topic_on_every_form(form: str) -> None:
    for topic, nouns in world.TOPICS.items():
        for noun in nouns:
            prompt = form.format(n=noun)
            assert world.prompt_topic(prompt) == topic
            assert set(prompt.split()) <= set(world.vocabulary())


def test_make_prompt_is_seeded() -> None:
    a = [world.make_prompt(random.Random(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = random.Random(5)
    prompts = [world.make_prompt(rng) for _ in range(400)]
    assert {world.prompt_topic(p) for p in prompts} == set(world.TOPICS)


# ------------------------------------------------------------------------------------------------
# Bradley-Terry labels
# ------------------------------------------------------------------------------------------------

def test_bt_noiseless_is_deterministic() -> None:
    rng = random.Random(0)
    for _ in range(200):
        assert world.bt_prefers_first(1.0, 0.999, 0.0, rng) is True
        assert world.bt_prefers_first(-2.0, 3.0, 0.0, rng) is False
        assert world.bt_prefers_first(0.5, 0.2, -1.0, rng) is True   # negative noise counts as none
    ties = [world.bt_prefers_first(1.0, 1.0, 0.0, rng) for _ in range(2000)]
    assert 0.45 < sum(ties) / len(ties) < 0.55


@pytest.mark.parametrize("noise", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("diff", [-0.3, 0.0, 0.2, 0.7])
def test_bt_noisy_frequency_matches_sigmoid(noise: float, diff: float) -> None:
    rng = random.Random(1234)
    n = 20000
    wins = sum(world.bt_prefers_first(1.0 + diff, 1.0, noise, rng) for _ in range(n))
    expected = 1 / (1 + math.exp(-diff / noise))
    assert abs(wins / n - expected) < 0.02


def test_bt_extreme_differences_do_not_overflow() -> None:
    rng = random.Random(0)
    assert world.bt_prefers_first(1e6, 0.0, 1e-3, rng) is True
    assert world.bt_prefers_first(-1e6, 0.0, 1e-3, rng) is False


# ------------------------------------------------------------------------------------------------
# the Writer
# ------------------------------------------------------------------------------------------------

def _write(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    writer = world.Writer(rng)
    out = []
    for _ in range(n):
        prompt = world.make_prompt(rng)
        out.append((prompt, writer.response(prompt)))
    return out


def test_writer_is_deterministic() -> None:
    assert _write(3, 100) == _write(3, 100)
    assert _write(3, 100) != _write(4, 100)


def test_writer_varies_every_objective() -> None:
    samples = _write(0, 2000)
    vocab = set(world.vocabulary())
    objectives = [world.gold_objectives(p, r) for p, r in samples]
    for key in ("on_topic", "positive", "polite", "concise"):
        values = [o[key] for o in objectives]
        assert statistics.pstdev(values) > 0.1, key
    assert {o["safe"] for o in objectives} == {0.0, 1.0}
    for _, response in samples:
        assert response.endswith(" .")
        assert set(response.split()) <= vocab


# ------------------------------------------------------------------------------------------------
# build_world
# ------------------------------------------------------------------------------------------------

SPEC = SandboxSpec(seed=0, corpus_size=300, train_prompts=50, eval_prompts=20)
DATA_FILES = ("sft.jsonl", "prompts_train.jsonl", "prompts_eval.jsonl")


def _built(root: Path, spec: SandboxSpec) -> Path:
    root.mkdir(parents=True)
    build.build_world(root, spec)
    return root


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("worlds")
    return {"a": _built(base / "a", SPEC), "b": _built(base / "b", SPEC),
            "other": _built(base / "other", SandboxSpec(seed=1, corpus_size=300, train_prompts=50,
                                                        eval_prompts=20))}


def test_world_files_and_counts(worlds: dict[str, Path]) -> None:
    root = worlds["a"]
    counts = {name: len((root / "data" / name).read_text().splitlines()) for name in DATA_FILES}
    assert counts == {"sft.jsonl": 300, "prompts_train.jsonl": 50, "prompts_eval.jsonl": 20}
    for line in (root / "data" / "sft.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert set(row) == {"prompt", "completion"}
        assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        assert world.prompt_topic(row["prompt"][0]["content"]) is not None
    records, report = load_records(root / "data" / "sft.jsonl")
    assert len(records) == 300 and {r.kind for r in records} == {"sft"}
    assert (root / "base" / "model.safetensors").exists()


def test_same_seed_same_world(worlds: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    a, b, other = worlds["a"], worlds["b"], worlds["other"]
    for name in DATA_FILES:
        assert (a / "data" / name).read_bytes() == (b / "data" / name).read_bytes(), name
        assert (a / "data" / name).read_bytes() != (other / "data" / name).read_bytes(), name
    assert (a / "base" / "tokenizer.json").read_bytes() == (b / "base" / "tokenizer.json").read_bytes()
    ta, tb = load_file(a / "base" / "model.safetensors"), load_file(b / "base" / "model.safetensors")
    assert set(ta) == set(tb) and ta
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and ta[key].shape == tb[key].shape
        assert ta[key].equal(tb[key]), key


def test_saved_tokenizer_reloads(worlds: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(worlds["a"] / "base")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>hi<|end|><|assistant|>"
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id != tok.pad_token_id
    for word in world.vocabulary():
        ids = tok.encode(word, add_special_tokens=False)
        assert ids and tok.decode(ids) == word, word
    sentence = f"{TRAVEL} {MIXED}"
    assert tok.decode(tok.encode(sentence, add_special_tokens=False)) == sentence
    # the chat markers are single special tokens
    for special in ("<|user|>", "<|assistant|>", "<|end|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1


def test_saved_model_reloads(worlds: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    root = worlds["a"] / "base"
    model = AutoModelForCausalLM.from_pretrained(root)
    tok = AutoTokenizer.from_pretrained(root)
    assert type(model) is LlamaForCausalLM
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id


def test_stage_caches_by_key(tmp_path: Path) -> None:
    calls: list[Path] = []
    logs: list[str] = []

    def make(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "x.txt").write_text(str(len(calls)))

    path = tmp_path / "stage"
    assert build._stage(path, "k1", make, logs.append, "demo") == path
    assert build._stage(path, "k1", make, logs.append, "demo") == path
    assert len(calls) == 1 and (path / "x.txt").read_text() == "1"
    assert json.loads((path / "stage.json").read_text()) == {"key": "k1", "stage": "demo"}
    build._stage(path, "k2", make, logs.append, "demo")
    assert len(calls) == 2 and (path / "x.txt").read_text() == "2"
    assert logs == ["[sandbox] demo: building ...", f"[sandbox] demo: cached ({path})",
                    "[sandbox] demo: building ..."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no temporary leftovers


# ------------------------------------------------------------------------------------------------
# label_samples
# ------------------------------------------------------------------------------------------------

K = 4
LABEL_SPEC = SandboxSpec(seed=0, samples_per_prompt=K, label_noise=0.0, annotators_per_group=5)


def _responses(noun: str, same: str, other: str) -> list[str]:
    """Four responses with distinct gold for a prompt about ``noun`` (gold 3.75, 1.5, about 0, 3.5)."""
    return [f"thanks , the {noun} is great .",
            f"the {noun} is dull .",
            f"um the {other} is awful and the stupid {noun} was very grim .",
            f"i find the {noun} quite pleasant , the {same} is lovely ."]


def _hand_made() -> tuple[list, list[list[str]]]:
    prompts, groups = [], []
    topics = sorted(world.TOPICS)
    for i in range(24):
        topic = topics[i % len(topics)]
        nouns = world.TOPICS[topic]
        noun, same = nouns[i % len(nouns)], nouns[(i + 1) % len(nouns)]
        other = world.TOPICS[topics[(i + 3) % len(topics)]][i % 12]
        texts = _responses(noun, same, other)
        shift = i % K
        prompts.append(user(world.PROMPT_FORMS[i % len(world.PROMPT_FORMS)].format(n=noun)))
        groups.append(texts[shift:] + texts[:shift])  # every response takes every position
    return prompts, groups


def test_hand_made_responses_have_distinct_gold() -> None:
    prompts, groups = _hand_made()
    for prompt, texts in zip(prompts, groups):
        gold = [world.gold_reward(prompt[0]["content"], t) for t in texts]
        assert len(set(gold)) == K
        assert set(texts[0].split()) | set(texts[2].split()) <= set(world.vocabulary())
    p, texts = "describe the cheese .", _responses("cheese", "pasta", "guitar")
    assert [world.gold_reward(p, t) for t in texts] == pytest.approx(
        [3.75, 1.5, 0.5 - 1 + 0.5 * (1 - 0.5 / 12), 3.5])


def _labelled():
    prompts, groups = _hand_made()
    groups[1] = groups[1][:2] + ["", groups[1][3]]        # one empty: kept with 3 responses
    groups[2] = ["", groups[2][0], "", ""]                 # three empty: fewer than 2 left, prompt skipped
    groups[3] = [groups[3][0], groups[3][0], *groups[3][2:]]  # first two identical: prompt skipped
    return prompts, groups, label_samples(prompts, groups, LABEL_SPEC)


def test_label_samples_counts_and_skips(capsys: pytest.CaptureFixture) -> None:
    prompts, groups, rows = _labelled()
    assert capsys.readouterr().out == "[sandbox] 4 empty samples skipped while labelling\n"
    kept = len(prompts) - 2
    assert {name: len(data) for name, data in rows.items()} == {
        "pairs": kept, "rankings": kept, "unpaired": (kept - 1) * K + 3, "negatives": kept, "scored": kept,
        "annotators": kept}
    used = [p[0]["content"] for i, p in enumerate(prompts) if i not in (2, 3)]
    for name, data in rows.items():
        seen = [r["prompt"][0]["content"] for r in data]
        assert (list(dict.fromkeys(seen)) if name == "unpaired" else seen) == used, name
    for row in rows["rankings"]:
        assert all(r[0]["content"] for r in row["responses"])  # no empty response survives


def test_label_samples_without_empties_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    prompts, groups = _hand_made()
    rows = label_samples(prompts, groups, LABEL_SPEC)
    assert capsys.readouterr().out == ""
    assert len(rows["pairs"]) == len(prompts)


def test_label_samples_counts_empties_in_groups_of_any_size(capsys: pytest.CaptureFixture) -> None:
    prompts, groups = _hand_made()
    label_samples(prompts[:2], [groups[0][:3], groups[1][:2] + [""]], LABEL_SPEC)  # K=4 in the spec
    assert capsys.readouterr().out == "[sandbox] 1 empty samples skipped while labelling\n"


def _gold(row_prompt, text_messages) -> float:
    return world.gold_reward(row_prompt[0]["content"], text_messages[0]["content"])


def test_label_samples_noiseless_labels_follow_gold(capsys: pytest.CaptureFixture) -> None:
    prompts, groups, rows = _labelled()
    for row in rows["pairs"]:
        gc, gr = _gold(row["prompt"], row["chosen"]), _gold(row["prompt"], row["rejected"])
        assert gc > gr
        assert (row["gold_chosen"], row["gold_rejected"]) == (gc, gr)
    by_prompt = {p[0]["content"]: [t for t in g if t] for p, g in zip(prompts, groups)}
    for row in rows["pairs"]:  # the pair is made of the first two samples
        assert {row["chosen"][0]["content"], row["rejected"][0]["content"]} == set(by_prompt[row["prompt"][0]
                                                                                             ["content"]][:2])
    for row in rows["rankings"]:
        gold = [_gold(row["prompt"], r) for r in row["responses"]]
        assert row["gold"] == gold
        assert row["ranking"] == sorted(range(len(gold)), key=lambda i: -gold[i])
        assert sorted(row["ranking"]) == list(range(len(gold)))
    for row in rows["negatives"]:
        golds = [world.gold_reward(row["prompt"][0]["content"], t) for t in by_prompt[row["prompt"][0]["content"]]]
        assert row["gold"] == min(golds) == _gold(row["prompt"], row["rejected"])
    unpaired: dict[str, list[dict]] = {}
    for row in rows["unpaired"]:
        unpaired.setdefault(row["prompt"][0]["content"], []).append(row)
    for prompt, items in unpaired.items():
        gold = [_gold(r["prompt"], r["completion"]) for r in items]
        assert [r["gold"] for r in items] == gold
        median = statistics.median(gold)
        assert [r["label"] for r in items] == [g >= median for g in gold]
        assert sum(r["label"] for r in items) == 2  # distinct gold: top 2 of 4, and top 2 of 3
    for row in rows["scored"]:
        texts = [r[0]["content"] for r in row["responses"]]
        objectives = [world.gold_objectives(row["prompt"][0]["content"], t) for t in texts]
        assert row["scores"] == {k: [o[k] for o in objectives] for k in world.OBJECTIVES}
    for row in rows["annotators"]:
        group = row["gold_group"]
        assert row["annotator"].startswith(group + "-")
        assert row["annotator"] in {f"{g}-{i:02d}" for g in ("warm", "terse") for i in range(5)}
        prompt = row["prompt"][0]["content"]
        gc = world.gold_reward(prompt, row["chosen"][0]["content"], group)
        gr = world.gold_reward(prompt, row["rejected"][0]["content"], group)
        assert gc >= gr
    assert {row["gold_group"] for row in rows["annotators"]} == {"warm", "terse"}


def test_label_samples_is_seeded() -> None:
    prompts, groups = _hand_made()
    noisy = SandboxSpec(seed=3, samples_per_prompt=K, label_noise=1.0)
    assert label_samples(prompts, groups, noisy) == label_samples(prompts, groups, noisy)
    flipped = label_samples(prompts, groups, noisy)["pairs"]
    # with noise 1.0 some pairs go against the gold order (a noiseless labeller never does)
    assert any(r["gold_chosen"] < r["gold_rejected"] for r in flipped)


EXPECTED_KINDS = {"pairs": "pairs", "rankings": "ranked", "unpaired": "unpaired", "negatives": "unpaired",
                  "scored": "scored", "annotators": "pairs"}


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_label_outputs_load_as_records(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, _, rows = _labelled()
    path = tmp_path / f"{name}.jsonl"
    write_jsonl(path, rows[name])
    records, report = load_records(path)
    assert len(records) == len(rows[name]) and report.loaded == len(rows[name])
    assert not report.dropped
    assert {r.kind for r in records} == {EXPECTED_KINDS[name]}
    for record, row in zip(records, rows[name]):
        assert record.prompt == row["prompt"]
        if name == "negatives":
            assert record.labels == [False] and record.responses == [row["rejected"]]
        elif name == "unpaired":
            assert record.labels == [row["label"]] and record.metadata == {"gold": row["gold"]}
        elif name == "rankings":
            assert record.ranking == row["ranking"] and record.metadata == {"gold": row["gold"]}
        elif name == "scored":
            assert record.scores == row["scores"] and record.ranking is None
        else:
            assert record.chosen == row["chosen"] and record.rejected == row["rejected"]
    if name == "annotators":
        ids = {r.annotator for r in records}
        assert all(i is not None for i in ids)
        assert {i.split("-")[0] for i in ids} == {"warm", "terse"}
        assert all(r.metadata == {"gold_group": r.annotator.split("-")[0]} for r in records)
    if name == "pairs":
        assert all(set(r.metadata) == {"gold_chosen", "gold_rejected"} for r in records)
