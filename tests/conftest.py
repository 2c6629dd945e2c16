"""Shared fixtures: a tiny sandbox world (seconds) and a full small sandbox for behavioural tests (slow)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def pytest_addoption(parser):
    parser.addoption("--sandbox-seed", type=int, default=int(os.environ.get("ALIGNKIT_TEST_SEED", "0")),
                     help="seed of the sandbox draw the behaviour tests run on (the sandbox world, its SFT policy, "
                          "sampled data and the runs' own seeds); default $ALIGNKIT_TEST_SEED or 0. "
                          "`make test-seeds` runs the slow suite for seeds 0-4.")


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs 2 workers on 2 cores) each worker computes on one thread, and so do
    the processes tests start (the demo, multi-process runs): OMP_NUM_THREADS is inherited. Before, a subprocess took
    2 threads beside the other worker's one, and the demo test ran ~4x its standalone time."""
    if XDIST_WORKER:
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    """Tests that run on a sandbox draw (they use the ``sandbox`` or ``sandbox_seed`` fixture) are behaviour tests:
    ``-m behaviour`` selects them, as ``make test-seeds`` does for each seed."""
    for item in items:
        if {"sandbox", "sandbox_seed"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.behaviour)


@pytest.fixture(scope="session")
def sandbox_seed(pytestconfig) -> int:
    """The draw behaviour tests run on (``--sandbox-seed``): every behaviour claim must hold for seeds 0-4, since
    the sandbox's SFT weights, hence its sampled data and every run, change with float rounding between CPUs."""
    return pytestconfig.getoption("--sandbox-seed")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """Tokenizer, random-init base model and SFT corpus of a small sandbox (no training)."""
    from alignkit.apps.sandbox_build import SandboxSpec, build_world

    path = tmp_path_factory.mktemp("tiny_world")
    build_world(path, SandboxSpec(seed=0, corpus_size=600, train_prompts=100, eval_prompts=40))
    return path


@pytest.fixture(scope="session")
def tiny_pairs(tiny_world) -> Path:
    """64 conversational pairs written by the sandbox Writer, labelled by the gold reward (noiseless)."""
    from alignkit.sandbox import world
    from alignkit.apps.sandbox_build import assistant, user
    from alignkit.utils.io import write_jsonl

    rng = random.Random(1)
    writer = world.Writer(rng)
    rows = []
    while len(rows) < 64:
        prompt = world.make_prompt(rng)
        a, b = writer.response(prompt), writer.response(prompt)
        ra, rb = world.gold_reward(prompt, a), world.gold_reward(prompt, b)
        if ra == rb:
            continue
        chosen, rejected = (a, b) if ra > rb else (b, a)
        rows.append({"prompt": user(prompt), "chosen": assistant(chosen), "rejected": assistant(rejected)})
    path = tiny_world / "pairs.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory, sandbox_seed):
    """A full small sandbox: SFT policy and preference data sampled from it (about a minute).

    Built once per test run: xdist workers share one directory under a file lock (the build reuses finished
    stages), so the second worker loads what the first built."""
    from filelock import FileLock

    from alignkit.apps.sandbox_build import SandboxSpec, build

    spec = SandboxSpec(seed=sandbox_seed, train_prompts=1200, eval_prompts=200, corpus_size=4000, sft_steps=300,
                       samples_per_prompt=4)
    root = tmp_path_factory.getbasetemp()
    root = root.parent if XDIST_WORKER else root
    with FileLock(str(root / "sandbox.lock")):
        return build(root / f"sandbox-shared-{sandbox_seed}", spec, progress=False, log=lambda *_: None)
