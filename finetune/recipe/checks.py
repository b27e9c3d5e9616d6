"""Checks that span several fields of a valid recipe, one per section, as (dotted key, message)
pairs; and warnings for what is allowed but probably unintended.

The schema (`schema`) checks each field alone; these run on the whole recipe once it parses.
They read the registries below the recipe (metrics, models, heads, statistics), never a stage
above it.
"""

from __future__ import annotations

import string
from pathlib import Path

from finetune.errors import did_you_mean
from finetune.models import gguf_problem, model_role, reference_problem
from finetune.models.heads import head_problems
from finetune.recipe.schema import BaselineConfig, CascadeConfig, Recipe, Section
from finetune.stats import rounds_for_interval
from finetune.tasks.labels import unnamed_labels
from finetune.tasks.metrics import unknown_metric_message

Problems = list[tuple[str, str]]


def consistency_problems(recipe: Recipe) -> Problems:
    """Every cross-field problem of the recipe, section by section."""
    return [
        *_task_problems(recipe),
        *_data_problems(recipe),
        *_model_problems(recipe),
        *_train_problems(recipe),
        *_eval_problems(recipe),
        *_teacher_problems(recipe),
        *_judge_problems(recipe),
    ]


def _task_problems(recipe: Recipe) -> Problems:
    task, problems = recipe.task, []
    if task.type == "classification" and len(task.labels) < 2:
        problems.append(
            (
                "task.labels",
                f"a classification task needs at least two labels; found {task.labels!r}",
            )
        )
    if len(set(task.labels)) != len(task.labels):
        problems.append(("task.labels", f"labels must be distinct; found {task.labels!r}"))
    return problems + _template_problems("task.template", task.template, TEMPLATE_FIELDS)


def _data_problems(recipe: Recipe) -> Problems:
    data, problems = recipe.data, []
    if (data.source is None) == (not data.split_files):
        problems.append(("data.source", "give exactly one of data.source or data.split_files"))
    if data.split_files and not {"train", "test"} <= data.split_files.keys():
        problems.append(
            (
                "data.split_files",
                f"needs at least train and test files; found {sorted(data.split_files)}",
            )
        )
    split = data.split
    if abs(split.train + split.validation + split.test - 1.0) > 1e-6:
        total = split.train + split.validation + split.test
        problems.append(
            ("data.split", f"train + validation + test must add up to 1; found {total:g}")
        )
    if split.train == 0 or split.test == 0:
        problems.append(("data.split", "train and test fractions must both be above 0"))
    return problems


def _teacher_problems(recipe: Recipe) -> Problems:
    """The teacher is one of the recipe's general baselines, has rows to label, and is given
    only the settings its task reads; `data.unlabelled` is read only by a teacher."""
    data, teacher = recipe.data, recipe.data.teacher
    if teacher is None and data.unlabelled:
        return [("data.unlabelled", "is read only by data.teacher; set one, or remove it")]
    if teacher is None:
        return []
    problems = _teacher_system_problems(recipe, teacher.system)
    if teacher.rows == "unlabelled" and not data.unlabelled:
        problems.append(
            (
                "data.teacher.rows",
                "is `unlabelled`, but data.unlabelled names no file; give it one, or set "
                "data.teacher.rows: train to label the training split with its labels hidden",
            )
        )
    if data.unlabelled and not Path(data.unlabelled).is_file():
        problems.append(("data.unlabelled", f"file '{data.unlabelled}' does not exist"))
    if teacher.rows == "train" and teacher.max_rows is not None:
        problems.append(("data.teacher.max_rows", "is read only with rows: unlabelled; remove it"))
    if recipe.task.type != "classification":
        extra = _not_default(teacher, ("min_confidence", "balance", "targets", "temperature"))
        problems += [
            (f"data.teacher.{n}", "reads label scores, which only classification gives; remove it")
            for n in extra
        ]
    return problems


def _teacher_system_problems(recipe: Recipe, name: str) -> Problems:
    baselines = {b.name: b for b in recipe.eval.baselines}
    if name not in baselines:
        return [
            (
                "data.teacher.system",
                f"{name!r} is not one of eval.baselines ({', '.join(baselines) or 'none'}); "
                f"the teacher is a baseline, evaluated like one.{did_you_mean(name, baselines)}",
            )
        ]
    b = baselines[name]
    if b.run is not None:
        return [
            ("data.teacher.system", f"{name!r} is another run's specialist; name a general model")
        ]
    if b.shots and recipe.data.teacher.rows == "train":
        return [
            (
                f"eval.baselines.{list(baselines).index(name)}.shots",
                f"the teacher {name!r} would be shown human labels of the training split it "
                "labels with its labels hidden; set shots: 0",
            )
        ]
    return []


def _model_problems(recipe: Recipe) -> Problems:
    """Quantized weights full fine-tuning cannot update; references that name nothing
    loadable; a head that does not suit the base model and task (`models.heads`)."""
    problems = []
    if recipe.train.method == "full" and recipe.model.quantization != "none":
        problems.append(
            (
                "model.quantization",
                f"full fine-tuning cannot update quantized weights; found quantization {recipe.model.quantization!r} with train.method 'full'. Use train.method: lora, or quantization: none",
            )
        )
    problems += _model_reference_problems(recipe)
    if not reference_problem(recipe.model.base):  # else already reported: no head to tell
        problems += head_problems(recipe, model_role(recipe.model.base))
    return problems


