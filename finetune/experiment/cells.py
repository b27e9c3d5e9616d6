"""An experiment's cells: the grid of its axes (paired groups varying together), each cell an
ordinary recipe with the cell's values set, validated before anything runs, and identified by
a content hash of what it trains.

A cell's run lives in `<runs_dir>/<recipe name>/cell-<hash>`, so the same training in another
experiment, or a re-run of this one, finds it: finished, it is reused; partial, resumed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from finetune.errors import did_you_mean
from finetune.experiment.schema import Experiment
from finetune.judge import judged_against
from finetune.recipe import Problem, Recipe, RecipeError, load_recipe, recipe_to_dict
from finetune.recipe.load import _Layers, describe
from finetune.runs import PARTIAL_SUFFIX, is_complete

# What a cell's training depends on: everything but how it is named, evaluated and tracked.
UNTRAINED_KEYS = ("name", "description", "eval", "tracking")
# Training settings added since cells were first hashed: left unset (None), a cell keeps the
# hash, and so the finished run, it had before they existed.
LATER_KEYS = (("data", "unlabelled"), ("data", "teacher"), ("train", "min_steps"))


@dataclass(frozen=True)
class Cell:
    index: int
    values: dict[str, Any]  # the dotted recipe keys this cell sets, and their values
    recipe: Recipe
    key: str  # content hash of the resolved recipe's training part

    @property
    def label(self) -> str:
        return label_of(self.values) or "(the recipe)"

    def run_dir(self) -> Path:
        return Path(self.recipe.tracking.runs_dir) / self.recipe.name / f"cell-{self.key}"


def load_experiment(path: str | Path) -> tuple[Experiment, list[Cell]]:
    """Read and validate an experiment file and every cell's resolved recipe; every problem at
    once, each naming the file and the dotted key."""
    path = Path(path)
    raw = _read(path)
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as exc:
        layers = _Layers(raw, {})
        raise RecipeError(
            [describe(err, layers, str(path), root=Experiment) for err in exc.errors()]
        ) from None
    problems = _shape_problems(path, experiment)
    if problems:
        raise RecipeError(problems)
    cells, problems = _resolve(path, experiment)
    problems += _judge_problems(path, experiment, cells)
    if problems:
        raise RecipeError(problems)
    return experiment, cells


def is_experiment_file(path: str | Path) -> bool:
    """An experiment names its base recipe under `recipe:`; a recipe has no such key."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "recipe" in data


def grid(experiment: Experiment) -> list[dict[str, Any]]:
    """Every cell's values: the product of the axes and of the paired groups, in file order."""
    dimensions = [[{key: v} for v in values] for key, values in experiment.axes.items()]
    for group in experiment.paired:
        dimensions.append(
            [dict(zip(group, row, strict=True)) for row in zip(*group.values(), strict=True)]
        )
    if experiment.labels is not None:
        dimensions.append(label_sources(experiment))
    return [
        {k: v for part in combination for k, v in part.items()}
        for combination in itertools.product(*dimensions)
    ]


TEACHER_KEY, SIZE_KEY = "data.teacher", "data.max_train_examples"


def label_sources(experiment: Experiment) -> list[dict[str, Any]]:
    """The `labels` axis: each human size with no teacher, then each teacher size with the
    experiment's teacher, written out in full (so a cell's hash names its teacher)."""
    labels = experiment.labels
    teacher = experiment.teacher.model_dump(mode="json") if experiment.teacher else None
    human = [{TEACHER_KEY: None, SIZE_KEY: n} for n in labels.human]
    return human + [{TEACHER_KEY: teacher, SIZE_KEY: n} for n in labels.teacher]


def source(values: dict[str, Any]) -> str | None:
    """`human` or `teacher` for a cell of the `labels` axis, else None."""
    if TEACHER_KEY not in values:
        return None
    return "human" if values[TEACHER_KEY] is None else "teacher"


