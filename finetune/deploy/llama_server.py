"""llama.cpp's OpenAI-compatible server (llama-cpp-python's) for a GGUF, on 127.0.0.1 and a
free port: started, health-checked on `/v1/models`, and stopped when done. `finetune serve`
runs one for an endpoint baseline to point at; the tests run one to check the endpoint path
against a real server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from finetune.errors import FinetuneError

log = logging.getLogger(__name__)
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(
    gguf: Path,
    *,
    context: int = 2048,
    threads: int | None = None,
    port: int | None = None,
    alias: str | None = None,
    ready_seconds: float = 180.0,
) -> Iterator[str]:
    """Serve `gguf` and yield its base URL (`http://127.0.0.1:<port>/v1`); the server is stopped
    on leaving, whatever happened. `alias` is the model name it answers to (default: the
    file's stem). `logits_all` is on so that completions can echo prompt log-probabilities
    (wrong by one position in llama-cpp-python 0.3.36, which the endpoint probe refuses)."""
    port = port or free_port()
    threads = threads or len(os.sched_getaffinity(0))
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        alias or gguf.stem,
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_ctx",
        str(context),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--logits_all",
        "true",
    ]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://{HOST}:{port}/v1"
            _wait_ready(process, base_url, ready_seconds, output)
            log.info("llama.cpp server for %s at %s (pid %d)", gguf.name, base_url, process.pid)
            yield base_url
        finally:
            stop(process, 15)


def _wait_ready(process: subprocess.Popen, base_url: str, seconds: float, output) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FinetuneError(
                f"the llama.cpp server exited with code {process.returncode} before it was "
                f"ready:\n{_tail(output)}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{base_url}/models", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise FinetuneError(
        f"the llama.cpp server was not ready within {seconds:.0f} s:\n{_tail(output)}"
    )


def _tail(output, limit: int = 2000) -> str:
    output.seek(0)
    return output.read().decode(errors="replace")[-limit:]


def stop(process: subprocess.Popen, seconds: float) -> None:
    """Ask a child process to end (SIGTERM), and kill it if it has not within `seconds`."""
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
