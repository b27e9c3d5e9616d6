"""Items through a loaded system, planned and run as the evaluation runs its items: what
`finetune predict` writes, `finetune serve` answers and `finetune teach` labels with.

The kind's own plan and inference (`base.Kind.plan`), then the task's reading of each answer
(`tasks.types`): one row per item with its id, the answer under the task's name and the
system's details (a classifier's label probabilities among them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.data import load_split
from finetune.recipe import Recipe
from finetune.systems.base import Context, Loaded, System
from finetune.tasks.types import task_type


def context_for(recipe: Recipe, run_dir: Path, system: System) -> Context:
    """What the system plans with: its in-context examples come from the run's training rows
    as humans labelled them (never a teacher's labels)."""
    train = load_split(recipe, "train", human=True) if system.shots else []
    return Context(run_dir, [], train)


@dataclass
class Answers:
    rows: list[dict[str, Any]]  # as `finetune predict` writes them, with each item's id
    input_tokens: list[int]
    output_tokens: list[int]


def answer_items(
    recipe: Recipe,
    system: System,
    key: str,
    loaded: Loaded,
    context: Context,
    items: list[dict],
    on_batch: Any = None,
) -> Answers:
    """Items ({id, text}) through a loaded system, planned and run as the evaluation runs its
    items: `finetune predict`'s rows, and `finetune serve`'s answers."""
    if not items:
        return Answers([], [], [])
    here = Context(context.run_dir, items, context.train_rows)
    plan = loaded.kind.plan(recipe, system, key, loaded, here)
    # A shared prompt prefix is scored once for many items; for one item it is a pass more
    # (single items are timed without it too).
    share = len(items) > 1
    predictions, details, out_tokens = plan.infer.run(
        loaded.model, plan.inputs, recipe.eval.batch_size, share, on_batch
    )
    kind = task_type(recipe.task)
    texts = [item["text"] for item in items]
    placed = kind.placed(texts, [kind.empty() for _ in items], predictions)
    cut = [{"truncated": True} if t else {} for t in plan.truncated]
    rows = [
        {"id": item["id"], **kind.output(p, d), **c}
        for item, p, d, c in zip(items, placed, details, cut, strict=True)
    ]
    return Answers(rows, list(plan.input_tokens), list(out_tokens))


def chunks(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """The rows in lists of `size` (the last shorter): how long runs of items are answered."""
    while batch := list(itertools.islice(rows, size)):
        yield batch
