"""Recipes: what is trained on what (sft, preference, reward, online, rl), one module each, and the runner that
checks a configuration against its recipe and runs it. See :mod:`alignkit.recipes.runner`. Importing this package
registers every recipe (one module each, like the loss families of :mod:`alignkit.losses`)."""

from alignkit.recipes import online, preference, reward, rl, sft  # noqa: F401  (each import registers a recipe)
from alignkit.recipes.base import RECIPES, Recipe, get_recipe, register_recipe
from alignkit.recipes.runner import check_config, load_config, train

__all__ = ["RECIPES", "Recipe", "check_config", "get_recipe", "load_config", "register_recipe", "train"]
