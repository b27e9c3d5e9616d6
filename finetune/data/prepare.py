"""Prepare a recipe's dataset: read, validate, split, check leakage, write JSONL splits and a data card."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.data.builtin import BUILTIN
from finetune.data.card import build_card, card_markdown
from finetune.data.read import (
    DataError,
    Rejected,
    raise_for_rejects,
    read_file,
    read_hub,
    to_examples,
)
from finetune.data.split import (
    SPLITS,
    carve_validation,
    drop_leaked,
    fingerprint,
    leakage,
    nested_order,
    split_seed,
    stratified_split,
)
from finetune.data.teacher import teacher_split
from finetune.files import read_jsonl, write_atomic, write_json
from finetune.recipe import Recipe
from finetune.tasks.types import task_type

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedData:
    path: Path
    fingerprint: str
    card: dict[str, Any]


def dataset_name(recipe: Recipe) -> str:
    source = recipe.data.source
    if source is None:
        return recipe.name
    if source in BUILTIN:
        return source
    if Path(source).suffix:
        return Path(source).stem
    return re.sub(r"[^\w.-]+", "__", source)


def prepared_path(recipe: Recipe) -> Path:
    return Path(recipe.data.prepared_dir) / dataset_name(recipe)


def prepare(recipe: Recipe, *, force: bool = False) -> PreparedData:
    """Build the dataset into `<prepared_dir>/<name>/`, reusing it when nothing it depends on changed."""
    out = prepared_path(recipe)
    key = _inputs_key(recipe)
    card_path = out / "card.json"
    if not force and card_path.is_file():
        card = json.loads(card_path.read_text())
        if card.get("inputs_key") == key:
            return PreparedData(out, card["fingerprint"], card)
    splits, rejected, facts = _read_splits(recipe)
    report = leakage(splits)
    removed = drop_leaked(splits, report) if recipe.data.dedupe else 0
    fp = fingerprint(splits, recipe)
    facts |= {
        "fingerprint": fp,
        "inputs_key": key,
        "rejected": len(rejected),
        "on_bad_row": recipe.data.on_bad_row,
        "leakage": report,
        "dedupe": recipe.data.dedupe,
        "dedupe_removed": removed,
        "prepared_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    card = build_card(splits, target=task_type(recipe.task).target, facts=facts)
    _write(out, splits, rejected, card)
    return PreparedData(out, fp, card)


def load_split(recipe: Recipe, split: str, *, human: bool = False) -> list[dict]:
    """Examples of one prepared split (preparing first if needed), capped by the recipe's
    limits. With `data.teacher`, the training split is what the teacher labelled and kept
    (`teacher.teacher_split`), unless `human` asks for the human-labelled rows it starts from."""
    prepared = prepare(recipe)
    rows = _capped(recipe, prepared, split)
    if split != "train" or human or recipe.data.teacher is None:
        return rows
    return teacher_split(recipe, prepared.path, rows)


def _capped(recipe: Recipe, prepared: PreparedData, split: str) -> list[dict]:
    rows = read_jsonl(prepared.path / f"{split}.jsonl")
    caps = {
        "train": recipe.data.max_train_examples,
        "validation": recipe.data.max_validation_examples,
        "test": recipe.data.max_test_examples,
    }
    cap = caps.get(split)
    if not cap:
        return rows
    return nested_order(rows, recipe.seed)[:cap] if split == "train" else rows[:cap]


def _read_splits(recipe: Recipe) -> tuple[dict[str, list[dict]], list[Rejected], dict[str, Any]]:
    facts: dict[str, Any] = {"name": dataset_name(recipe), "task": recipe.task.type, "notes": []}
    if recipe.data.split_files:
        splits, rejected = {}, []
        for name, path in recipe.data.split_files.items():
            splits[name], bad = to_examples(read_file(path), recipe)
            rejected += bad
        _check(rejected, recipe)
        if "validation" not in splits:
            splits["train"], splits["validation"] = carve_validation(splits["train"], recipe)
        _check_ids_across(splits)
        facts |= {
            "source": ", ".join(f"{k}: {v}" for k, v in recipe.data.split_files.items()),
            "licence": "(user data)",
            "description": "explicit split files",
        }
        return splits, rejected, facts
    source = recipe.data.source
    if source in BUILTIN:
        ds = BUILTIN[source]
        stats: dict[str, int] = {}
        examples, rejected = to_examples(ds.build(ds, stats), recipe)
        facts |= {
            "source": f"PyPI package {ds.package}",
            "licence": ds.licence,
            "description": ds.description,
        }
        facts["notes"] += [f"{k.replace('_', ' ')}: {v}" for k, v in stats.items()] + ds.notes
    else:
        rows = (
            read_file(source)
            if Path(source).suffix or Path(source).exists()
            else read_hub(source, BUILTIN)
        )
        examples, rejected = to_examples(rows, recipe)
        facts |= {
            "source": source,
            "licence": "(user data)",
            "description": f"prepared from {source}",
        }
    _check(rejected, recipe)
    if not examples:
        raise DataError(f"data.source: no usable rows in {source}")
    return stratified_split(examples, recipe), rejected, facts


def _check(rejected: list[Rejected], recipe: Recipe) -> None:
    if rejected and recipe.data.on_bad_row == "error":
        raise_for_rejects(rejected)
    if rejected:
        log.warning("skipped %d bad row(s); see rejects.jsonl", len(rejected))


def _check_ids_across(splits: dict[str, list[dict]]) -> None:
    seen: dict[str, str] = {}
    for name, rows in splits.items():
        for example in rows:
            if example["id"] in seen:
                raise DataError(
                    f"data.split_files: id {example['id']!r} is in both {seen[example['id']]} and {name}"
                )
            seen[example["id"]] = name


def _inputs_key(recipe: Recipe) -> str:
    """What the prepared files depend on: data settings, labels, seed and the source files' state."""
    files = [recipe.data.source, *recipe.data.split_files.values()]
    state = [
        (f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns)
        for f in files
        if f and Path(f).is_file()
    ]
    # version: raised when what a preparation writes changes (2: the card counts repeated texts and entity types)
    payload = {
        "data": recipe.data.model_dump(
            exclude={
                "max_train_examples",
                "max_validation_examples",
                "max_test_examples",
                "split_seed",
                "teacher",  # read after preparation: a teacher labels the prepared rows
                "unlabelled",
            }
        ),
        "task": recipe.task.model_dump(include={"type", "labels"}),
        "seed": split_seed(recipe),
        "files": state,
        "version": 2,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _write(
    out: Path, splits: dict[str, list[dict]], rejected: list[Rejected], card: dict[str, Any]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # The card marks a finished build: gone first, so a build killed half-way is never reused.
    (out / "card.json").unlink(missing_ok=True)
    for name in SPLITS:
        write_atomic(
            out / f"{name}.jsonl",
            "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in splits[name]),
        )
    rejects = out / "rejects.jsonl"
    if rejected:
        write_atomic(
            rejects,
            "".join(
                json.dumps(
                    {"file": r.file, "line": r.line, "reason": r.reason, "row": r.row},
                    ensure_ascii=False,
                )
                + "\n"
                for r in rejected
            ),
        )
    else:
        rejects.unlink(missing_ok=True)
    write_atomic(out / "card.md", card_markdown(card))
    write_json(out / "card.json", card)  # last: its presence marks a complete preparation
