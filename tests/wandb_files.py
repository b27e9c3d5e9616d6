"""Read a W&B offline run file (`run-<id>.wandb`) back, independently of the wandb client.

The file is a LevelDB-style log: a 7-byte W&B header, then 32 KiB blocks of records, each
with a 7-byte header (CRC, length, type: full / first / middle / last); every record is a
protobuf `wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(data: bytes) -> list[bytes]:
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:
            pos += left_in_block
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            records.append(pending + chunk)
    return records


def read_run(run_dir: Path, *, timeout: float = 30.0) -> dict[str, Any]:
    """The single offline W&B run under `<run_dir>/wandb/`: history rows, config and artifacts.

    History rows are dicts of key -> value (nested keys joined with "/"); the config is the
    run's config with W&B's {"value": ...} wrappers removed; artifacts are (name, type, files).
    `wandb.finish()` can return before W&B's writer process has flushed the file, so this
    waits (up to `timeout` seconds) for the run's exit record.
    """
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _finished_records(run_dir)
        # No file yet, or a record caught mid-write (a torn record fails to decode).
        except (ValueError, AssertionError, struct.error, DecodeError):
            records = None
        if records is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if records is None:
        raise AssertionError(f"no finished W&B run under {run_dir}/wandb within {timeout} s")
    return _parse(records)


def _protos(path: Path) -> list[Any]:
    """The records of one run file as `Record` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    protos = []
    for raw in _records(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        protos.append(record)
    return protos


def _finished_records(run_dir: Path) -> list[Any] | None:
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = _protos(path)
    kinds = {record.WhichOneof("record_type") for record in records}
    return records if "exit" in kinds else None


def _parse(records: list[Any]) -> dict[str, Any]:
    run: dict[str, Any] = {"history": [], "config": {}, "artifacts": []}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run["history"].append(_items(record.history.item))
        elif kind == "run":  # the config given to wandb.init travels in the run record
            run["config"].update(_items(record.run.config.update))
            run["group"], run["job_type"] = record.run.run_group, record.run.job_type
        elif kind == "config":
            run["config"].update(_items(record.config.update))
        elif kind == "artifact":
            files = sorted(entry.path for entry in record.artifact.manifest.contents)
            run["artifacts"].append((record.artifact.name, record.artifact.type, files))
    run["config"] = {
        k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v
        for k, v in run["config"].items()
        if k != "_wandb"
    }
    return run


def _items(items: Any) -> dict[str, Any]:
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


def run_groups(run_dir: Path) -> list[tuple[str, str]]:
    """(job type, group) of every W&B run file under `<run_dir>/wandb/`, finished or not."""
    firsts = (
        next((r.run for r in _protos(path) if r.WhichOneof("record_type") == "run"), None)
        for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    )
    return [(run.job_type, run.run_group) for run in firsts if run is not None]
