"""The results document (`results.json`) and the predictions file (`predictions.jsonl`):
per-system measurements, the specialist's paired comparisons and, for classification, the
majority-class floor. `Results` is its typed model: the evaluator checks what it writes
against it, and the report reads the fields it declares."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from finetune.evaluate import memory, timing
from finetune.hardware import (
    describe_device,
    has_cuda,
    weight_dtype_name,
)
from finetune.recipe import Recipe
from finetune.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap_ci
from finetune.systems.base import System
from finetune.systems.registry import sees_label_list
from finetune.tasks import metrics as M
from finetune.tasks.labels import majority_label
from finetune.tasks.types import task_type


@dataclass
class Outcome:
    """One system's quality pass and what it is, before statistics."""

    system: System
    description: str
    serving: str
    prompt_style: str
    predictions: list[Any]
    details: list[dict[str, Any]]
    truncated: list[bool]
    seconds: float
    peak_memory: int | None  # None: a remote system's memory is not this machine's
    weights_bytes: int | None
    parameters: dict[str, int]
    disk_bytes: dict[str, int | None]
    input_tokens: float
    output_tokens: float


class _Document(BaseModel):
    # The fields the report reads are declared; anything else is kept and passed through.
    model_config = ConfigDict(extra="allow")


class SystemResult(_Document):
    name: str
    role: str  # specialist | baseline
    model: str
    shots: int
    prompt_style: str
    metrics: dict[str, dict[str, Any]]  # name -> value, low, high
    latency_ms: dict[str, Any]
    throughput_items_per_s: float | None
    peak_memory_bytes: int | None  # None: a remote system
    parameters: dict[str, int | None]  # None: a remote system's
    disk_bytes: dict[str, int | None]
    throughput: dict[str, Any]
    tokens: dict[str, float]
    cost_per_1k: dict[str, Any]
    truncated_items: int


class Comparison(_Document):
    baseline: str
    metric: str
    specialist: float
    baseline_value: float
    difference: float
    low: float
    high: float
    significant: bool
    timing: dict[str, Any]


class Results(_Document):
    """`results.json`: the specialist is the first of `systems`."""

    recipe: str
    task: str
    labels: list[str]
    metrics: list[str]  # the first is the primary one
    test_items: int
    confidence: float
    bootstrap_samples: int
    hardware: dict[str, Any]
    batch_size: int
    prices: dict[str, Any]
    timing: dict[str, Any]
    systems: list[SystemResult]
    comparisons: list[Comparison]


def missing_fields(results: dict[str, Any]) -> list[str]:
    """Every field `Results` declares that `results` lacks, as dotted paths (all at once)."""
    missing = _missing(Results, results, "")
    for section, model in (("systems", SystemResult), ("comparisons", Comparison)):
        for i, item in enumerate(results.get(section) or []):
            missing += _missing(model, item, f"{section}[{i}].")
    if not results.get("systems") and "systems" in results:
        missing.append("systems[0] (the specialist)")
    return missing


def _missing(model: type[BaseModel], entry: dict[str, Any], prefix: str) -> list[str]:
    return [
        f"{prefix}{k}" for k, f in model.model_fields.items() if f.is_required() and k not in entry
    ]


TEXT_PREVIEW = 300


def summarize(
    recipe: Recipe,
    run_dir: Path,
    items: list[dict],
    outcomes: list[Outcome],
    golds: list[Any],
    rounds: timing.Rounds,
    train_rows: list[dict],
) -> dict[str, Any]:
    """The results document: per-system measurements, the specialist's paired comparisons and,
    for classification, the majority-class floor."""
    task = recipe.task.type
    names = metric_names(recipe)
    labels = list(recipe.task.labels) or None
    figures = {o.system.name: round_figures(recipe, o, rounds) for o in outcomes}
    systems = [_system_entry(recipe, o, golds, names, labels, rounds, figures) for o in outcomes]
    specialist = outcomes[0]
    comparisons = [
        _compare(recipe, specialist, o, golds, names[0], labels, figures) for o in outcomes[1:]
    ]
    document = {
        "recipe": recipe.name,
        "run_dir": str(run_dir),
        "task": task,
        "labels": list(recipe.task.labels),
        "metrics": list(names),
        "test_items": len(items),
        "confidence": recipe.eval.confidence,
        "bootstrap_samples": recipe.eval.bootstrap_samples,
        "hardware": {
            "device": "cuda" if has_cuda() else "cpu",
            "description": describe_device(),
            "dtype": weight_dtype_name(recipe.model.dtype),
        },
        "batch_size": recipe.eval.batch_size,
        "memory": memory.method(recipe),
        "prices": recipe.eval.prices.model_dump(),
        "constraints": recipe.eval.constraints.model_dump(),
        "timing": _timing_header(recipe, rounds, figures),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "systems": systems,
        "comparisons": comparisons,
        "floor": _floor(recipe, train_rows, golds, specialist, names) if labels else None,
    }
    Results.model_validate(document)  # what the report reads is there, with its types
    return document


