"""The student against its teacher (`data.teacher`), on the human-labelled test items.

Whether the student keeps the teacher's quality is a paired non-inferiority call
(`stats.non_inferiority`): the one-sided lower confidence bound of (student - teacher) on the
primary metric must be above minus `data.teacher.margin`. Beside it: how often the two give the
same answer, and what the teacher did when it labelled (its card, from the run's provenance).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.evaluate.results import Outcome, metric_names
from finetune.recipe import Recipe
from finetune.stats import non_inferiority
from finetune.tasks import metrics as M


def student_vs_teacher(
    recipe: Recipe, run_dir: Path, outcomes: list[Outcome], golds: list[Any]
) -> dict[str, Any] | None:
    """The results' `teacher` section; None without a teacher."""
    if recipe.data.teacher is None:
        return None
    student = outcomes[0]
    teacher = next(o for o in outcomes if o.system.name == recipe.data.teacher.system)
    task, metric = recipe.task.type, metric_names(recipe)[0]
    labels = list(recipe.task.labels) or None
    call = non_inferiority(
        M.indexed_metric(task, metric, golds, student.predictions, labels),
        M.indexed_metric(task, metric, golds, teacher.predictions, labels),
        len(golds),
        margin=recipe.data.teacher.margin,
        samples=recipe.eval.bootstrap_samples,
        confidence=recipe.eval.confidence,
        seed=recipe.seed,
    )
    same = [a == b for a, b in zip(student.predictions, teacher.predictions, strict=True)]
    return {
        "teacher": teacher.system.name,
        "metric": metric,
        "student_value": M.compute(task, metric, golds, student.predictions, labels=labels),
        "teacher_value": M.compute(task, metric, golds, teacher.predictions, labels=labels),
        "agreement": sum(same) / len(same) if same else None,
        "difference": call.difference,
        "lower": call.lower,
        "margin": call.margin,
        "non_inferior": call.non_inferior,
        "labelling": _labelling(run_dir),
    }


def _labelling(run_dir: Path) -> dict[str, Any] | None:
    """The teacher's card as the run recorded it when it trained."""
    provenance = run_dir / "provenance.json"
    if not provenance.is_file():
        return None
    return json.loads(provenance.read_text()).get("teacher")
