"""What several kinds share: reading answers into predictions, in-context shots, parameter
and file sizes, how a trained adapter is served, and whether a system is shown the label list."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finetune.data.split import rank
from finetune.models import ModelSource
from finetune.recipe import Recipe
from finetune.systems.base import Inference, Plan, System
from finetune.tasks.prompts import lists_labels
from finetune.tasks.types import LABELS, task_type


def label_predictions(
    labels: Sequence[str], rows: Sequence[Sequence[float]]
) -> tuple[list[str], list[dict], list[int]]:
    """A `LABELS` request's answers: the likeliest label of each row of label log-likelihoods,
    each row kept in the details (to 5 places), and the index of each row's best label."""
    best = [int(np.argmax(row)) for row in rows]
    details = [
        {"label_logprobs": {k: round(float(x), 5) for k, x in zip(labels, row, strict=True)}}
        for row in rows
    ]
    return [labels[b] for b in best], details, best


def read_answers(recipe: Recipe, texts: list[str]) -> tuple[list[Any], list[dict]]:
    """A `GENERATE` request's answers as the task reads them (`TaskType.read`), with details."""
    task, labels = task_type(recipe.task), list(recipe.task.labels)
    read = [task.read(text, labels) for text in texts]
    return [prediction for prediction, _ in read], [details for _, details in read]


def encoded_plan(system: System, key: str, style: str, infer: Inference, encoded: list) -> Plan:
    """A plan whose inputs are encoded prompts or texts (`tasks.prompts.Encoded`): their token
    ids, their lengths, and whether each was cut to `model.max_length`."""
    return Plan(
        system,
        key,
        style,
        infer,
        [e.input_ids for e in encoded],
        [len(e.input_ids) for e in encoded],
        [e.truncated for e in encoded],
    )


def shown_label_list(recipe: Recipe, system: System, prompted: bool) -> bool:
    """Whether the system's prompts carry the label list (`task.list_labels`): an untrained
    system of a prompted kind's may; a trained one keeps the prompt it was trained on."""
    untrained = system.model != "run" and prompted
    return untrained and lists_labels(recipe.task)


def serving_form(recipe: Recipe) -> str:
    """How the specialist's adapter is applied for evaluation: `merged` or `adapter`.

    `auto` merges wherever the weights are not quantized, as `finetune export --merge`
    deploys it: a plain model with no adapter matmuls and no PEFT wrappers, at the base model's
    speed. Quantized weights cannot take a merge without re-quantizing, so they keep the adapter
    unmerged, in float32 as PEFT loads it.
    """
    form = recipe.eval.specialist_form
    if form == "auto":
        return "merged" if recipe.model.quantization == "none" else "adapter"
    return form


def merged_in_float32(base: Any, adapter: Path, dtype: Any) -> tuple[Any, str]:
    """The adapter merged into float32 `base` and the result rounded once to `dtype`, with the
    description of that serving form."""
    import torch
    from peft import PeftModel

    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().to(dtype)
    name = str(dtype).removeprefix("torch.")
    rounded = "" if dtype == torch.float32 else f", rounded once to {name}"
    return merged, f"merged in float32{rounded}"


def parameter_sizes(model: Any) -> tuple[int, int, int]:
    """(weight bytes, parameters, adapter parameters) of a torch model."""
    total = weights = adapter = 0
    for name, param in model.named_parameters():
        total += param.numel()
        weights += param.numel() * param.element_size()
        if "lora_" in name:
            adapter += param.numel()
    return weights, total, adapter


def disk_bytes(source: ModelSource, adapter: Path | None) -> dict[str, int | None]:
    """On-disk weight bytes of the model (None for a Hub id not downloaded here) and adapter."""
    model = _weights_bytes(Path(source.location)) if source.kind != "hub" else None
    return {"adapter": _weights_bytes(adapter) if adapter else None, "model": model}


def _weights_bytes(directory: Path) -> int | None:
    files = [
        p
        for p in directory.iterdir()
        if p.suffix in (".safetensors", ".bin", ".pt") or p.name.endswith(".gguf")
    ]
    return sum(p.stat().st_size for p in files) if files else None


def draw_shots(recipe: Recipe, train_rows: list[dict], k: int) -> list[tuple[str, str]]:
    """k in-context examples from train, fixed by the recipe's seed, shared by every test item,
    and the same at every training size of a learning curve.

    Each label's rows are ranked by (seed, id), the order in which a capped training set takes
    them (`data.split.nested_order`), so a label's first rows are in every capped set that holds
    that many. The examples are the shorter half of each label's first 2 x (shots per label)
    rows, so they do not crowd out the item, taken in turn from each label (in an order drawn
    by the seed) so no label is missing by chance; other tasks rank all rows as one group.
    """
    if k == 0 or not train_rows:
        return []
    task = task_type(recipe.task)
    if task.request == LABELS:
        groups = [[r for r in train_rows if r["label"] == label] for label in recipe.task.labels]
        groups = [g for g in groups if g]
        random.Random(recipe.seed).shuffle(groups)
    else:
        groups = [train_rows]
    per_group = -(-k // len(groups))
    pools = [_short_first_rows(recipe.seed, g, per_group) for g in groups]
    turns = [pools[i % len(pools)] for i in range(k)]  # each group in turn
    picked = [pool[(i // len(pools)) % len(pool)] for i, pool in enumerate(turns)]
    return [(r["text"], task.target_text(r)) for r in picked]


def _short_first_rows(seed: int, rows: list[dict], n: int) -> list[dict]:
    """The shorter half of the first 2n rows in (seed, id) rank, in rank order."""
    first = sorted(rows, key=lambda r: rank(seed, r["id"]))[: 2 * n]
    shorter = {id(r) for r in sorted(first, key=lambda r: len(r["text"]))[:n]}  # rank breaks ties
    return [r for r in first if id(r) in shorter]
