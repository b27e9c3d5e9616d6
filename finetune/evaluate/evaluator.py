"""`finetune eval`: score the specialist and every baseline on the same test items, with the same prompts.

Quality first: each model instance is loaded on its own and every system on it scores all test
items (each metric with a bootstrap confidence interval, per-class figures for
classification), with its parameters and size on disk; then each system's peak memory,
measured alone in a fresh process (`memory`). Then speed, in rounds
(`timing`): latency at batch size 1 and throughput at the recipe's batch size, every system
timed in every round in a changing order, with as many instances kept loaded as memory
allows. The specialist is compared with each baseline on the same items (paired bootstrap,
McNemar's exact test) and on latency, throughput and cost round by round (a sign-test
interval for the median ratio). Everything lands in `<run>/eval/`: `predictions.jsonl`
(every item, every system) and `results.json` (written last; the report reads it)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from finetune.data import load_split, prepare
from finetune.errors import FinetuneError
from finetune.evaluate import memory, reuse, timing
from finetune.evaluate.cascade_results import add_cascades, check_first_scores
from finetune.evaluate.console import (
    say,
    say_cascades,
    say_floor,
    say_judge,
    say_outcome,
    say_timing,
)
from finetune.evaluate.results import Outcome, predictions_jsonl, summarize
from finetune.evaluate.teacher import student_vs_teacher
from finetune.files import write_atomic, write_json
from finetune.hardware import (
    peak_memory_bytes,
    reset_peak_memory,
)
from finetune.judge import check_judge, judge_answers
from finetune.progress import progress as progress_for
from finetune.recipe import Recipe, load_recipe, recipe_to_dict
from finetune.runs import data_fingerprint, is_complete
from finetune.systems.base import Context, Inference, Loaded, Plan, System
from finetune.systems.pool import ModelPool, loaded_model
from finetune.systems.registry import check_all, load_groups, systems_of
from finetune.tasks.prompts import PromptFormat
from finetune.tasks.types import task_type

log = logging.getLogger(__name__)


EVAL_DIR = "eval"


RESULTS_FILE = "results.json"


PREDICTIONS_FILE = "predictions.jsonl"


JUDGMENTS_FILE = "judgments.jsonl"  # the judge's verdicts, item by item and pair by pair


RECIPE_FILE = "recipe.yaml"


def evaluated_recipe(run_dir: Path) -> Recipe:
    """The recipe the run was last evaluated with (its systems and cascades), else its own."""
    path = run_dir / EVAL_DIR / RECIPE_FILE
    return load_recipe(path if path.is_file() else run_dir / "recipe.yaml")


def evaluate(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    console: Any = None,
    observer: timing.Observer | None = None,
) -> Path:
    """Evaluate every system on the run's test items; returns the path of `results.json`.

    `observer(event, round, system)` is called as each timed measurement starts and ends."""
    run_dir = Path(run_dir)
    check_run(recipe, run_dir)
    items = load_split(recipe, "test")
    golds = task_type(recipe.task).golds(items)
    train = load_split(recipe, "train")  # what the run learned from: a teacher's labels, if any
    # In-context examples come from the human labels (never a teacher's), as in `teach`.
    shots_from = load_split(recipe, "train", human=True)
    context = Context(run_dir, items, shots_from)
    check_all(recipe, run_dir)
    check_judge(recipe, run_dir)
    store = reuse.Store.of(recipe)
    val = _validation_context(recipe, run_dir, shots_from)
    val_golds = task_type(recipe.task).golds(val.items) if val else []
    with progress_for(console) as progress:
        plans, outcomes, kept, validation = _quality(
            recipe, (context, val), (golds, val_golds), store, progress, console
        )
        check_first_scores(recipe, validation)
        _measure_memory(recipe, run_dir, plans, outcomes, kept, progress)
        rounds = _time(recipe, run_dir, plans, kept, progress, observer, console)
    _keep(recipe, store, outcomes, kept, rounds)
    say_timing(console, rounds)
    results = summarize(recipe, run_dir, items, outcomes, golds, rounds, train)
    routed = add_cascades(recipe, results, outcomes, validation, golds, val_golds, rounds)
    results["teacher"] = student_vs_teacher(recipe, run_dir, outcomes, golds)
    results["judge"], judged = _judged(recipe, run_dir, items, outcomes, console)
    say_floor(console, results)
    say_cascades(console, results)
    say_judge(console, results)
    out = run_dir / EVAL_DIR
    # The systems as this evaluation named them: what predict and serve --fallback look up.
    write_atomic(out / RECIPE_FILE, yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    write_atomic(
        out / PREDICTIONS_FILE,
        predictions_jsonl(recipe, items, outcomes, golds, {r.config.name: r.items for r in routed}),
    )
    if judged is not None:
        write_atomic(out / JUDGMENTS_FILE, "".join(json.dumps(r) + "\n" for r in judged))
    return write_json(out / RESULTS_FILE, results)  # last: its presence marks a finished eval


def _judged(
    recipe: Recipe, run_dir: Path, items: list[dict], outcomes: list[Outcome], console: Any
) -> tuple[dict[str, Any] | None, list[dict] | None]:
    """The judge's section of the results and its verdicts item by item; (None, None)
    without `eval.judge`."""
    if recipe.eval.judge is None:
        return None, None
    answers = {o.system.name: [str(p) for p in o.predictions] for o in outcomes}
    return judge_answers(recipe, run_dir, items, answers, console)


def _validation_context(recipe: Recipe, run_dir: Path, train: list[dict]) -> Context | None:
    """The validation items the cascades pick their thresholds on; None without cascades."""
    if not recipe.eval.cascades:
        return None
    items = load_split(recipe, "validation")
    if not items:
        raise FinetuneError(
            "eval.cascades: the validation split is empty, and thresholds are never picked on "
            "test items; give data.split.validation a share (or data.split_files a validation file)"
        )
    return Context(run_dir, items, train)


def _quality(
    recipe: Recipe,
    contexts: tuple[Context, Context | None],
    answers: tuple[list[Any], list[Any]],
    store: reuse.Store | None,
    progress: Any,
    console: Any,
) -> tuple[list[Plan], list[Outcome], dict[str, reuse.Kept], dict[str, Outcome]]:
    """Every system's quality pass, in the recipe's order; a system kept from an earlier
    evaluation (`reuse`) takes its kept outcome instead of running. The systems a cascade is
    made of answer the validation items too (`contexts[1]`, gold `answers[1]`), while their
    model is loaded."""
    (context, validation_context), (golds, val_golds) = contexts, answers
    plans, outcomes, kept, validation = [], [], {}, {}
    needed = {n for c in recipe.eval.cascades for n in (c.first, c.fallback)}
    for key, group in load_groups(recipe, systems_of(recipe)):
        with loaded_model(recipe, context.run_dir, key) as loaded:
            for system in group:
                plan, outcome, entry = _answer(
                    recipe, (context, golds), key, loaded, system, store, progress
                )
                if entry:
                    kept[system.name] = entry
                plans.append(plan)
                outcomes.append(outcome)
                say_outcome(
                    console, recipe, outcome, golds, reused=bool(entry and not entry.changed)
                )
                if system.name in needed and validation_context is not None:
                    found = _answer(
                        recipe,
                        (validation_context, val_golds),
                        key,
                        loaded,
                        system,
                        store,
                        progress,
                    )
                    validation[system.name] = found[1]
                    if found[2]:
                        store.save(found[2])
    order = [s.name for s in systems_of(recipe)]
    plans.sort(key=lambda p: order.index(p.system.name))
    outcomes.sort(key=lambda o: order.index(o.system.name))
    return plans, outcomes, kept, validation


def _answer(
    recipe: Recipe,
    asked: tuple[Context, list[Any]],
    key: str,
    loaded: Loaded,
    system: System,
    store: reuse.Store | None,
    progress: Any,
) -> tuple[Plan, Outcome, reuse.Kept | None]:
    """One system's answers to the context's items (`asked`: the context and its golds): kept
    ones where the store has them."""
    context, golds = asked
    plan = loaded.kind.plan(recipe, system, key, loaded, context)
    entry = store and store.lookup(reuse.system_key(recipe, plan, loaded, context))
    outcome = _kept_outcome(entry, system)
    if outcome is None:
        outcome = _score(recipe, context.run_dir, plan, loaded, progress)
        if entry:  # kept as the system answered, before spans are located
            entry.quality, entry.changed = _quality_entry(outcome), True
    texts = [item["text"] for item in context.items]
    outcome.predictions = task_type(recipe.task).placed(texts, golds, outcome.predictions)
    return plan, outcome, entry or None


def _kept_outcome(entry: reuse.Kept | None, system: System) -> Outcome | None:
    """The kept outcome of a system, if there is one this version can read."""
    if entry is None or not entry.quality:
        return None
    try:
        return Outcome(system=system, **entry.quality)
    except TypeError:  # kept by a workbench whose outcomes had other fields
        return None


def _quality_entry(outcome: Outcome) -> dict[str, Any]:
    """An outcome as kept: everything but the system, which each evaluation names itself."""
    entry = dataclasses.asdict(outcome)
    del entry["system"]
    return entry


def _keep(
    recipe: Recipe,
    store: reuse.Store | None,
    outcomes: list[Outcome],
    kept: dict[str, reuse.Kept],
    rounds: timing.Rounds,
) -> None:
    """Keep what this evaluation measured of each system for the next one that includes it."""
    if store is None:
        return
    machine, settings = reuse.machine(), reuse.timing_settings(recipe)
    for outcome in outcomes:
        entry = kept.get(outcome.system.name)
        if entry is None:
            continue
        name, records = outcome.system.name, rounds.of(outcome.system.name)
        if name not in rounds.reused and records:
            # Rounds a busy machine disturbed are not kept: the next evaluation times it again.
            quiet = not any(r.load.busy for r in records)
            entry.timing = reuse.timing_entry(rounds, name, machine, settings) if quiet else None
            entry.changed = True
        store.save(entry)


def check_run(recipe: Recipe, run_dir: Path) -> None:
    """The run is finished, was trained from this recipe's task and model, on this data."""
    if not run_dir.is_dir():
        raise FinetuneError(f"--run: '{run_dir}' does not exist")
    if not is_complete(run_dir):
        raise FinetuneError(
            f"{run_dir}: not a finished training run (it is still partial or failed); "
            f"finish it with `finetune train --resume {run_dir}` or evaluate a complete run"
        )
    trained = load_recipe(run_dir / "recipe.yaml")
    hint = f"evaluate with the run's own recipe: `finetune eval {run_dir / 'recipe.yaml'} --run {run_dir}`"
    for key, now, then in (
        ("model.base", recipe.model.base, trained.model.base),
        ("task.type", recipe.task.type, trained.task.type),
        ("task.labels", recipe.task.labels, trained.task.labels),
        ("task.instruction", recipe.task.instruction, trained.task.instruction),
        ("task.template", recipe.task.template, trained.task.template),
    ):
        if now != then:
            raise FinetuneError(
                f"{key}: the recipe says {now!r} but the run was trained with {then!r}; {hint}"
            )
    stored = PromptFormat.load(run_dir)
    if (stored.instruction, stored.template) != (recipe.task.instruction, recipe.task.template):
        raise FinetuneError(
            f"{run_dir}: prompt.json does not match the recipe's task.instruction/template; {hint}"
        )
    trained_fp = data_fingerprint(run_dir)
    now_fp = prepare(recipe).fingerprint
    if trained_fp and trained_fp != now_fp:
        raise FinetuneError(
            f"data: the prepared dataset changed since this run was trained (fingerprint {now_fp[:12]} "
            f"vs {trained_fp[:12]}), so its test items may overlap what the model learned; "
            "re-prepare the data the run used or train a new run"
        )


