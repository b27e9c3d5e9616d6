"""`finetune serve RUN [RUN ...]`: finished runs behind one HTTP server (FastAPI on uvicorn).

Each run is served under the name `<recipe name>/<run id>` and
answers as `finetune predict` answers: the same plan and inference as the evaluation, so a
served answer is the evaluated one. Routes:

- `POST /v1/predict` `{model, input}` (a text or a list): one row per text, as `predict`
  writes it (`label` and every label's `probabilities`, `entities` with spans, or `answer`);
  `POST /v1/classify` is the same for classification runs only.
- `POST /v1/chat/completions` and `/v1/completions`, OpenAI's shapes, for runs of a prompted
  kind (decoder and encoder-decoder specialists): the last user message (or the prompt) is the
  text, and a leading copy of the run's instruction is taken off it, so a client that sends
  the whole prompt, as the workbench's endpoint baseline does, gets the answer of one that
  sends the text alone. The answer is the run's: its label, or its generated answer; sampling
  settings are ignored, and `echo` is refused.
- `GET /health` (with each run's request and batch counts) and `GET /v1/models`.

With `--fallback NAME` (`fallback`), the run serves its evaluated cascade: texts the
specialist is unsure of are answered by its baseline NAME, and each answer says who gave it.

Concurrent requests to one run are batched: one worker per run takes every waiting request,
up to `max_batch` texts, and runs them as one batch (`Batcher`). Texts waiting or running are
bounded by `max_queue`: past it a request gets 503 with Retry-After, and a request that could
never fit gets 413. Bad requests get 4xx with OpenAI's error shape, never a crash.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.deploy.fallback import Escalation, route_for
from finetune.errors import FinetuneError
from finetune.evaluate import evaluated_recipe
from finetune.hardware import to_accelerator
from finetune.recipe import Recipe, load_recipe
from finetune.runs import is_complete
from finetune.systems.answers import Answers, answer_items, context_for
from finetune.systems.base import SPECIALIST, Context, Loaded, System
from finetune.systems.pool import loaded_model
from finetune.systems.registry import instance_key, kind_of, systems_of
from finetune.tasks.prompts import untrained_instruction
from finetune.tasks.types import task_type

MAX_INPUT_CHARS = 100_000  # one text; longer ones get 413


class Overloaded(Exception):
    """More texts are waiting than the queue holds; `retry_after` seconds is a fair wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"overloaded; retry after {retry_after} s")
        self.retry_after = retry_after


class Batcher:
    """One worker thread for one model: requests waiting when it is free run as one batch.

    `run(items)` answers a list of items in order. `submit` returns a future of the request's
    answers, or raises `Overloaded` when `max_queue` texts are already waiting or running."""

    def __init__(
        self,
        run: Callable[[list[dict]], Answers],
        *,
        max_batch: int = 32,
        max_queue: int = 256,
    ) -> None:
        self.run, self.max_batch, self.max_queue = run, max_batch, max_queue
        self.waiting: collections.deque = collections.deque()
        self.pending = 0  # texts waiting or running
        self.batches = self.requests = 0
        self.rate = 0.0  # texts per second, as the last batches ran
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, daemon=True, name="finetune-batcher")
        self._thread.start()

    def submit(self, items: list[dict]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self.pending + len(items) > self.max_queue:
                raise Overloaded(self._retry_after())
            self.pending += len(items)
            self.requests += 1
            self.waiting.append((items, future))
            self._cond.notify()
        return future

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.pending / self.rate)) if self.rate else 1

    def _next(self) -> list[tuple[list[dict], concurrent.futures.Future]] | None:
        """Every waiting request that fits in one batch (the first always does)."""
        with self._cond:
            while not self.waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            taken = [self.waiting.popleft()]
            size = len(taken[0][0])
            while self.waiting and size + len(self.waiting[0][0]) <= self.max_batch:
                size += len(self.waiting[0][0])
                taken.append(self.waiting.popleft())
            return taken

    def _work(self) -> None:
        while (taken := self._next()) is not None:
            items = [item for request, _ in taken for item in request]
            start = time.perf_counter()
            try:
                answers = self.run(items)
            except Exception as exc:  # each request gets the error; the worker goes on
                for _, future in taken:
                    future.set_exception(exc)
            else:
                _deliver(taken, answers)
            self._done(len(items), time.perf_counter() - start)

    def _done(self, count: int, seconds: float) -> None:
        with self._cond:
            self.pending -= count
            self.batches += 1
            self.rate = count / seconds if seconds > 0 else self.rate

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)


