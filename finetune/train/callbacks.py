"""Trainer callbacks: the JSONL log (mirrored to the tracker), the progress display, the time
budget, and the seal that marks a checkpoint completely written."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from finetune.files import read_jsonl, write_atomic
from finetune.tracking import Tracker

LOG_FILE = "train_log.jsonl"
SEAL_FILE = "finetune-complete.json"
# Trainer log keys -> names in the JSONL log and the tracker.
_RENAMES = {
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "eval_loss": "eval/loss",
    "eval_runtime": "eval/seconds",
}


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LOG_FILE
    # A kill in the middle of an append leaves a torn last line; the resumed run rewrites it.
    return read_jsonl(path, torn_tail_ok=True) if path.is_file() else []


def truncate_log(run_dir: str | Path, last_step: int) -> None:
    """Drop records after `last_step`: a resumed run recomputes them from its checkpoint."""
    kept = [r for r in read_log(run_dir) if r["step"] <= last_step]
    write_atomic(Path(run_dir) / LOG_FILE, "".join(json.dumps(r) + "\n" for r in kept))


class LogCallback(TrainerCallback):
    """Append every training and evaluation log to `train_log.jsonl` and send the same record to the tracker."""

    def __init__(self, run_dir: Path, tracker: Tracker):
        self.path = Path(run_dir) / LOG_FILE
        self.tracker = tracker
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.monotonic(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key, value in logs.items():
            if key in _RENAMES:
                record[_RENAMES[key]] = value
        if "train/loss" in record and self._last is not None:
            now, tokens = time.monotonic(), state.num_input_tokens_seen
            elapsed = now - self._last[0]
            record["train/tokens_per_second"] = (
                round((tokens - self._last[1]) / elapsed, 1) if elapsed > 0 else None
            )
            record["train/tokens_seen"] = tokens
            self._last = (now, tokens)
        # Only step and epoch: the end-of-training totals (train_runtime, ...), which go to the summary.
        if len(record) == 2:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.tracker.log(
            {k: v for k, v in record.items() if k != "step" and v is not None},
            step=state.global_step,
        )


class SealCheckpointCallback(TrainerCallback):
    """After the Trainer has written a whole checkpoint, seal it with a small file written atomically.

    transformers writes `checkpoint-N/` in place, file by file, so a kill can leave one with
    weights but no optimizer state, or half a `trainer_state.json`. Its files are flushed to
    disk before the seal, so a power cut cannot leave a sealed checkpoint with lost contents.
    Resuming uses only sealed checkpoints (`last_checkpoint`).
    """

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            for file in folder.rglob("*"):
                if file.is_file():
                    with open(file, "rb") as handle:
                        os.fsync(handle.fileno())
            write_atomic(folder / SEAL_FILE, json.dumps({"step": state.global_step}) + "\n")


class ProgressCallback(TrainerCallback):
    """A progress bar with loss, tokens/s and ETA on a terminal; one line per log otherwise (CI, files)."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self._start: tuple[float, int, int] = (0.0, 0, 0)  # time, tokens, step at (re)start
        self._loss = "-"

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._start = (time.monotonic(), state.num_input_tokens_seen, state.global_step)
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=state.max_steps, completed=state.global_step, loss="-", speed="-"
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(
                self.task, completed=state.global_step, loss=self._loss, speed=self._speed(state)
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self._loss = f"{logs['loss']:.4f}"
        if self.progress is None and ("loss" in logs or "eval_loss" in logs):
            elapsed = time.monotonic() - self._start[0]
            done = state.global_step - self._start[2]  # steps taken by this process, resumed or not
            eta = elapsed / done * (state.max_steps - state.global_step) if done else 0
            parts = [f"step {state.global_step}/{state.max_steps}"]
            if "loss" in logs:
                parts.append(f"loss {logs['loss']:.4f}")
            if "eval_loss" in logs:
                parts.append(f"eval loss {logs['eval_loss']:.4f}")
            parts += [
                f"{self._speed(state)} tok/s",
                f"elapsed {_clock(elapsed)}",
                f"ETA {_clock(eta)}",
            ]
            self.console.print("  ".join(parts), markup=False, highlight=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _speed(self, state) -> str:
        elapsed = time.monotonic() - self._start[0]
        tokens = state.num_input_tokens_seen - self._start[1]
        return f"{tokens / elapsed:,.0f}" if elapsed > 0 and tokens else "-"


class BudgetCallback(TrainerCallback, ExportableState):
    """Stop cleanly (saving a checkpoint) once `train.budget_minutes` of training time is spent.

    The time spent is saved in checkpoints, so a resumed run keeps counting from where it was.
    Under DDP the ranks agree on the stop step, or the ones still training would wait forever.
    """

    def __init__(self, minutes: float | None, spent_seconds: float = 0.0):
        self.minutes = minutes
        self.spent_before = spent_seconds
        self._start = time.monotonic()
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.monotonic()

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self._start

    def on_step_end(self, args, state, control, **kwargs):
        if self.minutes is None or self.stopped_at is not None:
            return
        if _any_rank(self.spent() >= self.minutes * 60):
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"

    def state(self) -> dict:
        return {"args": {"minutes": self.minutes, "spent_seconds": self.spent()}, "attributes": {}}


def _any_rank(flag: bool) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
