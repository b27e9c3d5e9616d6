"""Running an experiment's cells: each an ordinary tracked, resumable run, trained (or resumed,
or reused when finished) and then evaluated unless its evaluation already covers the cell's
systems. A cell that fails is reported with its error and the other cells go on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.experiment.cells import Cell, state
from finetune.runs import PARTIAL_SUFFIX

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    cell: Cell
    train: str  # what was done: train | resume | reuse
    evaluate: str  # evaluate | reuse
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_cell(cell: Cell, recipe_path: Path, console: Any = None) -> Outcome:
    """Train and evaluate one cell, doing only what its run does not already hold."""
    from finetune.evaluate import evaluate
    from finetune.train import train

    plan = state(cell)
    run = cell.run_dir()
    overrides = [f"{k}={json.dumps(v)}" for k, v in cell.values.items()]
    try:
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
        return Outcome(cell, plan["train"], plan["evaluate"], error)
    return Outcome(cell, plan["train"], plan["evaluate"])