def _train_problems(recipe: Recipe) -> Problems:
    train = recipe.train
    if train.save_every % train.eval_every:
        return [
            (
                "train.save_every",
                f"must be a multiple of train.eval_every so the best checkpoint is kept; found save_every {train.save_every}, eval_every {train.eval_every}",
            )
        ]
    return []


def _eval_problems(recipe: Recipe) -> Problems:
    """Known metrics; timing rounds enough for the confidence level; a serving form the
    weights allow; distinct baselines that each take only what their kind takes."""
    ev, problems = recipe.eval, []
    for name in ev.metrics:
        if message := unknown_metric_message(recipe.task.type, name):
            problems.append(("eval.metrics", message))
    need = rounds_for_interval(ev.confidence)
    if ev.baselines and ev.timing.rounds < need:
        problems.append(
            (
                "eval.timing.rounds",
                f"{ev.timing.rounds} rounds cannot give a {ev.confidence:g} "
                f"interval for the timing ratios; use at least {need} (or lower eval.confidence)",
            )
        )
    if ev.specialist_form == "merged" and recipe.model.quantization != "none":
        problems.append(
            (
                "eval.specialist_form",
                f"quantized weights ({recipe.model.quantization}) cannot take a merged adapter; "
                "use specialist_form: adapter or auto",
            )
        )
    names = [b.name for b in ev.baselines]
    if len(set(names)) != len(names):
        problems.append(("eval.baselines", f"baseline names must be distinct; found {names!r}"))
    problems += _tfidf_problems(recipe, names)
    for i, b in enumerate(ev.baselines):
        problems += _baseline_problems(i, b)
    return problems + _cascade_problems(recipe, names)


def _cascade_problems(recipe: Recipe, baselines: list[str]) -> Problems:
    """Cascades read label scores (classification), name systems the recipe evaluates, have
    names of their own and the setting their `pick` reads."""
    cascades = recipe.eval.cascades
    if not cascades:
        return []
    if recipe.task.type != "classification":
        return [
            (
                "eval.cascades",
                f"a cascade reads label scores, which only classification gives; "
                f"task.type is {recipe.task.type!r} (remove eval.cascades)",
            )
        ]
    systems = ["specialist", *baselines]
    if recipe.eval.tfidf.enabled:
        systems.append(recipe.eval.tfidf.name)
    problems, seen = [], set(systems)
    for i, c in enumerate(cascades):
        problems += _one_cascade_problems(f"eval.cascades.{i}", c, systems)
        if c.name in seen:
            problems.append((f"eval.cascades.{i}.name", f"{c.name!r} is already a system's name"))
        seen.add(c.name)
    if recipe.data.split.validation == 0 and "validation" not in recipe.data.split_files:
        problems.append(
            (
                "data.split.validation",
                "is 0, but eval.cascades pick their thresholds on validation items; give it a share",
            )
        )
    return problems


def _one_cascade_problems(key: str, c: CascadeConfig, systems: list[str]) -> Problems:
    problems = []
    for field in ("first", "fallback"):
        name = getattr(c, field)
        if name not in systems:
            problems.append(
                (
                    f"{key}.{field}",
                    f"{name!r} is not a system of this recipe (one of {systems}).{did_you_mean(name, systems)}",
                )
            )
    if c.first == c.fallback:
        problems.append((f"{key}.fallback", f"is the first system ({c.first!r}); name another"))
    needs = {"fixed": "threshold", "max_escalated": "max_escalated"}
    for pick, field in needs.items():
        if (getattr(c, field) is not None) != (c.pick == pick):
            problems.append(
                (
                    f"{key}.{field}",
                    f"is read with pick: {pick}, and only then; pick is {c.pick!r}"
                    + (f" (set {field})" if c.pick == pick else f" (remove {field})"),
                )
            )
    return problems


def _baseline_problems(i: int, b: BaselineConfig) -> Problems:
    """A baseline's kind field rules out the shared fields its kind does not take
    (`BaselineConfig.EXCLUDES`); a `run:` baseline names an existing directory."""
    problems = []
    if b.run is not None and not Path(b.run).is_dir():
        problems.append((f"eval.baselines.{i}.run", f"'{b.run}' is not a run directory"))
    for field, (excluded, what) in BaselineConfig.EXCLUDES.items():
        if getattr(b, field) is not None and (extra := _not_default(b, excluded)):
            problems.append((f"eval.baselines.{i}", f"{what}; remove {', '.join(extra)}"))
    return problems


def _not_default(section: Section, names: tuple[str, ...]) -> list[str]:
    """The fields among `names` given a value other than their default. By value, not by
    presence: a run stores its recipe with every default written out."""
    fields = type(section).model_fields
    return [n for n in names if getattr(section, n) != fields[n].default]