def round_figures(recipe: Recipe, outcome: Outcome, rounds: timing.Rounds) -> dict[str, list]:
    name = outcome.system.name
    figures = timing.figures_by_round(
        rounds.of(name), lambda thr: cost_per_1k(recipe, name, thr, outcome)["usd"]
    )
    return {**figures, "evaluation": rounds.evaluation_of(name)}


def _timing_header(recipe: Recipe, rounds: timing.Rounds, figures: dict) -> dict[str, Any]:
    """How the timing went: rounds run and their orders, and every disturbed round."""
    settings = recipe.eval.timing
    spread = timing.normal_spread(list(figures.values()))
    disturbed = [
        entry
        for name, figs in figures.items()
        for entry in timing.disturbed_rounds(rounds.of(name), figs, spread)
    ]
    return {
        "rounds": rounds.done,
        "rounds_requested": rounds.requested,
        "stopped_early": rounds.stopped_early,
        "max_minutes": settings.max_minutes,
        "seconds": round(rounds.seconds, 1),
        "orders": rounds.orders,
        "latency_items": recipe.eval.latency_items,
        "throughput_items": settings.throughput_items,
        "resident": rounds.resident,
        # Systems whose rounds an earlier evaluation ran: compared over rounds, not within them.
        "reused": rounds.reused,
        "interval": "sign-test interval for the median of the per-round ratios",
        "normal_spread": round(spread, 4),
        "disturbed": sorted(disturbed, key=lambda d: (d["round"], d["system"])),
    }


def _system_entry(recipe, outcome: Outcome, golds, names, labels, rounds, figures):
    task = task_type(recipe.task)
    preds = outcome.predictions
    metrics = metric_entries(recipe, golds, preds, names)
    return {
        "name": outcome.system.name,
        "role": outcome.system.role,
        "kind": outcome.system.kind,
        "model": outcome.description,
        "serving": outcome.serving,
        "shots": outcome.system.shots,
        "prompt_style": outcome.prompt_style,
        # Whether its prompts listed the labels (`task.list_labels`), for the report to say.
        "label_list": sees_label_list(recipe, outcome.system),
        "metrics": metrics,
        "per_class": task.per_class(golds, preds, labels),
        "confusion": task.confusion(golds, preds, labels),
        **_speed_entry(recipe, outcome, rounds, figures[outcome.system.name]),
        "peak_memory_bytes": outcome.peak_memory,
        "weights_bytes": outcome.weights_bytes,
        "parameters": outcome.parameters,
        "disk_bytes": {
            "adapter": outcome.disk_bytes.get("adapter"),
            "model": outcome.disk_bytes.get("model") or outcome.weights_bytes,
        },
        "tokens": {
            "input_per_item": outcome.input_tokens,
            "output_per_item": outcome.output_tokens,
        },
        "truncated_items": sum(outcome.truncated),
        # Items whose request failed, or whose answer named no label: scored wrong, never dropped.
        "failed_items": sum("failed" in d for d in outcome.details),
        "invalid_items": sum(bool(d.get("invalid")) for d in outcome.details),
        "eval_seconds": round(outcome.seconds, 2),
    }


def metric_entries(recipe: Recipe, golds: list, preds: list, names: list[str]) -> dict:
    """Each metric's value with its bootstrap confidence interval."""
    task, ev = recipe.task.type, recipe.eval
    labels = list(recipe.task.labels) or None
    metrics = {}
    for name in names:
        value = M.compute(task, name, golds, preds, labels=labels)
        low, high = bootstrap_ci(
            M.indexed_metric(task, name, golds, preds, labels),
            len(golds),
            samples=ev.bootstrap_samples,
            confidence=ev.confidence,
            seed=recipe.seed,
        )
        metrics[name] = {"value": value, "low": low, "high": high}
    return metrics


def _speed_entry(recipe, outcome: Outcome, rounds: timing.Rounds, figures) -> dict[str, Any]:
    """Latency, throughput and cost: medians over the timing rounds, their spread, each round."""
    records = rounds.of(outcome.system.name)
    latency, speed, usd = (timing.summary(figures[k]) for k in timing.FIGURES)
    p95 = timing.summary([r.p95 for r in records])["median"]
    basis = cost_per_1k(recipe, outcome.system.name, speed["median"], outcome)["basis"]
    return {
        "latency_ms": {
            "p50": latency["median"],
            "p95": p95,
            "items": len(records[0].measurement.latencies_ms) if records else 0,
            **spread(latency),
        },
        "throughput_items_per_s": speed["median"],
        "throughput": {
            "items": records[0].measurement.throughput_items if records else 0,
            **spread(speed),
        },
        "cost_per_1k": {"usd": usd["median"], "basis": basis, **spread(usd)},
        "resident": outcome.system.name in rounds.resident,
        "load": [r.load.as_dict() for r in records],
    }


def spread(summary: dict[str, Any]) -> dict[str, Any]:
    return {"low": summary["low"], "high": summary["high"], "rounds": summary["rounds"]}


