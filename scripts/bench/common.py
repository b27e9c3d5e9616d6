"""Shared pieces of the benchmarks: child processes with their peak memory, bench data, line fits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RECIPE = ROOT / "recipes" / "rt-sentiment-smollm2-lora.yaml"
WORKER = Path(__file__).with_name("workers.py")


@dataclass
class Finished:
    """A child process that ran to the end: its output, wall time and peak resident memory."""

    stdout: str
    seconds: float
    peak_rss_bytes: int


def threads() -> int:
    """Cores for the math library: every child gets the same, so no tool runs on fewer."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads()),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="disabled",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_child(cmd: list[str], log: Path) -> Finished:
    """Run `cmd` to completion, its output teed to `log`; fails loudly with the log's tail.

    Peak memory is the process tree's: `wait4` reports the largest resident set of the child
    and of the descendants it waited for (`accelerate launch` runs the trainer as a grandchild).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    text = log.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-30:])
        raise RuntimeError(
            f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed ({proc.returncode}); log {log}:\n{tail}"
        )
    return Finished(text, seconds, usage.ru_maxrss * 1024)


def run_worker(name: str, args: dict[str, Any], log: Path) -> tuple[dict[str, Any], Finished]:
    """Run one measurement from `workers.py` in its own process; its JSON answer and the process."""
    done = run_child([str(BIN / "python"), str(WORKER), name, json.dumps(args)], log)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :]), done
    raise RuntimeError(f"worker {name} printed no result; log {log}")


def finetune_cmd(*args: str) -> list[str]:
    return [str(BIN / "finetune"), *args]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def joined_reviews(
    rows: list[dict[str, Any]], k: int, count: int, prefix: str
) -> list[dict[str, Any]]:
    """`count` examples, each k reviews of one label joined into one text: longer inputs, same task."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    labels = sorted(by_label)
    out, cursor = [], dict.fromkeys(labels, 0)
    while len(out) < count:
        label = labels[len(out) % len(labels)]
        pool = by_label[label]
        picked = [pool[(cursor[label] + j) % len(pool)]["text"] for j in range(k)]
        cursor[label] += k
        out.append({"id": f"{prefix}-{len(out):05d}", "text": " ".join(picked), "label": label})
    return out


def line_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares y = intercept + slope * x, with R^2."""
    import numpy as np

    x, y = np.asarray(xs, float), np.asarray(ys, float)
    slope, intercept = np.polyfit(x, y, 1)
    predicted = intercept + slope * x
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - predicted) ** 2).sum()) / total if total else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_lines(path: Path) -> list[Any]:
    return [
        json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line
    ]
