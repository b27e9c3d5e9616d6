"""`finetune predict`: a run's specialist, or one of the baselines it was evaluated against, on a
file of new items (JSONL, CSV or Parquet, read with the recipe's `data.fields`).

The items stream through in chunks, each chunk run as the evaluation runs its items (the
system's own plan and inference, `finetune.systems`), and appended to the output, one JSON
line per input row: its id, the answer under the task's name (`label` with every label's
probability, `entities` with character spans, or `answer`), the system's details, and
`truncated` where the text was cut to `model.max_length`. Each chunk is flushed to disk before
the next starts, so a killed predict goes on where it stopped and writes no row twice. Bad rows are refused as `prepare` refuses them (`data.on_bad_row`):
listed as `file:line: reason` before anything runs, or skipped into `<out>.rejects.jsonl` and
counted.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.data.read import Rejected, raise_for_rejects, read_file, unlabelled
from finetune.errors import FinetuneError, did_you_mean
from finetune.files import append_jsonl, cut_torn_tail, read_jsonl
from finetune.progress import progress
from finetune.recipe import Recipe
from finetune.runs import is_complete
from finetune.systems.answers import answer_items, chunks, context_for
from finetune.systems.base import SPECIALIST, System
from finetune.systems.pool import loaded_model
from finetune.systems.registry import instance_key, kind_of, systems_of

CHUNK = 256  # rows per chunk: what a kill can lose, and how often the output is flushed


@dataclass
class Predicted:
    out: Path
    rows: int  # predicted by this call
    kept: int  # already in the output from an earlier call
    rejected: int
    seconds: float


def predict(
    recipe: Recipe,
    run_dir: Path,
    source: Path,
    out: Path,
    *,
    system: str = SPECIALIST,
    fields: dict[str, str] | None = None,
    on_bad_row: str | None = None,
    console: Any = None,
    chunk: int = CHUNK,
) -> Predicted:
    """Predict every row of `source` with the run's system `system` into `out` (JSONL).

    `fields` maps `id` and `text` to the file's columns over the recipe's `data.fields`, and
    `on_bad_row` replaces its `data.on_bad_row`, for this file only: the recipe itself stays
    as the run was trained, since the systems that read its training rows (TF-IDF, shots)
    must find them as they were."""
    if not is_complete(run_dir):
        raise FinetuneError(f"{run_dir}: not a finished training run; predict with a complete run")
    chosen = _system(recipe, system)
    if (on_bad_row or recipe.data.on_bad_row) == "error":
        _refuse_bad_rows(unlabelled(read_file(source), recipe, fields))
    done, skipped = _resume(out), _resume(rejects_path(out), ("file", "line"))
    rows = (r for r in unlabelled(read_file(source), recipe, fields) if _todo(r, done, skipped))
    first = next(rows, None)
    if first is None:  # all written by an earlier call: nothing to load
        return Predicted(out, 0, len(done), 0, 0.0)
    rows = itertools.chain([first], rows)
    key = instance_key(recipe, chosen)
    kind_of(key, run_dir, recipe).check(recipe, key)  # an endpoint's key and host, say
    start, count, rejected = time.perf_counter(), 0, 0
    with loaded_model(recipe, run_dir, key) as loaded, progress(console, unit="rows") as bar:
        task = bar.add_task(f"predicting with {chosen.name}", total=None)
        context = context_for(recipe, run_dir, chosen)
        for batch in chunks(rows, chunk):
            items = [r for r in batch if isinstance(r, dict)]
            rejected += _reject(out, [r for r in batch if isinstance(r, Rejected)])
            advance = functools.partial(bar.advance, task)
            append_jsonl(
                out, answer_items(recipe, chosen, key, loaded, context, items, advance).rows
            )
            count += len(items)
    return Predicted(out, count, len(done), rejected, time.perf_counter() - start)


def _system(recipe: Recipe, name: str) -> System:
    """The run's system called `name`: the specialist, or one of the recipe's baselines."""
    systems = {s.name: s for s in systems_of(recipe)}
    if name in systems:
        return systems[name]
    raise FinetuneError(
        f"--system: the run has no system {name!r}.{did_you_mean(name, systems)} "
        f"Its systems: {', '.join(systems)}"
    )


def _refuse_bad_rows(rows: Iterator[dict | Rejected]) -> None:
    """With `data.on_bad_row: error`, every bad row listed before anything is predicted."""
    bad = [r for r in rows if isinstance(r, Rejected)]
    if bad:
        raise_for_rejects(bad)


def _resume(path: Path, keys: tuple[str, ...] = ("id",)) -> set[tuple]:
    """The rows a file already holds, by `keys`; a last line cut short by a kill is dropped."""
    if not path.is_file():
        return set()
    cut_torn_tail(path)
    return {tuple(row[k] for k in keys) for row in read_jsonl(path)}


def _todo(row: dict | Rejected, done: set[tuple], skipped: set[tuple]) -> bool:
    """Not yet written: neither predicted nor skipped as bad by an earlier call."""
    if isinstance(row, Rejected):
        return (row.file, row.line) not in skipped
    return (row["id"],) not in done


def _reject(out: Path, rejected: list[Rejected]) -> int:
    """Bad rows skipped (`data.on_bad_row: skip`), written beside the output and counted."""
    rows = [{"file": r.file, "line": r.line, "reason": r.reason, "row": r.row} for r in rejected]
    append_jsonl(rejects_path(out), rows)
    return len(rows)


def rejects_path(out: Path) -> Path:
    return out.with_name(out.stem + ".rejects.jsonl")
