"""SIGTERM stops a command and everything it started: `finetune serve` with its llama.cpp
server, `finetune eval` and `finetune experiment` while a fresh process measures a system's
memory alone. Each test starts the real command, waits for the child to exist, sends SIGTERM
to the command and finds no process of its tree left. Everything runs on 127.0.0.1, bounded in
time, and what a failing test leaves is killed by pid."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import REPO

WAIT = 240  # seconds for the child to appear: a fresh interpreter imports the training stack


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "finetune", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_child(process: subprocess.Popen, wanted: Callable[[psutil.Process], bool]):
    """The command's descendants once one of them is `wanted`."""
    parent, deadline = psutil.Process(process.pid), time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        tree = parent.children(recursive=True)
        if any(_safely(wanted, p) for p in tree):
            return tree
        time.sleep(0.2)
    raise AssertionError(f"no such child process within {WAIT} s")


def _safely(wanted: Callable[[psutil.Process], bool], process: psutil.Process) -> bool:
    try:
        return wanted(process)
    except psutil.Error:  # gone meanwhile
        return False


def _terminate_and_check(process: subprocess.Popen, tree: list[psutil.Process]) -> str:
    """SIGTERM the command: it exits 143, saying so, and no process of its tree is left."""
    try:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert [p.pid for p in alive] == [], output[-3000:]
        assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
        assert "terminated; every process it started is stopped" in output
        return output
    finally:
        for p in [*tree, psutil.Process(process.pid) if process.poll() is None else None]:
            if p is not None and p.is_running():
                p.kill()


def _spawned_worker(p: psutil.Process) -> bool:
    return "multiprocessing.spawn" in " ".join(p.cmdline())


def test_sigterm_stops_serve_and_its_llama_cpp_server(gguf, tmp_path):
    process = _start("serve", str(gguf), "--context", "256", cwd=tmp_path)
    tree = _wait_for_child(process, lambda p: "llama_cpp.server" in " ".join(p.cmdline()))
    _terminate_and_check(process, tree)


def _memory_alone(recipe: Path) -> None:
    data = yaml.safe_load(recipe.read_text())
    data["eval"] = {**data["eval"], "memory": "alone"}
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))


def test_sigterm_stops_eval_and_its_memory_worker(tiny_run_copy, tmp_path):
    recipe = tiny_run_copy / "recipe.yaml"
    _memory_alone(recipe)
    process = _start("eval", str(recipe), "--run", str(tiny_run_copy), cwd=tmp_path)
    tree = _wait_for_child(process, _spawned_worker)
    _terminate_and_check(process, tree)


@pytest.mark.parametrize("executor", ["local"])
def test_sigterm_stops_an_experiment_and_its_memory_worker(tiny_recipe, tmp_path, executor):
    recipe = tiny_recipe(eval={"memory": "alone", "tfidf": {"enabled": False}})
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        yaml.safe_dump({"name": "exp", "recipe": recipe.name, "axes": {"lora.r": [2]}})
    )
    process = _start("experiment", str(experiment), "--executor", executor, cwd=tmp_path)
    tree = _wait_for_child(process, _spawned_worker)
    _terminate_and_check(process, tree)


def test_the_signal_handler_is_installed_by_the_entry_point_alone():
    """Importing the CLI changes no signal handling; `main()` does (checked in a fresh
    interpreter, where SIGTERM's handler is the default until then)."""
    code = (
        "import signal; from finetune import cli; "
        "assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
