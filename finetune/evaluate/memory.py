"""Each system's peak memory, measured alone.

On a CPU the evaluating process's resident set keeps what earlier systems left behind (the
allocator holds on to freed pages, and every library stays imported), so a system scored
after another is charged for it: a TF-IDF classifier scored after two language models peaked
"higher" than either. `eval.memory: alone` (the default) therefore measures each system in a
fresh process that loads it, plans all test items and scores the batch of its longest inputs,
and reads that process's peak resident set: what serving this system alone needs, its Python
runtime and libraries included. On CUDA the allocator's peak statistics are exact per system
and are read in the evaluating process (`shared`, which is also the quick choice for tests).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any

from finetune.data import load_split
from finetune.hardware import has_cuda, process_peak_bytes, to_accelerator
from finetune.recipe import Recipe
from finetune.systems.base import Context, Plan, System
from finetune.systems.registry import kind_of

log = logging.getLogger(__name__)


def method(recipe: Recipe) -> str:
    """How peak memory is measured here: `cuda` (the allocator's per-system peak), else the
    recipe's `eval.memory` (`alone` or `shared`)."""
    return "cuda" if has_cuda() else recipe.eval.memory


def measured_alone(recipe: Recipe, run_dir: Path, plans: list[Plan], on_done: Any = None) -> dict:
    """{system name: peak bytes}, each from a fresh process of its own."""
    peaks = {}
    for plan in plans:
        try:
            peaks[plan.system.name] = in_fresh_process(
                _alone, recipe, run_dir, plan.system, plan.key
            )
        except ChildProcessError as exc:  # killed for memory, say: say so and go on
            log.warning(
                "%s: its peak memory could not be measured alone (%s); the evaluating "
                "process's figure is kept for it",
                plan.system.name,
                exc,
            )
        if on_done:
            on_done()
    return peaks


def in_fresh_process(function: Any, *args: Any) -> Any:
    """`function(*args)` in a fresh process that inherits nothing from this one (spawned). It
    never outlives the call: an interrupt or a SIGTERM here stops it too, before this process
    goes on to exit. A failure in it, or its death, is a `ChildProcessError`."""
    spawn = multiprocessing.get_context("spawn")
    receive, send = spawn.Pipe(duplex=False)
    process = spawn.Process(target=_reply, args=(send, function, *args))
    process.start()
    send.close()  # the child's end: EOF here once the child is gone
    try:
        ok, value = receive.recv()
    except EOFError:
        process.join()
        raise ChildProcessError(f"it died with exit code {process.exitcode}") from None
    finally:
        if process.is_alive():
            process.terminate()
        process.join()
        receive.close()
    if not ok:
        raise ChildProcessError(value)
    return value


def _reply(connection: Any, function: Any, *args: Any) -> None:
    try:
        connection.send((True, function(*args)))
    except Exception as exc:
        connection.send((False, f"{type(exc).__name__}: {exc}"))


def _alone(recipe: Recipe, run_dir: Path, system: System, key: str) -> int:
    """In a fresh process: load the system, plan every test item, score the longest batch."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    logging.disable(logging.WARNING)  # the evaluating process has already said what loading says

    kind = kind_of(key, run_dir, recipe)
    loaded = kind.load(recipe, run_dir, key)
    loaded.model = to_accelerator(loaded.model)
    context = Context(run_dir, load_split(recipe, "test"), load_split(recipe, "train"))
    plan = kind.plan(recipe, system, key, loaded, context)
    batch = recipe.eval.batch_size
    longest = sorted(range(len(plan.inputs)), key=lambda i: -plan.input_tokens[i])[:batch]
    plan.infer.run(loaded.model, [plan.inputs[i] for i in longest], batch, True)
    return process_peak_bytes()
