"""Output when nothing is a terminal: progress as plain lines, library noise silenced in this
process and in its children, and `finetune eval` finding the latest finished run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from finetune import quiet
from finetune.progress import LineProgress, progress


def _log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


def _clock(monkeypatch, times):
    ticks = iter(times)
    monkeypatch.setattr("finetune.progress.time.monotonic", lambda: next(ticks))


def test_in_a_log_progress_is_a_line_per_tenth_without_carriage_returns(monkeypatch):
    _clock(monkeypatch, range(201))  # a second an item
    console, buffer = _log_console()
    with progress(console) as bar:
        assert isinstance(bar, LineProgress)
        task = bar.add_task("scoring qwen", total=200)
        for _ in range(200):
            bar.advance(task)
    lines = buffer.getvalue().splitlines()
    assert "\r" not in buffer.getvalue()
    assert [line.split(",")[0] for line in lines] == [
        f"scoring qwen: {n}/200 items ({n // 2}%)" for n in range(20, 201, 20)
    ]
    assert lines[0] == "scoring qwen: 20/200 items (10%), 1 items/s, about 3 min 00 s left"
    assert lines[-1] == "scoring qwen: 200/200 items (100%), 1 items/s"


def test_work_done_in_a_few_seconds_says_nothing(monkeypatch):
    _clock(monkeypatch, [0.0] + [0.01 * n for n in range(1, 201)])
    console, buffer = _log_console()
    bar = LineProgress(console)
    task = bar.add_task("tf-idf", total=200)
    for _ in range(200):
        bar.advance(task)
    assert buffer.getvalue() == ""


def test_a_slow_task_still_says_something_every_interval(monkeypatch):
    _clock(monkeypatch, [0.0, 1.0, 31.0, 32.0, 62.5])
    console, buffer = _log_console()
    bar = LineProgress(console, every=30)
    task = bar.add_task("engine", total=1000)
    for _ in range(4):  # at 1 s nothing; at 31 s a line; at 32 s nothing; at 62.5 s a line
        bar.advance(task)
    assert buffer.getvalue().splitlines() == [
        "engine: 2/1000 items (0%), 0.0645 items/s, about 4 h 17 min left",
        "engine: 4/1000 items (0%), 0.064 items/s, about 4 h 19 min left",
    ]


def test_bytes_read_as_sizes(monkeypatch):
    _clock(monkeypatch, [0.0, 6.0])
    console, buffer = _log_console()
    bar = LineProgress(console, unit="B")
    task = bar.add_task("assembling GGUF", total=3.2e9)
    bar.advance(task, 4e8)
    assert buffer.getvalue().startswith("assembling GGUF: 400.0 MB/3.2 GB (12%), ")


def test_on_a_terminal_the_bar_is_rich_progress():
    from rich.progress import Progress

    assert isinstance(progress(Console(file=io.StringIO(), force_terminal=True)), Progress)


WARN = (
    "import warnings\n"
    "for q in ['`is_gradient_checkpointing` is deprecated and will be removed',"
    " '`past_key_values` is deprecated']:\n"
    "    warnings.warn(q, FutureWarning)\n"
    "warnings.warn('something else', FutureWarning)\n"
)


@pytest.mark.parametrize("quieted", [False, True])
def test_children_inherit_the_warning_filters(monkeypatch, quieted):
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    if quieted:
        quiet.apply()  # conftest has applied them in this process; the environment carries them
    else:
        monkeypatch.setenv("PYTHONWARNINGS", "")
    child = subprocess.run([sys.executable, "-c", WARN], capture_output=True, text=True)
    said = [line for line in child.stderr.splitlines() if "FutureWarning" in line]
    assert len(said) == (1 if quieted else 3)
    assert "something else" in said[-1]
    assert os.environ.get("PYTHONWARNINGS", "").count("ignore:") == (2 if quieted else 0)


def test_apply_twice_writes_each_filter_once(monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", "default::UserWarning")
    quiet.apply()
    quiet.apply()
    assert os.environ["PYTHONWARNINGS"] == (
        "default::UserWarning,"
        "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning,"
        "ignore:`past_key_values` is deprecated:FutureWarning"
    )


def _finished(path, end_time: str | None, status: str = "complete"):
    path.mkdir(parents=True)
    (path / "provenance.json").write_text(json.dumps({"status": status, "end_time": end_time}))


def test_the_latest_finished_run_is_the_last_to_end(tiny_recipe, tmp_path):
    from finetune.recipe import load_recipe
    from finetune.runs import latest_run

    recipe = load_recipe(tiny_recipe(tracking={"runs_dir": str(tmp_path / "runs")}))
    parent = tmp_path / "runs" / recipe.name
    with pytest.raises(Exception, match=f"no finished run of recipe 'tiny' in {parent}; train"):
        latest_run(recipe)
    _finished(parent / "20261201-000000-aaaa", "2026-12-01T10:00:00+00:00")
    _finished(parent / "20261130-000000-bbbb", "2026-12-02T09:00:00+00:00")  # resumed, ended later
    _finished(parent / "20261203-000000-cccc", "2026-12-03T09:00:00+00:00", status="failed")
    _finished(parent / "20261204-000000-dddd.partial", None, status="running")
    assert latest_run(recipe) == parent / "20261130-000000-bbbb"