def cost_per_1k(
    recipe: Recipe, name: str, throughput: float | None, outcome: Outcome
) -> dict[str, Any]:
    """API token prices where the price table names the system, else machine time at throughput."""
    prices = recipe.eval.prices
    if (tokens := prices.token_prices(name)) is not None:
        p_in, p_out = tokens
        usd = 1000 * (outcome.input_tokens * p_in + outcome.output_tokens * p_out) / 1e6
        return {"usd": usd, "basis": f"API tokens at ${p_in:g}/M input, ${p_out:g}/M output"}
    if not throughput:
        return {"usd": None, "basis": "no throughput measured"}
    usd = prices.machine_per_hour * 1000 / throughput / 3600
    return {
        "usd": usd,
        "basis": f"machine time at ${prices.machine_per_hour:g}/h and {throughput:.1f} items/s",
    }


def _compare(recipe, specialist: Outcome, baseline: Outcome, golds, metric, labels, figures):
    entry = {
        "baseline": baseline.system.name,
        **paired_quality(recipe, specialist.predictions, baseline.predictions, golds, metric),
        "timing": timing_ratios(
            figures[specialist.system.name], figures[baseline.system.name], recipe.eval.confidence
        ),
    }
    entry["baseline_value"] = entry.pop("other_value")
    return entry


def paired_quality(recipe: Recipe, mine: list, theirs: list, golds: list, metric: str) -> dict:
    """Two systems' predictions on the same items: the metric's difference with a paired
    bootstrap interval and, for classification, McNemar's exact test on the items they split."""
    task, ev = recipe.task.type, recipe.eval
    labels = list(recipe.task.labels) or None
    difference, low, high = paired_bootstrap_ci(
        M.indexed_metric(task, metric, golds, mine, labels),
        M.indexed_metric(task, metric, golds, theirs, labels),
        len(golds),
        samples=ev.bootstrap_samples,
        confidence=ev.confidence,
        seed=recipe.seed,
    )
    entry = {
        "metric": metric,
        "specialist": M.compute(task, metric, golds, mine, labels=labels),
        "other_value": M.compute(task, metric, golds, theirs, labels=labels),
        "difference": difference,
        "low": low,
        "high": high,
        "mcnemar": None,
    }
    if task_type(task).paired_test():
        test = mcnemar_exact(
            [p == g for p, g in zip(mine, golds, strict=True)],
            [p == g for p, g in zip(theirs, golds, strict=True)],
        )
        entry["mcnemar"] = {
            "specialist_only": test.a_only,
            "baseline_only": test.b_only,
            "p_value": test.p_value,
        }
        entry["significant"] = test.p_value < 1 - ev.confidence
    else:
        entry["significant"] = low > 0 or high < 0
    return entry


def _floor(recipe: Recipe, train_rows: list[dict], golds: list, specialist: Outcome, names):
    """The majority-class floor: train's most common label answered for every test item, its
    metrics with intervals, and the specialist against it on the same items."""
    label, share = majority_label(train_rows)
    constant = [label] * len(golds)
    return {
        "label": label,
        "train_share": share,
        "train_rows": len(train_rows),
        "metrics": metric_entries(recipe, golds, constant, names),
        "specialist_vs": paired_quality(recipe, specialist.predictions, constant, golds, names[0]),
    }


def timing_ratios(mine: dict, theirs: dict, confidence: float) -> dict[str, Any]:
    """Each timing figure as a ratio paired by round, rounds where either was disturbed by a
    busy machine left out (over each one's own quiet rounds where too few are left for both);
    over the two sets of rounds where they were timed in different evaluations (one of them
    kept from an earlier one)."""
    busy = (mine["busy"], theirs["busy"])
    if mine["evaluation"] != theirs["evaluation"]:
        return {
            k: timing.unpaired_ratio(mine[k], theirs[k], confidence, busy) for k in timing.FIGURES
        }
    return {
        k: timing.round_ratio(mine[k], theirs[k], confidence, busy, mine["round"])
        for k in timing.FIGURES
    }


def metric_names(recipe: Recipe) -> list[str]:
    """The recipe's metrics, or the task's defaults; the first is the primary one."""
    return list(recipe.eval.metrics or M.DEFAULT_METRICS[recipe.task.type])


def predictions_jsonl(
    recipe: Recipe,
    items: list[dict],
    outcomes: list[Outcome],
    golds: list[Any],
    also: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    """One line per test item: every system's answer and score; `also` adds answers made from
    those (a cascade's, with whether the item was escalated), by name."""
    task = recipe.task.type
    scores = {o.system.name: M.item_scores(task, golds, o.predictions) for o in outcomes}
    lines = []
    for index, item in enumerate(items):
        record = {
            "id": item["id"],
            "text": item["text"][:TEXT_PREVIEW],
            "gold": golds[index],
            "predictions": {},
        }
        for o in outcomes:
            entry = {"prediction": o.predictions[index], "score": scores[o.system.name][index]}
            entry.update(o.details[index])
            if o.truncated[index]:
                entry["truncated"] = True
            record["predictions"][o.system.name] = entry
        for name, answers in (also or {}).items():
            record["predictions"][name] = answers[index]
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"
