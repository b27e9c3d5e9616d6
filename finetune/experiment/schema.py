"""The experiment schema: a base recipe, the axes its cells vary along, the general systems
every cell is compared with, and what a deployable system must meet.

Like the recipe schema, it rejects unknown keys, and every default and piece of help text
lives here (`finetune/docs.py` renders it into docs/experiments.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from finetune.recipe.schema import (
    BaselineConfig,
    CascadeConfig,
    ConstraintsConfig,
    PositiveInt,
    Section,
    TeacherConfig,
    _field,
)

AxisValues = Annotated[list[Any], Field(min_length=1)]


class ExecutorConfig(Section):
    kind: Literal["local", "ray"] = _field(
        "local",
        help="`local` runs the cells one after another in this process; `ray` runs each as a Ray task (a local instance, or the cluster at `RAY_ADDRESS`), Ray deciding how many at once. `finetune experiment --executor` overrides it.",
        synonyms=("executor", "backend"),
    )
    cpus_per_cell: Annotated[float, Field(gt=0)] = _field(
        1.0, help="CPUs Ray reserves for each cell.", synonyms=("cpus", "num_cpus")
    )
    gpus_per_cell: Annotated[float, Field(ge=0)] = _field(
        0.0, help="GPUs Ray reserves for each cell.", synonyms=("gpus", "num_gpus")
    )


class LabelsConfig(Section):
    human: list[PositiveInt] = _field(
        [],
        help="Training sizes (`data.max_train_examples`) whose cells learn from the human labels.",
        synonyms=("human_sizes",),
    )
    teacher: list[PositiveInt] = _field(
        [],
        help="Training sizes whose cells learn from the experiment's `teacher`: that many training rows, their human labels hidden, labelled by it.",
        synonyms=("teacher_sizes", "distilled"),
    )


class Experiment(Section):
    """A whole experiment file."""

    name: str = _field(
        help="Experiment name; used for its report directory. Letters, digits, `-`, `_` and `.`.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        synonyms=("title",),
    )
    description: str = _field(
        "", help="One line saying what question the experiment answers.", synonyms=("desc",)
    )
    recipe: str = _field(
        help="The base recipe every cell starts from, relative to this file.",
        synonyms=("base", "base_recipe"),
    )
    axes: dict[str, AxisValues] = _field(
        {},
        help="Dotted recipe keys and the values each takes, e.g. `{lora.r: [4, 16], data.max_train_examples: [50, 200]}`: the cells are every combination (a grid), in file order.",
        synonyms=("grid", "sweep", "vary"),
    )
    paired: list[dict[str, AxisValues]] = _field(
        [],
        help="Groups of keys that vary together instead of in a grid: in each group every list has the same length and the n-th values go into one cell, e.g. `[{model.base: [smollm2-135m-instruct, all-minilm-l6-v2], train.method: [lora, full]}]`. Each group is one more axis of the grid.",
        synonyms=("zipped", "together", "zip"),
    )
    set: dict[str, Any] = _field(
        {},
        help="Dotted recipe keys given one value in every cell, e.g. `{train.budget_minutes: 30, eval.prices.requests: 1000000}`: a change to the base recipe for this experiment, not an axis (the cells are not named by it).",
        synonyms=("overrides", "fixed", "constants"),
    )
    labels: LabelsConfig | None = _field(
        None,
        help="Where the cells' training labels come from, each source with its own training sizes: one more axis of the grid, whose cells set `data.max_train_examples` (and, for `teacher`, `data.teacher`). The learning curve draws a line per source; the report adds where the teacher's students keep its quality. Leave `data.max_train_examples` out of `axes` with it.",
        synonyms=("label_sources", "sources"),
    )
    teacher: TeacherConfig | None = _field(
        None,
        help="The `data.teacher` of the cells `labels.teacher` makes: its `system` is one of `general` (or of the recipe's baselines), and its `rows` must be `train`.",
        synonyms=("distill",),
    )
    general: list[BaselineConfig] = _field(
        [],
        help="The general systems every cell is compared with, written as recipe baselines (`eval.baselines` entries: a model with shots, an `engine`, an `endpoint`); they replace the base recipe's baselines in every cell. Empty: the recipe's own.",
        synonyms=("baselines", "general_systems"),
    )
    cascades: list[CascadeConfig] = _field(
        [],
        help="Cascades built in every cell (`eval.cascades` entries): the cell's specialist, or another of its systems, answering first and a general system of `general` taking the items it is least sure of; they replace the base recipe's cascades. Each joins the leaderboard, the Pareto fronts and the recommendation, with a curve against training size. Empty: the recipe's own.",
        synonyms=("cascade", "routing"),
    )
    judge_against: str | None = _field(
        None,
        help="QA: make the learning curve's metric the judge's win rate (`eval.judge`, ties as half) of each cell's specialist against this general system, by name, instead of the primary metric. The general system sits at 0.5; crossovers become exact sign tests on the judge's decisive items. Every cell's recipe needs `eval.judge`, judging this system.",
        synonyms=("judge", "judged_against", "opponent"),
    )
    constraints: ConstraintsConfig = _field(
        ConstraintsConfig(),
        help="What a system must meet to be recommended for deployment.",
        synonyms=("limits", "requirements"),
    )
    executor: ExecutorConfig = _field(
        ExecutorConfig(), help="Where the cells run.", synonyms=("execution", "run")
    )
    max_cells: PositiveInt = _field(
        64,
        help="Refuse a grid with more cells than this, a guard against a typo that multiplies the work.",
        synonyms=("cell_limit",),
    )