def _tfidf_problems(recipe: Recipe, names: list[str]) -> Problems:
    tfidf = recipe.eval.tfidf
    if not (tfidf.enabled and recipe.task.type == "classification"):
        return []
    problems = []
    if tfidf.name in [*names, "specialist"]:
        problems.append(
            ("eval.tfidf.name", f"{tfidf.name!r} is already a system's name; give it another")
        )
    if tfidf.word_ngrams is None and tfidf.char_ngrams is None:
        problems.append(
            ("eval.tfidf", "needs word_ngrams or char_ngrams (or enabled: false to leave it out)")
        )
    for key in ("word_ngrams", "char_ngrams"):
        grams = getattr(tfidf, key)
        if grams is not None and grams[0] > grams[1]:
            problems.append((f"eval.tfidf.{key}", f"is [min, max]; found [{grams[0]}, {grams[1]}]"))
    return problems


def _model_reference_problems(recipe: Recipe) -> Problems:
    """Model references that name nothing loadable (a missing directory, a metric name, a typo)."""
    refs = [("model.base", recipe.model.base)]
    refs += [
        (f"eval.baselines.{i}.model", b.model)
        for i, b in enumerate(recipe.eval.baselines)
        if b.model != "base"
    ]
    problems = [(key, problem) for key, ref in refs if (problem := reference_problem(ref))]
    return problems + [
        (f"eval.baselines.{i}.engine.model", problem)
        for i, b in enumerate(recipe.eval.baselines)
        if b.engine is not None and (problem := gguf_problem(b.engine.model))
    ]


TEMPLATE_FIELDS = {"instruction": False, "input": True}  # placeholder -> required


def _template_problems(key: str, template: str, fields: dict[str, bool]) -> Problems:
    """A `str.format` template with only the placeholders `fields` names, each required one
    present."""
    try:
        found = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return [(key, f"is not a valid template ({exc}); write literal braces as {{{{ and }}}}")]
    names = ", ".join(f"{{{n}}}" for n in fields)
    unknown = sorted(found - set(fields))
    if unknown:
        return [(key, f"unknown placeholder(s) {unknown}; use {names}")]
    missing = [f"{{{n}}}" for n, required in fields.items() if required and n not in found]
    if missing:
        return [(key, f"must contain {' and '.join(missing)}, where the text it names goes")]
    return []


def _judge_problems(recipe: Recipe) -> Problems:
    """A judge compares free-text answers (QA), with a prompt whose placeholders it fills,
    against baselines the recipe evaluates; it is a general system used as it comes."""
    judge = recipe.eval.judge
    if judge is None:
        return []
    if recipe.task.type != "qa":
        return [
            (
                "eval.judge",
                f"a judge compares free-text answers, which only qa gives; task.type is "
                f"{recipe.task.type!r} (remove eval.judge)",
            )
        ]
    answers = {"question": True, "answer_a": True, "answer_b": True}
    problems = _template_problems("eval.judge.prompt", judge.prompt, {**answers, "reference": True})
    problems += _template_problems(
        "eval.judge.prompt_without_reference", judge.prompt_without_reference, answers
    )
    names = [b.name for b in recipe.eval.baselines]
    for i, name in enumerate(judge.against):
        if name not in names:
            problems.append(
                (
                    f"eval.judge.against.{i}",
                    f"{name!r} is not one of eval.baselines ({', '.join(names) or 'none'})."
                    f"{did_you_mean(name, names)}",
                )
            )
    if not names:
        problems.append(("eval.judge", "has no baseline to judge the specialist against"))
    return problems + _judge_system_problems(judge.system)


def _judge_system_problems(system: BaselineConfig) -> Problems:
    problems = [("eval.judge.system", message) for _, message in _baseline_problems(0, system)]
    if system.run is not None:
        problems.append(
            (
                "eval.judge.system.run",
                "a judge is a general model; name a model, engine or endpoint",
            )
        )
    if system.shots:
        problems.append(("eval.judge.system.shots", "a judge is shown no examples; remove shots"))
    if system.model != "base" and (problem := reference_problem(system.model)):
        problems.append(("eval.judge.system.model", problem))
    if system.engine is not None and (problem := gguf_problem(system.engine.model)):
        problems.append(("eval.judge.system.engine.model", problem))
    return problems


def recipe_warnings(recipe: Recipe) -> list[tuple[str, str]]:
    """What is allowed but probably unintended, as (dotted key, message) pairs."""
    task = recipe.task
    missing = unnamed_labels(task)
    if not missing or task.list_labels == "always":
        return []
    if task.list_labels == "auto":
        shown = (
            "the untrained baselines get the label list appended (task.list_labels: auto); "
            "the specialist is trained without it"
        )
        fix = "task.list_labels: always to keep the appended list without this warning"
    else:
        shown = "with task.list_labels: never, the untrained baselines are not shown them either"
        fix = "task.list_labels: auto to append the label list to their prompts"
    return [
        (
            "task.instruction",
            f"does not name the label(s) {', '.join(map(repr, missing))}, so a model shown only "
            f"the instruction is never told it may answer them; {shown}. Name every label in the "
            f'instruction (e.g. end it with "Answer with one of: " and the labels), or set {fix}',
        )
    ]
