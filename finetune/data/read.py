"""Read rows from JSONL, CSV, Parquet or a Hub dataset, map fields, and validate each row.

Every rejected row carries its file, line and reason. With `data.on_bad_row: error` the first
problems stop preparation; with `skip` they are counted and written to a rejects file.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import fetch
from finetune.errors import FinetuneError
from finetune.recipe import Recipe
from finetune.tasks.types import task_type

MAX_LISTED = 10


class DataError(FinetuneError):
    """The data cannot be used as the recipe describes it."""


@dataclass(frozen=True)
class RawRow:
    file: str
    line: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    file: str
    line: int
    reason: str
    row: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def read_file(path: str | Path) -> Iterator[RawRow]:
    """Rows of a local JSONL, CSV or Parquet file, chosen by extension; JSON syntax errors become rows to reject."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.source: file '{path}' does not exist")
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_jsonl,
        ".csv": _read_csv,
        ".parquet": _read_parquet,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"data.source: '{path}' has extension '{path.suffix}'; expected one of .jsonl, .csv, .parquet"
        )
    if path.stat().st_size == 0:
        raise DataError(f"data.source: '{path}' is empty")
    return reader(path)


def _check_utf8(path: Path) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    _check_utf8(path)
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            line = line.rstrip("\r\n")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield RawRow(
                    str(path),
                    line_no,
                    {
                        "__error__": f"malformed JSON ({exc.msg} at column {exc.pos + 1})",
                        "__raw__": line[:500],
                    },
                )
                continue
            if not isinstance(obj, dict):
                yield RawRow(
                    str(path),
                    line_no,
                    {
                        "__error__": f"expected a JSON object, found {type(obj).__name__}",
                        "__raw__": line[:500],
                    },
                )
                continue
            yield RawRow(str(path), line_no, obj)


def _read_csv(path: Path) -> Iterator[RawRow]:
    _check_utf8(path)
    # The csv module refuses fields over 128 KiB by default; long documents are legitimate rows
    # (training cuts them to model.max_length and counts them).
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, restkey="__extra__")
        start = 2
        for row in reader:
            if "__extra__" in row or None in row.values():
                count = len(reader.fieldnames or [])
                yield RawRow(
                    str(path),
                    start,
                    {
                        "__error__": f"bad CSV row: expected {count} fields",
                        "__raw__": str(row)[:500],
                    },
                )
            else:
                yield RawRow(str(path), start, dict(row))
            start = reader.line_num + 1


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for index, row in enumerate(table.to_pylist(), 1):
        yield RawRow(str(path), index, row)


def read_hub(dataset_id: str, builtin: Iterable[str] = ()) -> Iterator[RawRow]:
    """Rows of every split of a Hub dataset (needs Hub access), concatenated in split order;
    `builtin` names the built-in datasets an error suggests instead."""
    import datasets
    from huggingface_hub import constants

    offline = f"Sources that work offline: the built-in datasets ({', '.join(builtin)}; `finetune prepare --list`), a local JSONL, CSV or Parquet file, or (with HF_HUB_OFFLINE=1) a Hub dataset already in the Hugging Face cache"
    reason = (
        None if constants.HF_HUB_OFFLINE else fetch.unreachable_reason()
    )  # offline mode reads the cache
    if reason is not None:
        raise DataError(
            f"data.source: could not load Hub dataset '{dataset_id}' ({reason}). {offline}"
        )
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as exc:
        raise DataError(
            f"data.source: could not load Hub dataset '{dataset_id}' ({type(exc).__name__}: {str(exc)[:200]}). {offline}"
        ) from None
    for split_name, split in loaded.items():
        for index, row in enumerate(split, 1):
            yield RawRow(f"{dataset_id}[{split_name}]", index, dict(row))


def to_examples(
    rows: Iterable[RawRow], recipe: Recipe, default_fields: dict[str, str] | None = None
) -> tuple[list[dict], list[Rejected]]:
    """Map raw rows to examples `{id, text, <target>}` and validate them; returns (examples, rejected)."""
    target = task_type(recipe.task).target
    mapping = {
        "id": "id",
        "text": "text",
        target: target,
        **(default_fields or {}),
        **recipe.data.fields,
    }
    examples, rejected = [], []
    for row in _mapped(rows, mapping, target, lambda r: _map_row(r, mapping, target, recipe)):
        (rejected if isinstance(row, Rejected) else examples).append(row)
    return examples, rejected


def unlabelled(
    rows: Iterable[RawRow], recipe: Recipe, fields: dict[str, str] | None = None
) -> Iterator[dict | Rejected]:
    """Rows to predict, mapped by `data.fields` (and `fields` over them) to `{id, text}` and
    checked as `to_examples` checks them (text present and not blank, ids distinct), one at a
    time: each row's example, or the reason it is rejected. No target is read."""
    mapping = {"id": "id", "text": "text", **recipe.data.fields, **(fields or {})}
    return _mapped(rows, mapping, None, lambda r: _map_text(r, mapping))


