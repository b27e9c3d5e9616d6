"""The `run` kind: another finished run's specialist as a baseline, served by its own kind and
its own recipe (prompt format, serving form, dtype), on this evaluation's test items.

It lets one report hold several specialists, for example a MiniLM classifier, a SmolLM2 LoRA
specialist and a general model. The other run must have been trained on the same prepared data
(same fingerprint, so no test item was in its training rows) for the same task and labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.recipe import Recipe, load_recipe
from finetune.runs import data_fingerprint, is_complete
from finetune.systems.base import SPECIALIST, Context, Kind, Loaded, Plan, System
from finetune.systems.common import parameter_sizes


class OtherRun(Kind):
    """The `Kind` of a `run:` baseline; its key is `run:<baseline name>`. The other run's own
    kind loads and plans it; `kind_of(key, run_dir)` names that kind (the registry hands in
    its own, so a kind never imports the registry)."""

    name = "run"
    baseline_field = "run"

    def __init__(self, kind_of: Callable[[str, Path], Kind]) -> None:
        self.kind_of = kind_of

    def load(self, recipe: Recipe, run_dir: Path, key: str) -> Loaded:
        other_dir, other = _other(recipe, run_dir, key)
        inner = self.kind_of(SPECIALIST, other_dir)
        loaded = inner.load(other, other_dir, SPECIALIST)
        return Loaded(
            loaded.model,
            loaded.tokenizer,
            f"{loaded.description} (run {other_dir})",
            self,
            loaded.disk_bytes,
            loaded.serving,
            # Not the inner Loaded itself: it would keep the model alive after the pool frees it.
            identity=(inner, loaded.identity, other, other_dir),
            trained_in=other_dir,
        )

    def plan(
        self, recipe: Recipe, system: System, key: str, loaded: Loaded, context: Context
    ) -> Plan:
        inner, identity, other, other_dir = loaded.identity
        own = Context(other_dir, context.items, context.train_rows)
        view = dataclasses.replace(loaded, kind=inner, identity=identity)
        # The inner kind plans its run's specialist; the instance in this evaluation is `key`
        # (timing and memory load it by the plan's key, and `specialist` is this run's own).
        return dataclasses.replace(inner.plan(other, system, SPECIALIST, view, own), key=key)

    def sizes(self, model: Any) -> tuple[int, int, int]:
        return parameter_sizes(model)

    def instance_bytes(self, recipe: Recipe, key: str) -> int | None:
        other_dir = _baseline_dir(recipe, key)
        other = _recipe_of(other_dir)
        return self.kind_of(SPECIALIST, other_dir).instance_bytes(other, SPECIALIST)


def _baseline_dir(recipe: Recipe, key: str) -> Path:
    name = key.removeprefix("run:")
    (baseline,) = [b for b in recipe.eval.baselines if b.name == name]
    return Path(baseline.run)


def _recipe_of(run_dir: Path) -> Recipe:

    return load_recipe(run_dir / "recipe.yaml")


def _other(recipe: Recipe, run_dir: Path, key: str) -> tuple[Path, Recipe]:
    """The other run's directory and recipe, checked against this run: finished, same data, same task."""

    other_dir = _baseline_dir(recipe, key)
    if not is_complete(other_dir):
        raise FinetuneError(f"eval.baselines: {other_dir} is not a finished training run")
    other = _recipe_of(other_dir)
    mine, theirs = _fingerprint(run_dir), _fingerprint(other_dir)
    problems = []
    if mine != theirs:
        problems.append(f"prepared data {theirs[:12]} against {mine[:12]}")
    for field in ("type", "labels"):
        a, b = getattr(recipe.task, field), getattr(other.task, field)
        if a != b:
            problems.append(f"task.{field} {b!r} against {a!r}")
    if problems:
        raise FinetuneError(
            f"eval.baselines: run {other_dir} cannot be compared with run {run_dir}: "
            f"{'; '.join(problems)}. A run baseline must be trained on the same prepared data "
            "for the same task"
        )
    return other_dir, other


def _fingerprint(run_dir: Path) -> str:

    return data_fingerprint(run_dir) or ""
