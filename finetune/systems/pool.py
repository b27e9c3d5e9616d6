"""Loaded instances: one for a single use (`loaded_model`), or as many kept loaded at once as
memory allows (`ModelPool`), so that timing rounds can interleave systems while the rest
load afresh for each use."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.hardware import free_memory, to_accelerator
from finetune.recipe import Recipe
from finetune.systems.base import Loaded
from finetune.systems.registry import kind_of

log = logging.getLogger(__name__)
# Instances stay loaded for the timing rounds while their weights fit in this share of the
# memory still free: the rest is left for activations and for the instances that load per use.
RESIDENT_SHARE = 0.5


@contextlib.contextmanager
def loaded_model(recipe: Recipe, run_dir: Path, key: str) -> Iterator[Loaded]:
    """Load one instance for inference and free it afterwards."""
    loaded = kind_of(key, run_dir, recipe).load(recipe, run_dir, key)
    loaded.model = to_accelerator(loaded.model)
    try:
        yield loaded
    finally:
        del loaded.model
        gc.collect()


class ModelPool:
    """Instances kept loaded across timing rounds, as many as memory allows (specialist first);
    `use(key)` gives a kept instance, or loads one that was not kept and frees it afterwards."""

    def __init__(self, recipe: Recipe, run_dir: Path, keys: list[str]) -> None:
        self.recipe, self.run_dir, self.keys = recipe, run_dir, keys
        self.resident: dict[str, Loaded] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ModelPool:
        for key in self.keys:
            need = kind_of(key, self.run_dir, self.recipe).instance_bytes(self.recipe, key)
            free, _ = free_memory()
            if need is not None and need <= RESIDENT_SHARE * free:
                self.resident[key] = self._stack.enter_context(
                    loaded_model(self.recipe, self.run_dir, key)
                )
            else:
                log.info("%s does not stay loaded for timing: it loads again for each round", key)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.resident.clear()
        self._stack.close()

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[Loaded]:
        if key in self.resident:
            yield self.resident[key]
            return
        with loaded_model(self.recipe, self.run_dir, key) as loaded:
            yield loaded