def _score(recipe: Recipe, run_dir: Path, plan: Plan, loaded: Loaded, progress: Any) -> Outcome:
    """Every test item through the system, at the evaluation batch size, with its peak memory."""
    model, prompts, batch = loaded.model, plan.inputs, recipe.eval.batch_size
    reset_peak_memory()
    task = progress.add_task(plan.system.name, total=len(prompts))
    start = time.perf_counter()
    predictions, details, out_tokens = plan.infer.run(
        model, prompts, batch, True, lambda n: progress.advance(task, n)
    )
    seconds = time.perf_counter() - start
    peak = None if plan.infer.remote else peak_memory_bytes()
    progress.remove_task(task)
    weights, total, adapter_params = loaded.kind.sizes(model)
    # The specialist's trained parameters are this run's; a run baseline's, its own run's.
    trained_in = run_dir if plan.system.role == "specialist" else loaded.trained_in
    return Outcome(
        system=plan.system,
        description=loaded.description,
        serving=loaded.serving,
        prompt_style=plan.style,
        predictions=predictions,
        details=details,
        truncated=plan.truncated,
        seconds=seconds,
        peak_memory=peak,
        weights_bytes=weights,
        parameters={
            "total": total,
            "trainable": _trained_parameters(trained_in, adapter_params) if trained_in else 0,
        },
        disk_bytes=loaded.disk_bytes,
        input_tokens=float(np.mean(plan.input_tokens)),
        output_tokens=float(np.mean(out_tokens)),
    )