def _deliver(taken: list, answers: Answers) -> None:
    """One batch's answers split back into its requests, in order."""
    start = 0
    for request, future in taken:
        end = start + len(request)
        future.set_result(
            Answers(
                answers.rows[start:end],
                answers.input_tokens[start:end],
                answers.output_tokens[start:end],
            )
        )
        start = end


@dataclass
class Served:
    """One run, loaded, with the worker it shares with the runs of its base (or its own)."""

    name: str
    run_dir: Path
    recipe: Recipe
    loaded: Loaded
    batcher: Batcher | None = None
    prompted: bool = False  # answers chat and completions
    instructions: tuple[str, ...] = field(default=())
    escalation: Escalation | None = None  # `--fallback`: the unsure texts' second system

    def run(self, items: list[dict]) -> Answers:
        """Items through this run's specialist, as `finetune predict` runs them."""
        if self.loaded.activate is not None:
            self.loaded.activate()
        system = System(SPECIALIST, "specialist", "run")
        context = Context(self.run_dir, [], [])
        return answer_items(self.recipe, system, SPECIALIST, self.loaded, context, items)

    def answer(self, texts: list[str]) -> concurrent.futures.Future:
        items = [{"id": str(i), "text": t, "served": self.name} for i, t in enumerate(texts)]
        first = self.batcher.submit(items)
        return self.escalation.follow(first, items) if self.escalation else first


def served_runs(
    run_dirs: list[Path],
    *,
    share_base: bool = True,
    fallback: str | None = None,
    threshold: float | None = None,
    **limits: Any,
) -> contextlib.AbstractContextManager:
    """Load each run's specialist, with its worker; `limits` go to each `Batcher`. With
    `share_base`, LoRA runs of one base share it in memory and one worker. With `fallback`
    (one run only), its texts below the cascade's threshold go to that baseline (`fallback`)."""
    return _served(run_dirs, share_base, (fallback, threshold), limits)


@contextlib.contextmanager
def _served(
    run_dirs: list[Path], share_base: bool, cascade: tuple, limits: dict[str, Any]
) -> Iterator[dict[str, Served]]:
    recipes = [_finished(d) for d in run_dirs]
    runs = list(zip(_names(run_dirs, recipes), run_dirs, recipes, strict=True))
    if cascade[0] is not None and len(runs) > 1:
        raise FinetuneError("--fallback: serve one run with it; its cascade is that run's own")
    with contextlib.ExitStack() as stack:
        served: dict[str, Served] = {}
        for group in _groups(runs, share_base):
            served.update(_serve_group(group, limits, stack))
        if cascade[0] is not None:
            one = served[runs[0][0]]
            one.escalation = _escalation(one, *cascade, limits, stack)
        yield {name: served[name] for name, _, _ in runs}


def _escalation(
    served: Served, fallback: str, threshold: float | None, limits: dict, stack
) -> Escalation:
    """The run's fallback loaded here (or its endpoint's client), with a worker of its own."""
    # The fallback is a system of the evaluation that chose the threshold.
    recipe, run_dir = evaluated_recipe(served.run_dir), served.run_dir
    if recipe.task.type != "classification":
        raise FinetuneError(
            f"--fallback: a cascade reads label scores; {served.name} is a {recipe.task.type} run"
        )
    route = route_for(run_dir, recipe, fallback, threshold)
    system = next(s for s in systems_of(recipe) if s.name == fallback)
    key = instance_key(recipe, system)
    kind_of(key, run_dir, recipe).check(recipe, key)
    loaded = stack.enter_context(loaded_model(recipe, run_dir, key))
    context = context_for(recipe, run_dir, system)
    batcher = Batcher(
        lambda items: answer_items(recipe, system, key, loaded, context, items), **limits
    )
    stack.callback(batcher.close)
    return Escalation(route, list(recipe.task.labels), batcher)


