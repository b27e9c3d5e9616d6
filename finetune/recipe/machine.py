"""Checks of a valid recipe against the machine it is about to train on.

They run before the training stack is imported: PEFT imports bitsandbytes, which on some CPUs
asks the Hub for a kernel at import time, and a set-up this machine refuses should stop
before any of that starts.
"""

from __future__ import annotations

from pathlib import Path

from finetune.hardware import has_cuda
from finetune.recipe.load import Problem, RecipeError
from finetune.recipe.schema import Recipe


def check_trainable_here(recipe: Recipe, recipe_path: str | Path) -> None:
    """Refuse set-ups that cannot train on this machine before anything is loaded."""
    if recipe.model.quantization == "4bit" and not has_cuda():
        raise RecipeError(
            [
                Problem(
                    str(recipe_path),
                    "model.quantization",
                    "4-bit (QLoRA) training needs a CUDA GPU: on a CPU bitsandbytes computes no gradients "
                    "through 4-bit layers, so the adapters would silently never learn. Use quantization: 8bit "
                    "or none on this machine",
                )
            ]
        )
