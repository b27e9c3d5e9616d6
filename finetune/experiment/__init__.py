"""Experiments: a grid of cells over a base recipe (`schema`, `cells`), each cell an ordinary
run trained and evaluated once (`runner`)."""

from finetune.experiment.cells import Cell, grid, is_experiment_file, load_experiment, state
from finetune.experiment.runner import Outcome, run_cell, run_cells
from finetune.experiment.schema import Experiment

__all__ = [
    "Cell",
    "Experiment",
    "Outcome",
    "grid",
    "is_experiment_file",
    "load_experiment",
    "run_cell",
    "run_cells",
    "state",
]
