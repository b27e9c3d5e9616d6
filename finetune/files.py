"""Atomic file writes: write beside the target, fsync, then rename over it.

A kill in the middle of a write leaves the previous good file (or none), never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # name the file (a full disk, say)
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | Path, rows: list[Any]) -> None:
    """Rows appended as JSON lines and flushed to disk: a kill after this loses none of them."""
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def cut_torn_tail(path: str | Path) -> None:
    """Drop a last line that has no newline (what a kill in the middle of an append leaves),
    so that the next append starts a line of its own."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(whole))


def read_jsonl(path: str | Path, *, torn_tail_ok: bool = False) -> list[Any]:
    """Records of a JSONL file. Lines end at "\\n" only: str.splitlines() would also break
    at U+2028 and other separators that JSON strings written with ensure_ascii=False contain.

    `torn_tail_ok` drops an unparsable last line that has no newline: what a kill in the
    middle of an append leaves.
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    records = [json.loads(line) for line in lines[:-1] if line.strip()]
    tail = lines[-1]
    if tail.strip():
        try:
            records.append(json.loads(tail))
        except json.JSONDecodeError:
            if not torn_tail_ok:
                raise
    return records
