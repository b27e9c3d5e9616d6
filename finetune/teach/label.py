"""Labelling rows with the teacher: in chunks, each appended and flushed before the next, so a
killed labelling resumes where it stopped and a repeated one asks nothing.

An endpoint teacher's requests also go through its response cache and spend cap: a request
that could pass `max_usd` stops the labelling with every answer so far kept.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.data import load_split, prepare
from finetune.data.teacher import (
    answered,
    asked,
    card_markdown,
    teacher_card,
    text_digest,
)
from finetune.files import append_jsonl, cut_torn_tail, write_atomic, write_json
from finetune.progress import progress
from finetune.recipe import Recipe
from finetune.systems.answers import answer_items, chunks
from finetune.systems.base import Context, System
from finetune.systems.pool import loaded_model
from finetune.systems.registry import instance_key, kind_of, systems_of
from finetune.tasks.types import task_type

CHUNK = 32  # rows per chunk: what a kill can lose


@dataclass
class Taught:
    card: dict[str, Any]  # the teacher's card (`data.teacher.teacher_card`)
    asked: int  # rows sent to the teacher by this call
    seconds: float
    card_path: Path


def teach(recipe: Recipe, *, console: Any = None, chunk: int = CHUNK) -> Taught:
    """Label every row of the recipe's `data.teacher` not answered yet; write its card."""
    prepared = prepare(recipe).path
    human = load_split(recipe, "train", human=True)
    todo = asked(recipe, prepared, human)
    pending = [r for r in todo.rows if not answered(todo.answers.get(r["id"]), r)]
    start = time.perf_counter()
    if pending:
        cut_torn_tail(todo.path)
        _label(recipe, todo.path, pending, human, console, chunk)
        todo = asked(recipe, prepared, human)  # with the answers just written
    card = teacher_card(recipe, todo)
    card_path = todo.path.with_suffix(".card.md")
    write_atomic(card_path, card_markdown(card))
    write_json(todo.path.with_suffix(".card.json"), card)
    return Taught(card, len(pending), time.perf_counter() - start, card_path)


def teacher_system(recipe: Recipe) -> System:
    """The baseline the recipe's `data.teacher.system` names."""
    return next(s for s in systems_of(recipe) if s.name == recipe.data.teacher.system)


def _label(recipe: Recipe, path: Path, rows: list[dict], human: list[dict], console, chunk) -> None:
    system = teacher_system(recipe)
    key = instance_key(recipe, system)
    kind_of(key, path.parent, recipe).check(recipe, key)  # an endpoint's key and host
    # In-context examples, as in the evaluation, from the human-labelled training rows.
    context = Context(path.parent, [], human if system.shots else [])
    with loaded_model(recipe, path.parent, key) as loaded, progress(console, unit="rows") as bar:
        task = bar.add_task(f"labelling with the teacher {system.name}", total=len(rows))
        advance = functools.partial(bar.advance, task)
        for batch in chunks(iter(rows), chunk):
            start = time.perf_counter()
            out = answer_items(recipe, system, key, loaded, context, batch, advance)
            each = (time.perf_counter() - start) / len(batch)
            entries = [
                _entry(recipe, row, answer, tokens_in, tokens_out, each)
                for row, answer, tokens_in, tokens_out in zip(
                    batch, out.rows, out.input_tokens, out.output_tokens, strict=True
                )
            ]
            append_jsonl(path, entries)


def _entry(recipe: Recipe, row: dict, answer: dict, tokens_in: int, tokens_out: int, seconds):
    """One row's answer as the answers file keeps it: the answer and its confidence (the
    probability of the label given), or why there is none."""
    entry = {
        "id": row["id"],
        "text_sha": text_digest(row["text"]),
        "seconds": seconds,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
    }
    if "failed" in answer:
        return {**entry, "failed": answer["failed"]}
    target = task_type(recipe.task).target
    probabilities = answer.get("probabilities")
    entry |= {"answer": answer[target], "confidence": None}
    if probabilities:
        entry |= {
            "confidence": probabilities.get(answer[target]),
            "label_logprobs": answer["label_logprobs"],
        }
    if answer.get("invalid"):
        entry["invalid"] = True
    return entry
