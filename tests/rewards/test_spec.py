"""The one spec grammar (alignkit.rewards.spec): every form parses to the expected RewardSpec, malformed specs are
the existing one-line errors, and a kind registered by a test is usable through get_reward_source and get_judge."""

from __future__ import annotations

import numpy as np
import pytest

import alignkit.rewards.spec as spec_module
from alignkit.rewards.base import SourceJudge
from alignkit.rewards.judges import JUDGE_HELP, get_judge
from alignkit.rewards.sources import (
    BradleyTerryPreference,
    Rewards,
    available_sources_help,
    get_preference_source,
    get_reward_source,
)
from alignkit.rewards.spec import (
    Options,
    RewardSpec,
    UnknownSpec,
    parse_spec,
    register_reward_kind,
    reward_kinds,
    unregister_reward_kind,
)
from alignkit.sandbox import world


# ------------------------------------------------------------------------------------------------ every form
@pytest.mark.parametrize("text, expected", [
    ("sandbox-gold", RewardSpec("sandbox-gold", "sandbox-gold")),
    ("  sandbox-gold  ", RewardSpec("sandbox-gold", "sandbox-gold")),
    ("sandbox-gold-warm", RewardSpec("sandbox-gold-warm", "sandbox-gold", "warm")),
    ("sandbox-gold-", RewardSpec("sandbox-gold-", "sandbox-gold", "")),        # the kind says the group is bad
    ("rm:/m", RewardSpec("rm:/m", "rm", "/m")),
    ("rm:/m#min", RewardSpec("rm:/m#min", "rm", "/m", (("min", None),))),
    ("rm:/m#mean", RewardSpec("rm:/m#mean", "rm", "/m", (("mean", None),))),
    ("rm:/m#uwo=0.5", RewardSpec("rm:/m#uwo=0.5", "rm", "/m", (("uwo", 0.5),))),
    ("rm:/m#group=warm, min", RewardSpec("rm:/m#group=warm, min", "rm", "/m", (("group", "warm"), ("min", None)))),
    ("rm:/m#", RewardSpec("rm:/m#", "rm", "/m")),
    ("llm:/judge", RewardSpec("llm:/judge", "llm", "/judge")),
    ("llm:/a#b", RewardSpec("llm:/a#b", "llm", "/a#b")),                     # llm: declares no options
    ("verify:max_words=12;include=please", RewardSpec("verify:max_words=12;include=please", "verify",
                                                      "max_words=12;include=please")),
    ("verify:regex=^#", RewardSpec("verify:regex=^#", "verify", "regex=^#")),  # '#' stays in the constraint
    ("verify:", RewardSpec("verify:", "verify", "")),
    ("pairwise:llm:/judge", RewardSpec("pairwise:llm:/judge", "pairwise", "llm:/judge",
                                       inner=RewardSpec("llm:/judge", "llm", "/judge"))),
])
def test_each_form_parses(text, expected) -> None:
    assert parse_spec(text) == expected


def test_weighted_mapping_parses_members_in_order() -> None:
    parsed = parse_spec({"sandbox-gold": 2, " rm:/m#min": -0.5})
    assert parsed.kind == "weighted" and parsed.text == "2*sandbox-gold + -0.5* rm:/m#min"
    assert parsed.members == (("sandbox-gold", 2.0, RewardSpec("sandbox-gold", "sandbox-gold")),
                              (" rm:/m#min", -0.5, RewardSpec("rm:/m#min", "rm", "/m", (("min", None),))))
    assert parse_spec({"sandbox-gold": "1.5"}).members[0][1] == 1.5                     # a weight may be text


def test_option_lookup_takes_the_last_value() -> None:
    parsed = parse_spec("rm:/m#min,uwo=2,group=warm,mean")
    assert parsed.option("uwo") == 2.0 and parsed.option("group") == "warm" and parsed.option("x", 7) == 7
    assert [key for key, _ in parsed.options] == ["min", "uwo", "group", "mean"]


def test_grammar_docstring_names_every_built_in_form() -> None:
    doc = spec_module.__doc__
    for form in ("``sandbox-gold``", "``sandbox-gold-<group>``", "``rm:PATH``", "``rm:PATH#min``",
                 "``rm:PATH#uwo=L``", "``rm:PATH#group=NAME``", "``llm:PATH``", "``verify:CONSTRAINTS``",
                 "``pairwise:llm:PATH``", "``{spec: weight, ...}``"):
        assert form in doc, form
    assert [row["name"] for row in reward_kinds()][:4] == ["sandbox-gold", "rm", "llm", "verify"]


