"""Recipes: the typed schema (`schema`) and the loader that validates files against it (`load`)."""

from finetune.recipe.load import Problem, RecipeError, load_recipe, recipe_to_dict
from finetune.recipe.schema import Recipe

__all__ = ["Problem", "Recipe", "RecipeError", "load_recipe", "recipe_to_dict"]