def _mapped(
    rows: Iterable[RawRow],
    mapping: dict[str, str],
    target: str | None,
    map_row: Callable[[RawRow], tuple[dict, str | None]],
) -> Iterator[dict | Rejected]:
    """Each row's example (`map_row`), or why it is rejected: unreadable, refused by `map_row`,
    or a repeated id. The mapped columns are checked on the first readable row."""
    seen_ids: set[str] = set()
    checked_columns = False
    for row in rows:
        if "__error__" in row.fields:
            yield Rejected(
                row.file, row.line, row.fields["__error__"], {"raw": row.fields["__raw__"]}
            )
            continue
        if not checked_columns:
            _check_columns(row, mapping, target)
            checked_columns = True
        example, reason = map_row(row)
        if reason is None and example["id"] in seen_ids:
            reason = f"duplicate id {example['id']!r}"
        if reason:
            yield Rejected(row.file, row.line, reason, _jsonable(row.fields))
            continue
        seen_ids.add(example["id"])
        yield example


def _check_columns(row: RawRow, mapping: dict[str, str], target: str | None) -> None:
    for name in ("text", target) if target else ("text",):
        column = mapping[name]
        if column not in row.fields:
            found = ", ".join(map(str, row.fields)) or "(none)"
            raise DataError(
                f"data.fields.{name}: column '{column}' not found in {row.file}; columns found: {found}. Map it with data.fields.{name}: <column>"
            )


def _map_text(row: RawRow, mapping: dict[str, str]) -> tuple[dict, str | None]:
    """The row's `{id, text}` (the id is `<file stem>-<line>` where the row has none)."""
    text = row.fields.get(mapping["text"])
    row_id = row.fields.get(mapping["id"])
    example = {
        "id": str(row_id) if row_id not in (None, "") else f"{Path(row.file).stem}-{row.line}",
        "text": text,
    }
    if not isinstance(text, str) or not text.strip():
        return example, "empty or whitespace-only text"
    return example, None


def _map_row(
    row: RawRow, mapping: dict[str, str], target: str, recipe: Recipe
) -> tuple[dict, str | None]:
    example, reason = _map_text(row, mapping)
    if reason:
        return example, reason
    value = row.fields.get(mapping[target])
    if target == "label":
        label = recipe.data.label_map.get(str(value), str(value)) if value is not None else None
        if label not in recipe.task.labels:
            return (
                example,
                f"label {value!r} is not one of task.labels {recipe.task.labels} (map it with data.label_map)",
            )
        example["label"] = label
    elif target == "answer":
        if not isinstance(value, str) or not value.strip():
            return example, "empty or missing answer"
        example["answer"] = value
    else:
        reason = entities_reason(example["text"], value)
        if reason:
            return example, reason
        example["entities"] = value  # whole: extra keys (offsets, say) are kept
    return example, None


def entities_reason(text: str, entities: Any) -> str | None:
    """Why `entities` is not a list of `{text, type}` objects with optional `start`/`end` offsets into `text`."""
    if not isinstance(entities, list):
        return f"entities must be a list of {{text, type}} objects; found {type(entities).__name__}"
    for index, entity in enumerate(entities):
        reason = _entity_reason(text, entity)
        if reason:
            return f"entities[{index}]: {reason}"
    return None


def _entity_reason(text: str, entity: Any) -> str | None:
    if not isinstance(entity, dict) or not all(
        isinstance(entity.get(k), str) and entity[k].strip() for k in ("text", "type")
    ):
        return f"expected an object with non-empty string text and type; found {entity!r}"
    if "start" not in entity and "end" not in entity:
        return None
    start, end = entity.get("start"), entity.get("end")
    # bool is an int to Python, but a true/false offset is a mistake, not position 1 or 0
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, end)):
        return (
            f"start and end must both be non-negative integers; found start={start!r}, end={end!r}"
        )
    if text[start:end] != entity["text"]:
        return (
            f"text[{start}:{end}] is {text[start:end]!r}, not the entity's text {entity['text']!r}"
        )
    return None


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(fields, default=str))


def raise_for_rejects(rejected: list[Rejected]) -> None:
    shown = "\n".join(f"  {r}" for r in rejected[:MAX_LISTED])
    more = f"\n  ... and {len(rejected) - MAX_LISTED} more" if len(rejected) > MAX_LISTED else ""
    raise DataError(
        f"{len(rejected)} bad row(s):\n{shown}{more}\nFix them, or set data.on_bad_row: skip to drop them (they are counted and written to a rejects file)"
    )