def _measure_memory(
    recipe: Recipe,
    run_dir: Path,
    plans: list[Plan],
    outcomes: list[Outcome],
    kept: dict[str, reuse.Kept],
    progress: Any,
) -> None:
    """Replace each outcome's in-process peak by the one measured alone, where it is (`memory`),
    or kept from an earlier evaluation on this machine."""
    how = memory.method(recipe)
    if how != "alone":
        return
    machine = reuse.machine()
    known = {n: k.memory_on(machine, how) for n, k in kept.items()}
    known = {n: peak for n, peak in known.items() if peak is not None}
    local = [p for p in plans if not p.infer.remote and p.system.name not in known]
    task = progress.add_task("peak memory, each system alone", total=len(local), unit="systems")
    peaks = memory.measured_alone(recipe, run_dir, local, on_done=lambda: progress.advance(task))
    progress.remove_task(task)
    for name, peak in peaks.items():
        if name in kept:
            kept[name].memory = {"machine": machine, "method": how, "bytes": peak}
            kept[name].changed = True
    peaks |= known
    for outcome in outcomes:
        outcome.peak_memory = peaks.get(outcome.system.name, outcome.peak_memory)


def _time(
    recipe: Recipe,
    run_dir: Path,
    plans: list[Plan],
    kept: dict[str, reuse.Kept],
    progress: Any,
    observer: timing.Observer | None,
    console: Any = None,
) -> timing.Rounds:
    """Latency and throughput of every system in rounds, with the instances that fit kept loaded;
    a system timed on this machine by an earlier evaluation brings its rounds instead."""
    settings = recipe.eval.timing
    machine, same = reuse.machine(), reuse.timing_settings(recipe)
    earlier = {n: k.timing_on(machine, same) for n, k in kept.items()}
    earlier = {n: entry for n, entry in earlier.items() if entry is not None}
    fresh = [p for p in plans if p.system.name not in earlier]
    again = f"; {len(earlier)} timed by an earlier evaluation on this machine" if earlier else ""
    say(
        console,
        f"timing {len(fresh)} systems in {settings.rounds} rounds, the order changed between "
        f"rounds (eval.timing; at most {settings.max_minutes:g} min){again}",
    )
    # A remote system brings its own measurement (`_ready`): nothing to load for it.
    keys = list(dict.fromkeys(p.key for p in fresh if p.infer.measured is None))
    task = progress.add_task("timing rounds", total=settings.rounds * len(fresh), unit="runs")
    with ModelPool(recipe, run_dir, keys) as pool:
        warmed: set[str] = set()
        targets = [
            timing.Target(
                p.system.name,
                lambda p=p: _ready(recipe, pool, p, warmed),
                resident=p.key in pool.resident,
            )
            for p in fresh
        ]
        rounds = timing.run_rounds(
            targets,
            settings.rounds,
            seed=recipe.seed,
            budget_seconds=settings.max_minutes * 60,
            observer=observer,
            on_step=lambda *_: progress.advance(task),
        )
    rounds.resident = [t.name for t in targets if t.resident]
    rounds.evaluation, rounds.evaluated_at = uuid.uuid4().hex[:12], reuse.now()
    for name, entry in earlier.items():
        rounds.records += reuse.records_of(entry, name)
        rounds.resident += [name] if entry["resident"] else []
        rounds.reused[name] = {k: entry[k] for k in ("evaluation", "evaluated_at")}
    progress.remove_task(task)
    return rounds


