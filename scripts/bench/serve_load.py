"""Serving under load: the served specialist against the general model on llama.cpp's server.

Both servers run side by side on 127.0.0.1 (`finetune serve RUN` and `finetune serve
qwen2.5-coder-1.5b-instruct`), and get the same chat requests: the endpoint baseline's own
messages for the run's test items. For N concurrent clients in CLIENTS, each server gets a
fixed number of requests, the two servers taking turns; a client sends its next request when
its answer comes. Reported per server and N: requests/s, p50/p95/p99 latency, errors, the
answers' accuracy, and the server's peak resident memory (its process tree, sampled). The
ratios are specialist over general within the same N.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import ROOT, child_env, finetune_cmd

CLIENTS = (1, 4, 16)
GENERAL = "qwen2.5-coder-1.5b-instruct"
START_WAIT = 600  # seconds for a server to answer: the first start assembles the GGUF
REQUEST_TIMEOUT = 120


def load_test(bench: Any, run_dir: str) -> dict[str, Any]:
    from finetune.data import load_split
    from finetune.recipe import load_recipe
    from finetune.systems.endpoint import chat_messages

    recipe = load_recipe(Path(run_dir) / "recipe.yaml")
    items = load_split(recipe, "test")[: bench.scaled(64, 32)]
    bodies = [chat_messages(recipe, item["text"], []) for item in items]
    golds = [item["label"] for item in items]
    logs = bench.work / "logs"
    specialist = f"{recipe.name}/{Path(run_dir).name}"
    with (
        _server(["serve", run_dir], specialist, logs / "serve-run.log") as ours,
        _server(
            ["serve", GENERAL, "--context", "2048"], GENERAL, logs / "serve-general.log"
        ) as general,
    ):
        results = {"items": len(items), "clients": {}}
        for n in CLIENTS:
            results["clients"][str(n)] = {
                "specialist": _measure(ours, bodies, golds, recipe, n),
                "general": _measure(general, bodies, golds, recipe, n),
            }
            _ratios(results["clients"][str(n)])
    return results


@dataclass
class _Server:
    url: str
    model: str
    process: subprocess.Popen


@contextlib.contextmanager
def _server(args: list[str], model: str, log: Path) -> Iterator[_Server]:
    """`finetune <args> --port P` started and waited for; SIGTERM afterwards."""
    from finetune.deploy.llama_server import free_port, stop

    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        cmd = finetune_cmd(*args, "--port", str(port))
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
        )
        server = _Server(f"http://127.0.0.1:{port}/v1", model, process)
        try:
            _wait(server, log)
            yield server
        finally:
            stop(process, 60)


def _wait(server: _Server, log: Path) -> None:
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server stopped; see {log}")
        try:
            urllib.request.urlopen(f"{server.url}/models", timeout=5).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server did not answer within {START_WAIT} s; see {log}")


def _measure(server: _Server, bodies: list, golds: list, recipe: Any, clients: int) -> dict:
    """Every body once, from `clients` concurrent clients, with the server's peak memory."""
    from finetune.tasks.labels import label_of

    sampler = _PeakSampler(server.process.pid)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda b: _ask(server, b, recipe), bodies))
    seconds = time.perf_counter() - started
    peak = sampler.stop()
    latencies = sorted(a[1] for a in answers if a[0] is not None)
    right = sum(
        label_of(a[0], recipe.task.labels) == g for a, g in zip(answers, golds, strict=True) if a[0]
    )
    return {
        "requests": len(bodies),
        "errors": sum(a[0] is None for a in answers),
        "requests_per_s": round(len(bodies) / seconds, 3),
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "p99_ms": _percentile(latencies, 99),
        "accuracy": round(right / len(bodies), 4),
        "peak_rss_bytes": peak,
    }


def _ask(server: _Server, messages: list, recipe: Any) -> tuple[str | None, float]:
    body = {
        "model": server.model,
        "messages": messages,
        "max_tokens": recipe.eval.max_new_tokens,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"{server.url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer none"},
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as r:
            answer = json.loads(r.read())["choices"][0]["message"]["content"]
    except (OSError, KeyError, ValueError, urllib.error.HTTPError):
        return None, 0.0
    return answer, 1000 * (time.perf_counter() - start)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 1)


def _ratios(pair: dict[str, dict]) -> None:
    ours, theirs = pair["specialist"], pair["general"]
    pair["throughput_ratio"] = round(ours["requests_per_s"] / theirs["requests_per_s"], 2)
    if ours["p50_ms"] and theirs["p50_ms"]:
        pair["p50_ratio"] = round(ours["p50_ms"] / theirs["p50_ms"], 3)


class _PeakSampler:
    """The largest resident set of a process and its descendants, sampled every 0.1 s."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root, self.peak, self._done = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._done.is_set():
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            self._done.wait(0.1)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for n, pair in result["clients"].items():
        for who in ("specialist", "general"):
            m = pair[who]
            rows.append([
                who, n, f"{m['requests_per_s']:.2f}", *(f"{m[k]:.0f}" if m[k] else "-" for k in ("p50_ms", "p95_ms", "p99_ms")),
                str(m["errors"]), f"{m['accuracy']:.3f}", f"{m['peak_rss_bytes'] / 2**30:.2f}",
                f"{pair['throughput_ratio']:.2f}x" if who == "specialist" else "",
            ])  # fmt: skip
    return rows
