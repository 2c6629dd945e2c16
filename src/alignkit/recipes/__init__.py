"""Recipes: what is trained on what (sft, preference, reward, online, rl), one module each, and the runner that
checks a configuration against its recipe and runs it. See :mod:`alignkit.recipes.runner`. Importing this package
registers every recipe (one module each, like the loss families of :mod:`alignkit.losses`)."""

# each import registers a recipe, in this order (the order of `alignkit methods` and of messages naming recipes)
from alignkit.recipes import sft, preference, reward, online, rl  # noqa: F401, I001
from alignkit.recipes.base import RECIPES, Recipe, get_recipe, register_recipe
from alignkit.recipes.runner import check_config, load_config, train

__all__ = ["RECIPES", "Recipe", "check_config", "get_recipe", "load_config", "register_recipe", "train"]