@contextlib.contextmanager
def _ready(
    recipe: Recipe, pool: ModelPool, plan: Plan, warmed: set[str]
) -> Iterator[Callable[[], timing.Measurement]]:
    """The system's model, warmed up: a full batch and one item on its first use after loading
    (first passes allocate and pick kernels, ~10% slower here), one item in every later round
    (the previous system's weights have filled the caches since). A remote system gives the
    measurement of its own requests."""
    if plan.infer.measured is not None:
        yield lambda: plan.infer.measured
        return
    with pool.use(plan.key) as loaded:
        model, prompts, batch = loaded.model, plan.inputs, recipe.eval.batch_size
        first = plan.key not in pool.resident or plan.system.name not in warmed
        if first:
            plan.infer.run(model, prompts[:batch], batch, True)
            warmed.add(plan.system.name)
        plan.infer.run(model, prompts[:1], 1, False)
        yield lambda: _measure(recipe, plan, model)


def _measure(recipe: Recipe, plan: Plan, model: Any) -> timing.Measurement:
    prompts = plan.inputs
    latencies = _latencies(plan.infer, model, prompts[: recipe.eval.latency_items])
    n = min(recipe.eval.timing.throughput_items, len(prompts))
    _sync()
    start = time.perf_counter()
    plan.infer.run(model, prompts[:n], recipe.eval.batch_size, True)
    _sync()
    return timing.Measurement(latencies, time.perf_counter() - start, n)


def _latencies(infer: Inference, model: Any, prompts: list[Any]) -> list[float]:
    """Milliseconds per request at batch size 1, the whole prompt computed (no shared cache)."""
    timings = []
    for prompt in prompts:
        _sync()
        start = time.perf_counter()
        infer.run(model, [prompt], 1, False)
        _sync()
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _trained_parameters(run_dir: Path, adapter_params: int) -> int:
    summary = run_dir / "train_summary.json"
    if summary.is_file():
        return int(json.loads(summary.read_text()).get("trainable_parameters", adapter_params))
    return adapter_params