# ------------------------------------------------------------------------------------------------ malformed specs
@pytest.mark.parametrize("spec, error, message", [
    ("rm:", ValueError, "'rm:' names no reward-model directory (rm:PATH)"),
    ("rm:#min", ValueError, "'rm:#min' names no reward-model directory (rm:PATH)"),
    ("llm:", ValueError, "'llm:' names no model directory (llm:PATH)"),
    ("rm:/m#max", ValueError, "'rm:/m#max': unknown reward-model option 'max'; options: mean, min, uwo=L, "
                              "group=NAME (comma-separated)"),
    ("rm:/m#min=1", ValueError, "unknown reward-model option 'min=1'"),
    ("rm:/m#uwo", ValueError, "unknown reward-model option 'uwo'"),
    ("rm:/m#group=", ValueError, "unknown reward-model option 'group='"),
    ("rm:/m#uwo=a", ValueError, "'rm:/m#uwo=a': uwo must be a finite number, not 'a'"),
    ("rm:/m#uwo=nan", ValueError, "uwo must be a finite number, not nan"),
    ("pairwise:sandbox-gold", ValueError, "'pairwise:sandbox-gold': only pairwise:llm:PATH compares two responses"),
    ("pairwise:llm:", ValueError, "only pairwise:llm:PATH compares two responses"),
    ("pairwise:gpt", ValueError, "only pairwise:llm:PATH compares two responses"),
    ("gpt-4", KeyError, "unknown reward source 'gpt-4'; reward sources: sandbox-gold"),
    ("sandbox-gld", KeyError, "unknown reward source 'sandbox-gld' (did you mean 'sandbox-gold'?)"),
    ("sandbox-gold:warm", KeyError, "unknown reward source 'sandbox-gold:warm'"),
    ({}, ValueError, "an empty dict is no reward source; reward sources:"),
    ({1: 1.0}, ValueError, "weighted reward source keys are spec strings, not 1"),
    ({"sandbox-gold": "heavy"}, ValueError, "the weight of 'sandbox-gold' must be a finite number, not 'heavy'"),
    ({"sandbox-gold": True}, ValueError, "the weight of 'sandbox-gold' must be a finite number, not True"),
    ({"sandbox-gold": 1.0, "gpt": 1.0}, KeyError, "unknown reward source 'gpt'"),
    (3, ValueError, "a reward source spec is a string or a dict {spec: weight}, not 3"),
])
def test_malformed_specs_are_one_line_errors(spec, error, message) -> None:
    with pytest.raises(error) as info:
        parse_spec(spec)
    text = info.value.args[0]
    assert message in text and "\n" not in text


def test_unknown_spec_is_a_key_error_and_suggests_rm_or_llm_for_a_directory(tmp_path) -> None:
    with pytest.raises(UnknownSpec) as info:
        parse_spec(str(tmp_path))
    assert isinstance(info.value, KeyError) and info.value.spec == str(tmp_path)
    assert f"(did you mean 'rm:{tmp_path}' for a reward model or 'llm:{tmp_path}' for an LLM judge?)" in \
        info.value.args[0]


def test_judge_errors_keep_their_words() -> None:
    with pytest.raises(KeyError) as info:
        get_judge("gpt-judge")
    assert info.value.args[0] == f"unknown judge 'gpt-judge'; available: {JUDGE_HELP}"
    assert JUDGE_HELP == ("sandbox-gold, sandbox-gold-<group>, rm:PATH (reward model), llm:PATH (local causal LM) "
                          "or verify:CONSTRAINTS (constraint satisfaction rate, e.g. "
                          "verify:max_words=12;include=please)")
    with pytest.raises(ValueError, match="use get_preference_source"):
        get_reward_source("pairwise:sandbox-gold")           # rewards refuses any pairwise: spec first
    with pytest.raises(KeyError, match="unknown sandbox annotator group 'cold' in 'sandbox-gold-cold'"):
        get_judge("sandbox-gold-cold")


# ------------------------------------------------------------------------------------------------ an open registry
class ConstantSource:
    """Rewards every response with one number (times ``scale``); components: the response's length."""

    objectives = ("length",)

    def __init__(self, value: float, name: str):
        self.value, self.name = value, name

    def rewards(self, prompts, responses, metadata=None) -> Rewards:
        return Rewards(np.full(len(responses), self.value), {"length": [len(r) for r in responses]})


