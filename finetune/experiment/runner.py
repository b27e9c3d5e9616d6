"""Running an experiment's cells: each an ordinary tracked, resumable run, trained (or resumed,
or reused when finished) and then evaluated unless its evaluation already covers the cell's
systems. A cell that fails is reported with its error and the other cells go on.

Locally the cells run one after another in this process. On Ray each cell is a task with the
experiment's per-cell resources, on a local instance or the cluster at `RAY_ADDRESS`; Ray
decides how many run at once, and the workbench keeps the grid, the hashes and the reuse. Data
is prepared and models are materialized here first, so that no two tasks build the same files.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune import quiet
from finetune.deps import require
from finetune.errors import FinetuneError
from finetune.experiment.cells import Cell, state
from finetune.experiment.schema import ExecutorConfig
from finetune.runs import PARTIAL_SUFFIX

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    cell: Cell
    train: str  # what was done: train | resume | reuse
    evaluate: str  # evaluate | reuse
    error: str | None = None
    worker: str = ""  # host:pid of the process that ran it

    @property
    def ok(self) -> bool:
        return self.error is None


def run_cell(cell: Cell, recipe_path: Path, console: Any = None) -> Outcome:
    """Train and evaluate one cell, doing only what its run does not already hold."""
    quiet.apply()  # a Ray worker starts here, not in the CLI
    from finetune.evaluate import evaluate
    from finetune.teach import teach
    from finetune.train import train

    plan, worker = state(cell), f"{socket.gethostname()}:{os.getpid()}"
    run = cell.run_dir()
    overrides = [f"{k}={json.dumps(v)}" for k, v in cell.values.items()]
    try:
        if cell.recipe.data.teacher is not None:  # asks only what it has not answered yet
            teach(cell.recipe, console=console)
        if plan["train"] == "train":
            train(
                cell.recipe,
                recipe_path=recipe_path,
                overrides=overrides,
                run_id=run.name,
                console=console,
            )
        elif plan["train"] == "resume":
            train(
                cell.recipe,
                recipe_path=recipe_path,
                resume=run.with_name(run.name + PARTIAL_SUFFIX),
                console=console,
            )
        if plan["evaluate"] == "evaluate":
            evaluate(cell.recipe, run, console=console)
    except Exception as exc:  # one failing cell must not stop the others
        # A problem the user can fix says what it is; anything else also says what kind it is.
        error = str(exc) if isinstance(exc, FinetuneError) else f"{type(exc).__name__}: {exc}"
        log.error("cell %d (%s) failed: %s", cell.index, cell.label, error)
        return Outcome(cell, plan["train"], plan["evaluate"], error, worker)
    return Outcome(cell, plan["train"], plan["evaluate"], worker=worker)


def run_cells(
    cells: list[Cell], recipe_path: Path, executor: ExecutorConfig, console: Any = None
) -> list[Outcome]:
    """Every cell's outcome, in the cells' order, run where `executor.kind` says."""
    if executor.kind == "local":
        outcomes = []
        for n, cell in enumerate(cells, start=1):
            if console is not None:
                console.print(f"[{n}/{len(cells)}] cell {cell.index}: {cell.label}", markup=False)
            outcomes.append(run_cell(cell, recipe_path, console))
        return outcomes
    return _on_ray(cells, recipe_path, executor)


def _on_ray(cells: list[Cell], recipe_path: Path, executor: ExecutorConfig) -> list[Outcome]:
    ray = require("ray", package="ray", needed_for="`--executor ray`")
    _build_shared_inputs(cells)
    if not ray.is_initialized():
        ray.init()  # the cluster at RAY_ADDRESS when that is set, else a local instance
    task = ray.remote(num_cpus=executor.cpus_per_cell, num_gpus=executor.gpus_per_cell)(run_cell)
    return ray.get([task.remote(cell, recipe_path) for cell in cells])


def _build_shared_inputs(cells: list[Cell]) -> None:
    """Prepare each cell's data, have its teacher label it, and materialize its base model
    once, before tasks share them."""
    from finetune.data import prepare
    from finetune.models import resolve
    from finetune.teach import teach

    for cell in cells:
        if cell.recipe.data.teacher is not None:
            teach(cell.recipe)
        if state(cell)["train"] != "reuse":
            prepare(cell.recipe)
            resolve(cell.recipe.model.base)
