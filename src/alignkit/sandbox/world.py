"""The sandbox world: a tiny synthetic language with a known gold reward.

Prompts ask about things from one of eight topics ("tell me about the harbour ."). Responses are short
sentences built from topic nouns, sentiment adjectives, politeness markers, fillers and a few banned words.
Because every word belongs to a known class, the gold objectives below are exact functions of the text:

=============  =================================================================  ======
objective      definition (words w of the response, prompt topic T)               range
=============  =================================================================  ======
on_topic       share of the response's nouns that belong to T (0 if no nouns)      [0, 1]
positive       (#positive - #negative adjectives) / max(1, #sentiment adjectives)  [-1, 1]
polite         min(1, #politeness markers / 2)                                     [0, 1]
concise        max(0, 1 - max(0, #words - 12) / 16) - 0.5 * share of fillers       [-0.5, 1]
safe           0 if any banned word appears, else 1                                {0, 1}
=============  =================================================================  ======

The gold total is a weighted sum (:data:`GOLD_WEIGHTS`). Two annotator groups weight the objectives
differently (:data:`GROUP_WEIGHTS`): "warm" annotators care about tone, "terse" ones about focus and length.

:class:`Writer` is the stochastic "pre-alignment" author whose texts form the SFT corpus: each response
draws a latent style (how on-topic, how positive, how polite, how wordy, how rude), so the SFT policy
learns to produce responses that vary in every objective — there is something for alignment to move.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

TOPICS: dict[str, list[str]] = {
    "food": ["soup", "bread", "cheese", "pasta", "salad", "pie", "curry", "noodles", "rice", "cake", "apple", "tea"],
    "travel": ["harbour", "train", "airport", "hotel", "beach", "island", "map", "ticket", "road", "ferry",
               "museum", "village"],
    "music": ["guitar", "piano", "song", "drum", "violin", "choir", "melody", "concert", "album", "rhythm",
              "chord", "opera"],
    "sports": ["football", "tennis", "match", "race", "goal", "team", "stadium", "bicycle", "swim", "coach",
               "medal", "marathon"],
    "weather": ["rain", "storm", "cloud", "sunshine", "snow", "wind", "fog", "thunder", "frost", "breeze",
                "rainbow", "season"],
    "books": ["novel", "poem", "author", "chapter", "library", "story", "page", "poet", "fable", "diary",
              "legend", "essay"],
    "garden": ["rose", "tulip", "hedge", "lawn", "seed", "tree", "orchard", "fern", "pond", "daisy",
               "compost", "bee"],
    "tech": ["laptop", "robot", "phone", "server", "code", "screen", "keyboard", "network", "chip", "battery",
             "camera", "printer"],
}
POSITIVE = ["great", "lovely", "wonderful", "bright", "pleasant", "fantastic", "delightful", "excellent",
            "charming", "superb", "cheerful", "brilliant"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "gloomy", "poor", "dreadful", "messy", "bland", "grim",
            "nasty", "tedious"]
NEUTRAL = ["big", "small", "old", "new", "long", "short", "green", "quiet", "busy", "simple", "local", "usual"]
POLITE = ["please", "thanks", "kindly", "gladly", "certainly", "welcome"]
FILLERS = ["um", "well", "like", "basically", "actually", "anyway", "honestly", "literally"]
BANNED = ["stupid", "idiot", "dumb", "damn", "crap"]
FUNCTION = ["the", "a", "is", "was", "and", "with", "very", "quite", "it", "this", "of", "for", "in", "i",
            "you", "think", "find", "feel", "my", "your", "about", "me", "tell", "describe", "what", "do",
            "hope", "helps", "here", "some", "can", "to", "glad", "help", "so", "also", "really", "hey",
            "could", "write", "words", "on", "sure", "."]

NOUN_TOPIC = {noun: topic for topic, nouns in TOPICS.items() for noun in nouns}
OBJECTIVES = ("on_topic", "positive", "polite", "concise", "safe")
GOLD_WEIGHTS = {"on_topic": 1.0, "positive": 1.0, "polite": 0.5, "concise": 0.5, "safe": 1.0}
GROUP_WEIGHTS = {
    "warm": {"on_topic": 0.5, "positive": 1.5, "polite": 1.5, "concise": 0.0, "safe": 1.0},
    "terse": {"on_topic": 1.5, "positive": 0.25, "polite": 0.0, "concise": 1.5, "safe": 1.0},
}
CONCISE_WORDS = 12


def vocabulary() -> list[str]:
    """Every word of the language (a few hundred)."""
    words = [n for nouns in TOPICS.values() for n in nouns] + list(TOPICS)
    words += POSITIVE + NEGATIVE + NEUTRAL + POLITE + FILLERS + BANNED + FUNCTION + [","]
    return sorted(set(words))


def prompt_topic(prompt: str) -> str | None:
    """The topic a prompt asks about: the topic of its first known noun."""
    for word in prompt.split():
        if word in NOUN_TOPIC:
            return NOUN_TOPIC[word]
    return None


def gold_objectives(prompt: str, response: str) -> dict[str, float]:
    """Exact per-objective gold scores of a response (see the module table)."""
    words = response.split()
    topic = prompt_topic(prompt)
    nouns = [NOUN_TOPIC[w] for w in words if w in NOUN_TOPIC]
    pos = sum(w in POSITIVE for w in words)
    neg = sum(w in NEGATIVE for w in words)
    n_words = sum(w not in {".", ","} for w in words)
    fillers = sum(w in FILLERS for w in words)
    return {
        "on_topic": sum(t == topic for t in nouns) / len(nouns) if nouns else 0.0,
        "positive": (pos - neg) / max(1, pos + neg),
        "polite": min(1.0, sum(w in POLITE for w in words) / 2),
        "concise": max(0.0, 1 - max(0, n_words - CONCISE_WORDS) / 16) - 0.5 * fillers / max(1, n_words),
        "safe": 0.0 if any(w in BANNED for w in words) else 1.0,
    }


def weighted(objectives: dict[str, float], weights: dict[str, float] | None = None) -> float:
    weights = GOLD_WEIGHTS if weights is None else weights
    return sum(weights[k] * objectives[k] for k in weights)


def gold_reward(prompt: str, response: str, group: str | None = None) -> float:
    """Gold total reward, with the overall weights or those of an annotator group."""
    return weighted(gold_objectives(prompt, response), GROUP_WEIGHTS[group] if group else None)


def bt_prefers_first(r_a: float, r_b: float, noise: float, rng: random.Random) -> bool:
    """Bradley-Terry label: P(a preferred) = sigmoid((r_a - r_b) / noise); noise 0 means noiseless."""
    if noise <= 0:
        return r_a > r_b if r_a != r_b else rng.random() < 0.5
    z = (r_a - r_b) / noise
    return rng.random() < 1 / (1 + math.exp(-max(-50.0, min(50.0, z))))


# --------------------------------------------------------------------------------------- text generation
PROMPT_FORMS = [
    "tell me about the {n} .", "describe the {n} .", "what do you think about the {n} .",
    "write some words about the {n} .", "could you tell me about the {n} .", "hey , describe the {n} please .",
]


def make_prompt(rng: random.Random) -> str:
    topic = rng.choice(sorted(TOPICS))
    return rng.choice(PROMPT_FORMS).format(n=rng.choice(TOPICS[topic]))


@dataclass
class Style:
    """Latent style of one response written by the pre-alignment :class:`Writer`."""

    on_topic: float
    positive: float
    polite: float
    fillers: float
    rude: float
    clauses: int


class Writer:
    """A stochastic author: each response draws a style, then words according to it."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def style(self) -> Style:
        r = self.rng
        return Style(on_topic=r.random(), positive=r.random(), polite=r.random() ** 1.5,
                     fillers=0.35 * r.random() ** 2, rude=0.25 if r.random() < 0.3 else 0.0,
                     clauses=r.randint(1, 5))

    def clause(self, topic: str, s: Style) -> list[str]:
        r = self.rng
        noun_topic = topic if r.random() < s.on_topic else r.choice([t for t in TOPICS if t != topic])
        noun = r.choice(TOPICS[noun_topic])
        roll = r.random()
        adj_pool = NEUTRAL if roll < 0.2 else (POSITIVE if r.random() < s.positive else NEGATIVE)
        adj = r.choice(adj_pool)
        form = r.randrange(4)
        words = {0: ["the", noun, "is", adj], 1: ["i", "find", "the", noun, "quite", adj],
                 2: ["a", adj, noun, "is", "here"], 3: ["the", noun, "was", "very", adj]}[form]
        if r.random() < s.rude:
            words.insert(1 if words[0] in {"the", "a"} else 0, r.choice(BANNED))
        if r.random() < s.fillers:
            words.insert(0, r.choice(FILLERS))
        return words

    def response(self, prompt: str) -> str:
        r, s = self.rng, self.style()
        topic = prompt_topic(prompt) or r.choice(sorted(TOPICS))
        words: list[str] = []
        if r.random() < s.polite:
            words += r.choice([["thanks", ","], ["gladly", ","], ["certainly", ","], ["sure", ","]])
        for i in range(s.clauses):
            if i:
                words += [r.choice(["and", ",", "."])]
            words += self.clause(topic, s)
        if r.random() < s.polite:
            words += [".", r.choice(["hope", "glad"]), r.choice(["this", "to"]), "helps", ",",
                      r.choice(["thanks", "kindly", "welcome"])]
        return " ".join(words + ["."])