def _groups(runs: list[tuple[str, Path, Recipe]], share_base: bool) -> list[list[tuple]]:
    """Runs whose kind says they can share a base, together; every other run alone."""
    groups: dict[Any, list[tuple]] = {}
    for run in runs:
        name, run_dir, recipe = run
        key = kind_of(SPECIALIST, run_dir, recipe).shared_base(recipe, run_dir)
        groups.setdefault(key if share_base and key is not None else name, []).append(run)
    return list(groups.values())


def _serve_group(group: list[tuple], limits: dict, stack: contextlib.ExitStack) -> dict:
    if len(group) == 1:
        _, run_dir, recipe = group[0]
        loads = [stack.enter_context(loaded_model(recipe, run_dir, SPECIALIST))]
    else:
        kind = kind_of(SPECIALIST, group[0][1], group[0][2])
        loads = kind.load_sharing([(recipe, run_dir) for _, run_dir, recipe in group])
        model = to_accelerator(loads[0].model)
        for loaded in loads:
            loaded.model = model
        stack.callback(loads.clear)  # the last references to the shared model go
    served = {
        n: _serve_one(n, d, r, loaded) for (n, d, r), loaded in zip(group, loads, strict=True)
    }
    batcher = Batcher(_runner(served), **limits)
    stack.callback(batcher.close)
    for one in served.values():
        one.batcher = batcher
    return served


def _runner(served: dict[str, Served]) -> Callable[[list[dict]], Answers]:
    """One batch's items, each through its own run (its adapter made active first), in order."""

    def run(items: list[dict]) -> Answers:
        rows: list = [None] * len(items)
        inputs, outputs = [0] * len(items), [0] * len(items)
        for name in dict.fromkeys(item["served"] for item in items):
            where = [i for i, item in enumerate(items) if item["served"] == name]
            answers = served[name].run([items[i] for i in where])
            for k, i in enumerate(where):
                rows[i], inputs[i], outputs[i] = (
                    answers.rows[k],
                    answers.input_tokens[k],
                    answers.output_tokens[k],
                )
        return Answers(rows, inputs, outputs)

    return run


def _finished(run_dir: Path) -> Recipe:
    if not is_complete(run_dir):
        raise FinetuneError(f"{run_dir}: not a finished training run; serve a complete run")
    return load_recipe(run_dir / "recipe.yaml")


def _names(run_dirs: list[Path], recipes: list[Recipe]) -> list[str]:
    """`<recipe name>/<run id>`: a name that changes with the weights, since clients (the
    workbench's endpoint baseline among them) cache answers by model name."""
    names = [f"{r.name}/{d.name}" for d, r in zip(run_dirs, recipes, strict=True)]
    twice = [n for n, c in collections.Counter(names).items() if c > 1]
    if twice:
        raise FinetuneError(f"the same run is given twice: {', '.join(twice)}")
    return names


def _serve_one(name: str, run_dir: Path, recipe: Recipe, loaded: Loaded) -> Served:
    served = Served(name, run_dir, recipe, loaded)
    served.prompted = kind_of(SPECIALIST, run_dir, recipe).prompted
    # Longest first: the untrained instruction (with the label list) begins with the trained one.
    given = {recipe.task.instruction, untrained_instruction(recipe.task)} - {""}
    served.instructions = tuple(sorted(given, key=len, reverse=True))
    return served


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def answer_text(recipe: Recipe, row: dict[str, Any]) -> str:
    """A predicted row as a chat answer: the generated text where the system wrote one, else
    the answer itself (the label a classifier chose)."""
    if isinstance(row.get("raw"), str):
        return row["raw"]
    value = row[task_type(recipe.task).target]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