def cell_key(recipe: Recipe) -> str:
    """12 hex digits of the sha256 of the resolved recipe's training part, keys sorted. A
    `data.split_seed` equal to `seed` is the default spelled out (an experiment that adds a seed
    axis pins it), so it hashes as the default does: the same training, the same cell."""
    trained = {k: v for k, v in recipe_to_dict(recipe).items() if k not in UNTRAINED_KEYS}
    if trained["data"]["split_seed"] == trained["seed"]:
        trained["data"] = {**trained["data"], "split_seed": None}
    for section, key in LATER_KEYS:  # at their default, they hash as before they existed
        if trained[section].get(key) is None:
            trained[section] = {k: v for k, v in trained[section].items() if k != key}
    text = json.dumps(trained, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def state(cell: Cell) -> dict[str, str]:
    """What running the cell would do: train, resume or reuse its run; evaluate it or not."""
    run = cell.run_dir()
    partial = run.with_name(run.name + PARTIAL_SUFFIX)
    if is_complete(run):
        train = "reuse"
    elif partial.is_dir():
        train = "resume"
    else:
        train = "train"
    evaluated = train == "reuse" and _evaluated_systems(run) == _systems(cell.recipe)
    return {"train": train, "evaluate": "reuse" if evaluated else "evaluate"}


def _evaluated_systems(run: Path) -> set[str] | None:
    results = run / "eval" / "results.json"
    if not results.is_file():
        return None
    return {s["name"] for s in json.loads(results.read_text())["systems"]}


def _systems(recipe: Recipe) -> set[str]:
    from finetune.systems.registry import systems_of

    return {s.name for s in systems_of(recipe)}


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError([Problem(str(path), "", "experiment file does not exist")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError([Problem(str(path), "", f"invalid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise RecipeError(
            [Problem(str(path), "", "an experiment must be a mapping with recipe, axes, ...")]
        )
    return data


def _shape_problems(path: Path, experiment: Experiment) -> list[Problem]:
    where, problems = str(path), []
    if not (path.parent / experiment.recipe).is_file():
        problems.append(
            Problem(
                where,
                "recipe",
                f"recipe file '{experiment.recipe}' does not exist (paths are relative to {path.parent})",
            )
        )
    seen = set(experiment.axes)
    for i, group in enumerate(experiment.paired):
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            problems.append(
                Problem(
                    where,
                    f"paired.{i}",
                    f"the lists of a group vary together and need the same length; found {listed}",
                )
            )
        for key in group:
            if key in seen:
                problems.append(
                    Problem(
                        where,
                        f"paired.{i}.{key}",
                        "this key already varies in another axis; give it once",
                    )
                )
            seen.add(key)
    problems += _labels_problems(where, experiment, seen)
    problems += [
        Problem(where, f"set.{key}", "this key varies in an axis; give it in one place")
        for key in experiment.set
        if key in seen or (experiment.labels is not None and key in (SIZE_KEY, TEACHER_KEY))
    ]
    size = len(label_sources(experiment)) if experiment.labels is not None else 1
    for values in [*experiment.axes.values(), *(next(iter(g.values())) for g in experiment.paired)]:
        size *= len(values)
    if size > experiment.max_cells:
        problems.append(
            Problem(
                where,
                "axes",
                f"the grid has {size} cells, more than max_cells ({experiment.max_cells}); raise max_cells if that is meant",
            )
        )
    return problems


def _labels_problems(where: str, experiment: Experiment, varied: set[str]) -> list[Problem]:
    """`labels` sets the training size and the teacher itself, has a teacher for its teacher
    sizes, and that teacher labels the training rows the size caps."""
    labels, teacher, problems = experiment.labels, experiment.teacher, []
    if labels is None:
        if teacher is not None:
            problems.append(Problem(where, "teacher", "is read only by labels.teacher; add it"))
        return problems
    problems += [
        Problem(where, f"axes.{key}", "labels sets it in every cell; remove it from the axes")
        for key in (SIZE_KEY, TEACHER_KEY)
        if key in varied
    ]
    if not labels.human and not labels.teacher:
        problems.append(Problem(where, "labels", "give training sizes to human, teacher or both"))
    if labels.teacher and teacher is None:
        problems.append(
            Problem(where, "teacher", "labels.teacher has sizes, but no teacher is named; add one")
        )
    if teacher is not None and teacher.rows != "train":
        problems.append(
            Problem(
                where,
                "teacher.rows",
                "must be `train`: a teacher cell's size caps the training rows it labels",
            )
        )
    return problems


def _judge_problems(path: Path, experiment: Experiment, cells: list[Cell]) -> list[Problem]:
    """`judge_against` names a general system every cell's judge compares its specialist with."""
    name = experiment.judge_against
    if name is None:
        return []
    for cell in cells:
        if cell.recipe.eval.judge is None:
            return [
                Problem(
                    str(path), "judge_against", "needs eval.judge in the cells' recipe; add one"
                )
            ]
        judged = judged_against(cell.recipe)
        if name not in judged:
            return [
                Problem(
                    str(path),
                    "judge_against",
                    f"{name!r} is not judged against the specialist (the judge compares it with "
                    f"{', '.join(judged)}).{did_you_mean(name, judged)}",
                )
            ]
    return []


def _resolve(path: Path, experiment: Experiment) -> tuple[list[Cell], list[Problem]]:
    """Each cell's recipe, validated; problems that several cells share are given once."""
    recipe_path = path.parent / experiment.recipe
    general = [b.model_dump(mode="json", exclude_defaults=True) for b in experiment.general]
    extra = {"eval.baselines": general} if general else {}
    if experiment.cascades:
        extra["eval.cascades"] = [
            c.model_dump(mode="json", exclude_defaults=True) for c in experiment.cascades
        ]
    extra |= experiment.set
    extra |= _fixed_split(recipe_path, experiment)
    extra["tracking.wandb.group"] = experiment.name  # the cells' runs, grouped in W&B
    cells, problems = [], {}
    for index, values in enumerate(grid(experiment)):
        label = label_of(values)
        origin = f"{path} (cell {index}: {label})" if label else str(path)
        try:
            recipe = load_recipe(recipe_path, values={**values, **extra}, origin=origin)
        except RecipeError as exc:
            for p in exc.problems:
                problems.setdefault((p.key, p.message), p)
            continue
        cell = Cell(index, values, recipe, cell_key(recipe))
        twin = next((c for c in cells if c.key == cell.key), None)
        if twin is not None:
            message = (
                f"trains exactly what cell {twin.index} ({twin.label}) trains: an axis that "
                "changes only evaluation or tracking gives no new cell; vary it in its own experiment"
            )
            problems.setdefault(("", message), Problem(origin, "axes", message))
        cells.append(cell)
    return cells, list(problems.values())


def _fixed_split(recipe_path: Path, experiment: Experiment) -> dict[str, Any]:
    """Where cells vary `seed`, the split stays the base recipe's, so every cell is tested on
    the same items (unless the experiment varies `data.split_seed` itself)."""
    varied = set(experiment.axes) | {k for group in experiment.paired for k in group}
    if "seed" not in varied or "data.split_seed" in varied:
        return {}
    try:
        base = load_recipe(recipe_path)
    except RecipeError:
        return {}  # reported with each cell
    return {
        "data.split_seed": base.data.split_seed if base.data.split_seed is not None else base.seed
    }


def label_of(values: dict[str, Any]) -> str:
    """`lora.r=4, labels=teacher qwen`: a cell's values, its teacher by its system's name."""
    shown = {k: v for k, v in values.items() if k != TEACHER_KEY}
    parts = [f"{k}={_short(v)}" for k, v in shown.items()]
    if TEACHER_KEY in values:
        teacher = values[TEACHER_KEY]
        parts.append("labels=" + ("human" if teacher is None else f"teacher {teacher['system']}"))
    return ", ".join(parts)


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
