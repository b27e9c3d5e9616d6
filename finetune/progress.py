"""Progress of long work: a live bar on a terminal, plain lines in a log.

`progress(console)` returns rich's `Progress` where the console is a terminal. Elsewhere (CI,
`make demo > log 2>&1`) a bar's carriage-return frames would pile up as junk in the file, yet
silence for ten minutes reads as a hang; `LineProgress` has the same task API and writes one
line per task at each tenth of its total, or after `every` seconds without a line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console


@dataclass
class _Task:
    description: str
    total: float | None
    unit: str
    started: float
    said_at: float
    completed: float = 0.0
    said_tenth: int = 0


class LineProgress:
    """rich.progress.Progress's `add_task` / `advance` / `update` / `remove_task`, as log lines:
    `NAME: 40/200 (20%), 3.1 items/s, about 52 s left`. A tenth is said only `gap` seconds after
    the last line: work done in a few seconds says nothing (its caller reports the result)."""

    def __init__(
        self, console: Console, every: float = 30.0, unit: str = "items", gap: float = 5.0
    ):
        self.console, self.every, self.unit, self.gap = console, every, unit, gap
        self.tasks: dict[int, _Task] = {}
        self._ids = 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tasks.clear()

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task_id = self._ids = self._ids + 1
        now = time.monotonic()
        self.tasks[task_id] = _Task(description, total, fields.get("unit", self.unit), now, now)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self, task_id: int, *, completed: float | None = None, advance: float = 0, **_: Any
    ) -> None:
        task = self.tasks[task_id]
        task.completed = task.completed + advance if completed is None else completed
        now = time.monotonic()
        tenth = int(10 * task.completed / task.total) if task.total else 0
        quiet_for = now - task.said_at
        finished = tenth == 10 and task.said_at > task.started  # close what was begun
        if (tenth > task.said_tenth and (quiet_for >= self.gap or finished)) or (
            quiet_for >= self.every
        ):
            task.said_tenth, task.said_at = max(tenth, task.said_tenth), now
            self.console.print(describe(task, now), markup=False, highlight=False)

    def remove_task(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)


def describe(task: _Task, now: float) -> str:
    """`NAME: 40/200 items (20%), 3.1 items/s, about 52 s left`; without a total, the count and
    the rate."""
    rate = task.completed / max(now - task.started, 1e-9)
    speed = f"{_amount(rate, task.unit)}/s"
    if not task.total:
        return f"{task.description}: {_amount(task.completed, task.unit)}, {speed}"
    share = task.completed / task.total
    left = (task.total - task.completed) / rate if rate > 0 else None
    eta = f", about {_clock(left)} left" if left is not None and share < 1 else ""
    if task.unit == "B":
        done = f"{_amount(task.completed, 'B')}/{_amount(task.total, 'B')}"
    else:
        done = f"{task.completed:g}/{task.total:g} {task.unit}"
    return f"{task.description}: {done} ({share:.0%}), {speed}{eta}"


def _amount(value: float, unit: str) -> str:
    if unit == "B":
        for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if value >= scale:
                return f"{value / scale:.1f} {name}"
        return f"{value:.0f} B"
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return (
        f"{minutes} min {seconds:02d} s"
        if minutes < 60
        else f"{minutes // 60} h {minutes % 60:02d} min"
    )


def progress(console: Console | None, unit: str = "items", transient: bool = True) -> Any:
    """A live bar on a terminal, `LineProgress` otherwise; nothing at all without a console."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    if console is not None and not console.is_terminal:
        return LineProgress(console, unit=unit)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn() if unit == "B" else MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
        transient=transient,
    )