@pytest.fixture
def constant_kind():
    """``const:VALUE[#scale=S]``, registered for one test (its own judge: none, so the source is scored)."""
    built: list[tuple[str, object]] = []

    def source(spec: RewardSpec, device, cache):
        built.append((spec.text, device))
        return ConstantSource(float(spec.argument) * spec.option("scale", 1.0), spec.text)

    register_reward_kind("const", source, help="const:VALUE (a constant reward)", paper="none",
                         argument="value", options=Options({"scale": "number"}, usage="scale=S", noun="constant"),
                         usage="const:VALUE", example="const:1#scale=2", summary="a constant reward")
    yield built
    unregister_reward_kind("const")


def test_a_registered_kind_is_a_reward_source_a_preference_and_a_judge(constant_kind) -> None:
    prompts, responses = ["describe the rose ."] * 2, ["the rose .", "the rose is lovely ."]
    source = get_reward_source("const:1.5#scale=2", device="cpu")
    np.testing.assert_array_equal(source.rewards(prompts, responses).total, [3.0, 3.0])
    assert constant_kind == [("const:1.5#scale=2", "cpu")]

    mixed = get_reward_source({"const:1": 2.0, "sandbox-gold": 1.0})
    expected = [2.0 + world.gold_reward(p, r) for p, r in zip(prompts, responses)]
    np.testing.assert_allclose(mixed.rewards(prompts, responses).total, expected)
    assert "const:1/length" in mixed.rewards(prompts, responses).components

    preference = get_preference_source("const:4")
    assert isinstance(preference, BradleyTerryPreference)
    np.testing.assert_array_equal(preference.win_probability(prompts[:1], responses[:1], responses[1:]), [0.5])

    judge = get_judge("const:2")
    assert isinstance(judge, SourceJudge) and judge.name == "const:2" and judge.objectives == ("length",)
    scores = judge.score(prompts, responses)
    np.testing.assert_array_equal(scores["total"], [2.0, 2.0])
    np.testing.assert_array_equal(scores["length"], [len(r) for r in responses])

    assert "const:VALUE (a constant reward)" in available_sources_help()
    assert {"name": "const", "usage": "const:VALUE", "summary": "a constant reward", "example": "const:1#scale=2",
            "paper": "none", "stability": "stable", "compares": "no"} in reward_kinds()
    with pytest.raises(ValueError, match="'const:1#x': unknown constant option 'x'; options: scale=S"):
        get_reward_source("const:1#x")
    with pytest.raises(ValueError, match="'const:' names no value"):
        get_judge("const:")


def test_a_registered_kind_with_its_own_judge_gets_mode_and_options() -> None:
    seen = []

    class Comparer:
        name = "cmp"

        def __init__(self, mode):
            self.mode = mode

        def compare(self, prompts, first, second):
            return ["A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie" for a, b in zip(first, second)]

    def judge(spec, mode="pointwise", **options):
        seen.append((spec.text, mode, options))
        return Comparer(mode)

    register_reward_kind("cmp", lambda spec, device, cache: ConstantSource(0.0, spec.text), judge=judge,
                         form="name", compares=True, help="cmp")
    try:
        assert get_judge("cmp", mode="pairwise", template="T").mode == "pairwise"
        assert seen[-1] == ("cmp", "pairwise", {"template": "T"})
        preference = get_preference_source("pairwise:cmp")
        assert seen[-1] == ("cmp", "pairwise", {})
        np.testing.assert_array_equal(preference.win_probability(["q"] * 2, ["long", "a"], ["a", "long"]), [1.0, 0.0])
        assert "pairwise:llm:PATH (a local LLM judge comparing both orders) or pairwise:cmp" in available_sources_help()
    finally:
        unregister_reward_kind("cmp")
    with pytest.raises(ValueError, match="only pairwise:llm:PATH compares"):
        parse_spec("pairwise:cmp")


def test_the_longest_registered_name_wins() -> None:
    register_reward_kind("sandbox", lambda spec, device, cache: ConstantSource(0.0, spec.text), form="name",
                         suffix="variant")
    try:
        assert parse_spec("sandbox-gold-warm") == RewardSpec("sandbox-gold-warm", "sandbox-gold", "warm")
        assert parse_spec("sandbox-x") == RewardSpec("sandbox-x", "sandbox", "x")
    finally:
        unregister_reward_kind("sandbox")


@pytest.mark.parametrize("name", ["pairwise", "weighted", "a:b", "a#b", ""])
def test_reserved_or_malformed_kind_names_are_refused(name) -> None:
    with pytest.raises(ValueError, match="cannot name a reward kind"):
        register_reward_kind(name, lambda spec, device, cache: None)
