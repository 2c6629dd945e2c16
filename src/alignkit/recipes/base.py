"""The recipe registry: what a recipe is, and the table :mod:`alignkit.recipes.runner` dispatches on.

A recipe says what is trained on what: it loads data and models, builds an objective and hands it to the one
training loop (:func:`alignkit.engine.loop.train_loop`). Each recipe is one module of this package that ends with
``register_recipe(Recipe(...))``; the runner imports them all. Recipes never import each other: what two of them
share lives in :mod:`alignkit.recipes.common`.

A new recipe (say ``recipe: my_method``) is a file ``recipes/my_method.py`` with a ``run(config, on_step, on_log)``
(the hooks of :func:`alignkit.recipes.train`, handed to the loop) that returns the loop's
:class:`~alignkit.engine.loop.TrainResult`, a ``check(config)`` raising
:class:`~alignkit.config.ConfigError` for settings it cannot honour (called before anything loads), and ``reads``:
the recipe-specific settings it uses (a setting some recipe lists and this one does not is refused when set), plus
one import line in :mod:`alignkit.recipes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from alignkit.config import TrainConfig
from alignkit.utils.names import did_you_mean

OnStep = Callable[[int, Any], None]
OnLog = Callable[[dict[str, Any]], None]


def no_checks(config: TrainConfig) -> None:
    """A recipe without settings of its own to check."""


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str                                   # one line for `alignkit methods` and `alignkit train --help`
    run: Callable[[TrainConfig, OnStep | None, OnLog | None], Any]
    check: Callable[[TrainConfig], None] = no_checks
    reads: tuple[str, ...] = ()    # recipe-specific settings: "loss", "online.method", or a whole section "rl.*"
    distributed: tuple[str, ...] = ("ddp",)        # parallel strategies it supports (ddp, fsdp, deepspeed)
    compiles: bool = False                         # supports compile=true (torch.compile of the decoder layers)
    outputs: tuple[str, ...] = ()  # files it writes in output_dir besides the loop's (their orphans are removed)
    # local model directories it loads besides model.path / model.tokenizer / reference.path: (path, config key)
    model_paths: Callable[[TrainConfig], list[tuple[str, str]]] = lambda config: []

    def reads_setting(self, key: str) -> bool:
        section = key.split(".", 1)[0]
        return key in self.reads or f"{section}.*" in self.reads


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe '{recipe.name}' is already registered")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"{name!r} is not one of {', '.join(RECIPES)}{did_you_mean(name, RECIPES)}")
    return RECIPES[name]
