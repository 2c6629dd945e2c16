"""``alignkit sandbox build``: write the sandbox world to a directory, stage by stage, cached by seed.

Stages (each written atomically into its own directory with a ``stage.json`` key; rerunning with the same
seed and settings reuses it):

1. ``world``: prompts (train / held-out), the SFT corpus written by the pre-alignment :class:`Writer`,
   the BPE tokenizer and the randomly initialised base model (``base/``).
2. ``sft``: the base model fine-tuned on the corpus with alignkit's own SFT recipe (``sft/model``).
3. ``datasets``: K samples per training prompt from the SFT policy, labelled with the gold reward under
   Bradley-Terry noise, written in TRL formats: pairs, rankings, unpaired binary, negatives only,
   per-objective scores, and pairs from two annotator groups.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from alignkit.sandbox import world
from alignkit.sandbox.assets import build_model, build_tokenizer
from alignkit.utils.io import atomic_dir, write_jsonl


@dataclass
class SandboxSpec:
    seed: int = 0
    train_prompts: int = 2000
    eval_prompts: int = 300
    corpus_size: int = 6000
    sft_steps: int = 500
    sft_lr: float = 3e-3
    samples_per_prompt: int = 4
    label_noise: float = 0.1   # Bradley-Terry temperature on gold differences; 0 = noiseless
    annotators_per_group: int = 5
    max_new_tokens: int = 64


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _key(stage: str, spec: SandboxSpec, fields: tuple[str, ...]) -> str:
    data = {"stage": stage, "version": 1, **{f: getattr(spec, f) for f in fields}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _cached(path: Path, key: str) -> bool:
    marker = path / "stage.json"
    return marker.exists() and json.loads(marker.read_text()).get("key") == key


def _stage(path: Path, key: str, build: Callable[[Path], None], log: Callable[[str], None], name: str) -> Path:
    if _cached(path, key):
        log(f"[sandbox] {name}: cached ({path})")
        return path
    log(f"[sandbox] {name}: building ...")
    with atomic_dir(path) as tmp:
        build(tmp)
        (tmp / "stage.json").write_text(json.dumps({"key": key, "stage": name}))
    return path


# ------------------------------------------------------------------------------------------- stage 1
def build_world(tmp: Path, spec: SandboxSpec) -> None:
    rng = random.Random(spec.seed)
    writer = world.Writer(rng)
    train_prompts = [world.make_prompt(rng) for _ in range(spec.train_prompts)]
    eval_prompts = [world.make_prompt(rng) for _ in range(spec.eval_prompts)]
    corpus = []
    for _ in range(spec.corpus_size):
        prompt = world.make_prompt(rng)
        corpus.append({"prompt": user(prompt), "completion": assistant(writer.response(prompt))})
    tokenizer = build_tokenizer([r["prompt"][0]["content"] for r in corpus] +
                                [r["completion"][0]["content"] for r in corpus] + [" ".join(world.vocabulary())])
    (tmp / "data").mkdir()
    write_jsonl(tmp / "data" / "sft.jsonl", corpus)
    write_jsonl(tmp / "data" / "prompts_train.jsonl", [{"prompt": user(p)} for p in train_prompts])
    write_jsonl(tmp / "data" / "prompts_eval.jsonl", [{"prompt": user(p)} for p in eval_prompts])
    tokenizer.save_pretrained(tmp / "base")
    build_model(tokenizer, spec.seed).save_pretrained(tmp / "base", safe_serialization=True)


# ------------------------------------------------------------------------------------------- stage 2
def build_sft(tmp: Path, spec: SandboxSpec, world_dir: Path, progress: bool) -> None:
    from alignkit.recipes import load_config, train

    config = load_config(None, recipe="sft", model={"path": str(world_dir / "base")},
                         data={"path": str(world_dir / "data" / "sft.jsonl"), "max_length": 128,
                               "max_prompt_length": 32},
                         optim={"lr": spec.sft_lr, "warmup_ratio": 0.05, "schedule": "cosine"},
                         output_dir=str(tmp / "run"), batch_size=32, max_steps=spec.sft_steps, seed=spec.seed,
                         log_steps=25, resume="never", progress=progress)
    result = train(config)
    result.model_dir.rename(tmp / "model")


# ------------------------------------------------------------------------------------------- stage 3
def read_prompts(path: Path) -> list[Any]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def build_datasets(tmp: Path, spec: SandboxSpec, world_dir: Path, sft_dir: Path, progress: bool) -> None:
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.sampling.generate import SamplingConfig, generate

    model, tokenizer = load_causal_lm(str(sft_dir)), load_tokenizer(str(sft_dir))
    prompts = read_prompts(world_dir / "data" / "prompts_train.jsonl")
    k = spec.samples_per_prompt
    samples = generate(model, tokenizer, prompts, SamplingConfig(num_samples=k, max_new_tokens=spec.max_new_tokens,
                                                                 batch_size=256, seed=spec.seed),
                       progress=progress, desc="sampling SFT policy")
    groups = [[s.text for s in samples[i * k:(i + 1) * k]] for i in range(len(prompts))]
    rows = label_samples(prompts, groups, spec)
    for name, data in rows.items():
        write_jsonl(tmp / f"{name}.jsonl", data)
    (tmp / "README.md").write_text(DATASETS_README.format(k=k, noise=spec.label_noise,
                                                          counts=json.dumps({n: len(d) for n, d in rows.items()})))


DATASETS_README = """# Sandbox preference data
Labelled on {k} samples per prompt of the SFT policy with the exact gold reward under Bradley-Terry noise
(temperature {noise}). Rows per file: {counts}. Gold values are kept in `metadata`-style keys prefixed `gold_`.
"""


def label_samples(prompts: list[Any], groups: list[list[str]], spec: SandboxSpec) -> dict[str, list[dict]]:
    """Turn K samples per prompt into every data shape. Samples that are empty are skipped, and counted."""
    rng = random.Random(spec.seed + 1)
    out: dict[str, list[dict]] = {n: [] for n in ("pairs", "rankings", "unpaired", "negatives", "scored",
                                                   "annotators")}
    skipped = 0
    annotators = [f"{g}-{i:02d}" for g in world.GROUP_WEIGHTS for i in range(spec.annotators_per_group)]
    for prompt, texts in zip(prompts, groups):
        kept = [t for t in texts if t]
        skipped += len(texts) - len(kept)
        texts = kept
        if len(texts) < 2 or texts[0] == texts[1]:
            continue
        words = prompt[0]["content"]
        objectives = [world.gold_objectives(words, t) for t in texts]
        gold = [world.weighted(o) for o in objectives]
        first = world.bt_prefers_first(gold[0], gold[1], spec.label_noise, rng)
        w, l = (0, 1) if first else (1, 0)
        out["pairs"].append({"prompt": prompt, "chosen": assistant(texts[w]), "rejected": assistant(texts[l]),
                             "gold_chosen": gold[w], "gold_rejected": gold[l]})
        # Plackett-Luce with Gumbel noise is the K-way Bradley-Terry model.
        noisy = [g + (spec.label_noise * -math.log(-math.log(rng.random() or 1e-12)) if spec.label_noise else 0)
                 for g in gold]
        order = sorted(range(len(texts)), key=lambda i: -noisy[i])
        out["rankings"].append({"prompt": prompt, "responses": [assistant(t) for t in texts], "ranking": order,
                                "gold": gold})
        median = sorted(gold)[len(gold) // 2]
        for t, g, n in zip(texts, gold, noisy):
            out["unpaired"].append({"prompt": prompt, "completion": assistant(t), "label": bool(n >= median),
                                    "gold": g})
        out["negatives"].append({"prompt": prompt, "rejected": assistant(texts[order[-1]]), "gold": gold[order[-1]]})
        out["scored"].append({"prompt": prompt, "responses": [assistant(t) for t in texts],
                              "scores": {name: [o[name] for o in objectives] for name in world.OBJECTIVES}})
        annotator = rng.choice(annotators)
        group = annotator.split("-")[0]
        group_gold = [world.weighted(o, world.GROUP_WEIGHTS[group]) for o in objectives[:2]]
        first = world.bt_prefers_first(group_gold[0], group_gold[1], spec.label_noise, rng)
        w, l = (0, 1) if first else (1, 0)
        out["annotators"].append({"prompt": prompt, "chosen": assistant(texts[w]), "rejected": assistant(texts[l]),
                                  "annotator": annotator, "gold_group": group})
    if skipped:
        print(f"[sandbox] {skipped} empty samples skipped while labelling")
    return out


# ------------------------------------------------------------------------------------------------ entry
@dataclass
class SandboxPaths:
    root: Path
    world: Path
    sft: Path
    datasets: Path
    spec: SandboxSpec = field(default_factory=SandboxSpec)  # what it was built with (its seed names the draw)

    @property
    def base_model(self) -> Path:
        return self.world / "base"

    @property
    def sft_model(self) -> Path:
        return self.sft / "model"


def build(out: str | Path, spec: SandboxSpec | None = None, *, progress: bool = True,
          log: Callable[[str], None] = print) -> SandboxPaths:
    """Build (or reuse) every stage of the sandbox under ``out``."""
    spec = spec or SandboxSpec()
    root = Path(out)
    world_fields = ("seed", "train_prompts", "eval_prompts", "corpus_size")
    world_key = _key("world", spec, world_fields)
    sft_key = _key("sft", spec, world_fields + ("sft_steps", "sft_lr"))
    data_key = _key("datasets", spec, world_fields + ("sft_steps", "sft_lr", "samples_per_prompt", "label_noise",
                                                       "annotators_per_group", "max_new_tokens"))
    world_dir = _stage(root / "world", world_key, lambda t: build_world(t, spec), log, "world")
    sft_dir = _stage(root / "sft", sft_key, lambda t: build_sft(t, spec, world_dir, progress), log, "sft")
    data_dir = _stage(root / "datasets", data_key,
                      lambda t: build_datasets(t, spec, world_dir, sft_dir / "model", progress), log, "datasets")
    (root / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return SandboxPaths(root, world_dir, sft_dir, data_dir, spec)
