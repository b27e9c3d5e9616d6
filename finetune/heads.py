"""Which head a recipe trains on its base model, and the record of it in a run (`head.json`).

`causal-lm`: the model writes the answer after a prompt (`finetune/prompts.py`), trained with
TRL's SFTTrainer, for every task type. `sequence-classification`: a classification head reads
the input text alone and scores the task's labels, trained with transformers' Trainer. The
head comes from the recipe (`model.head`) and what the base model is (`models.model_role`):
`auto` gives an encoder base a classification head and a decoder its language-model head.
Training records the head with its labels in the run; evaluation picks the specialist's kind
from that record (a run without one is a causal LM: runs trained before heads existed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.files import write_json

CAUSAL_LM = "causal-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
HEAD_FILE = "head.json"


def resolved_head(head: str, role: str | None) -> str:
    """`model.head` with `auto` decided by the base model's role (None: not known, a decoder)."""
    if head != "auto":
        return head
    return SEQUENCE_CLASSIFICATION if role == "encoder" else CAUSAL_LM


def head_problems(recipe: Any, role: str | None) -> list[tuple[str, str]]:
    """Why the recipe's head does not fit its base model, task or settings, as (key, message)."""
    head = resolved_head(recipe.model.head, role)
    if role == "encoder" and head == CAUSAL_LM:
        return [
            (
                "model.head",
                f"{recipe.model.base!r} is an encoder (BERT family), which has no language-model head "
                "to write answers with; use head: sequence-classification (or auto), or a decoder base model",
            )
        ]
    return _classifier_problems(recipe, role) if head == SEQUENCE_CLASSIFICATION else []


def _classifier_problems(recipe: Any, role: str | None) -> list[tuple[str, str]]:
    base, task = recipe.model.base, recipe.task.type
    problems = []
    if task != "classification":
        problems.append(
            (
                "task.type",
                f"{base!r} is an encoder: it trains a sequence-classification head, which needs task.type: "
                f"classification; found {task!r}. Use a decoder base model (e.g. smollm2-135m-instruct) for "
                f"{task} tasks",
            )
            if role == "encoder"
            else (
                "model.head",
                f"sequence-classification needs task.type: classification; found {task!r}. "
                "Use head: causal-lm (or auto)",
            )
        )
    if recipe.model.quantization != "none":
        problems.append(
            (
                "model.quantization",
                "a sequence-classification head trains on unquantized weights; found quantization "
                f"{recipe.model.quantization!r}. Use quantization: none",
            )
        )
    for key in ("packing", "padding_free"):
        if getattr(recipe.train, key):
            problems.append(
                (
                    f"train.{key}",
                    "joins several examples into one row, but a sequence-classification head reads "
                    "one text per row; set it to false",
                )
            )
    return problems + (_baseline_problems(recipe) if role == "encoder" else [])


def _baseline_problems(recipe: Any) -> list[tuple[str, str]]:
    """A `model: base` baseline prompts the base model to write the answer: an encoder cannot."""
    base = recipe.model.base
    return [
        (
            f"eval.baselines.{i}.model",
            f"{b.model!r} is the untuned base model prompted to write the answer, but {base!r} is an "
            "encoder with no language-model head to write one; name a decoder model instead (a registry "
            "name such as smollm2-135m-instruct, a local directory or a Hub id), or leave this baseline out",
        )
        for i, b in enumerate(recipe.eval.baselines)
        # A `run:` baseline is another run's specialist, served as its own recipe serves it.
        if b.model in ("base", base) and not getattr(b, "run", None)
    ]


def save_head(run_dir: str | Path, head: str, labels: list[str]) -> Path:
    """Record the run's head; `labels` are the classifier's outputs in order (its `id2label`)."""
    labels = list(labels) if head == SEQUENCE_CLASSIFICATION else []
    return write_json(Path(run_dir) / HEAD_FILE, {"head": head, "labels": labels})


def run_head(run_dir: str | Path) -> str:
    """The head a run trained (`causal-lm` for a run from before heads were recorded)."""
    path = Path(run_dir) / HEAD_FILE
    return json.loads(path.read_text())["head"] if path.is_file() else CAUSAL_LM
