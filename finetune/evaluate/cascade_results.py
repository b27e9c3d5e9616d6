"""The cascades' and the calibration's part of `results.json`.

Each cascade of `eval.cascades` becomes a system of its own (`role: cascade`), with every
figure a system has, computed from the two systems' stored answers and timing rounds
(`cascade`), so the headline, the Pareto fronts, the verdict and experiments weigh it like any
other. The specialist is compared with it like with a baseline; the cascade itself is paired
with each system it is made of, and with every other one, on the same test items.
`calibration` holds, for every system that gives label scores, its reliability on the test
items, and for each cascade's first system its reliability after the fitted temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.errors import FinetuneError
from finetune.evaluate import cascade as C
from finetune.evaluate import timing
from finetune.evaluate.calibration import (
    BINS,
    label_scores,
    nll,
    probabilities,
    reliability,
    top_confidence,
)
from finetune.evaluate.results import (
    Outcome,
    metric_entries,
    metric_names,
    paired_quality,
    round_figures,
    spread,
    timing_ratios,
)
from finetune.recipe import Recipe
from finetune.recipe.schema import CascadeConfig
from finetune.tasks import metrics as M
from finetune.tasks.types import task_type


@dataclass
class Routed:
    """A cascade on the test items: its answers, which items went to the fallback, and the
    per-item record for `predictions.jsonl`."""

    config: CascadeConfig
    predictions: list[Any]
    sent: np.ndarray
    items: list[dict[str, Any]]


def add_cascades(
    recipe: Recipe,
    document: dict[str, Any],
    outcomes: list[Outcome],
    validation: dict[str, Outcome],
    golds: list[Any],
    val_golds: list[Any],
    rounds: timing.Rounds,
) -> list[Routed]:
    """Add each cascade to `document` (a system, the specialist's comparison with it) and the
    calibration section; returns the cascades' routing for the predictions file."""
    by_name = {o.system.name: o for o in outcomes}
    figures = {o.system.name: round_figures(recipe, o, rounds) for o in outcomes}
    routed, calibrated = [], []
    for i, config in enumerate(recipe.eval.cascades):
        first, fallback = by_name[config.first], by_name[config.fallback]
        key = f"eval.cascades.{i}.first"
        scores, test_scores = (
            _scores(recipe, validation[first.system.name], key),
            _scores(recipe, first, key),
        )
        temp = C.temperature(config, scores, val_golds, list(recipe.task.labels))
        threshold, chosen = _threshold(recipe, config, validation, val_golds, scores, temp)
        conf = C.confidence(config.confidence, test_scores, temp)
        sent = C.escalated(conf, threshold)
        predictions = C.combine(first.predictions, fallback.predictions, sent)
        mixed = cascade_figures((first, fallback), figures, float(sent.mean()), rounds)
        entry = _system(recipe, config, (first, fallback), predictions, sent, golds, mixed)
        entry["cascade"] = {
            **_settings(config, threshold, temp),
            "validation": chosen,
            "test": _test_figures(recipe, conf, (first, fallback), golds, sent, document),
            "versus": _versus(recipe, predictions, outcomes, golds),
        }
        document["systems"].append(entry)
        mine = figures[outcomes[0].system.name]
        document["comparisons"].append(
            _specialist_vs(recipe, outcomes[0], entry, predictions, golds, (mine, mixed))
        )
        routed.append(Routed(config, predictions, sent, _items(conf, sent, predictions, golds)))
        if config.calibrate:
            calibrated.append((first, test_scores, temp))
    if recipe.task.type == "classification":  # label scores are classification's
        document["calibration"] = _calibration(recipe, outcomes, golds, calibrated)
    return routed


def check_first_scores(recipe: Recipe, validation: dict[str, Outcome]) -> None:
    """Each cascade's first system gave label scores: checked on its validation answers, so a
    system that cannot say how sure it is fails the evaluation before timing, not after."""
    for i, config in enumerate(recipe.eval.cascades):
        _scores(recipe, validation[config.first], f"eval.cascades.{i}.first")


def _scores(recipe: Recipe, outcome: Outcome, key: str) -> np.ndarray:
    scores = label_scores(outcome.details, list(recipe.task.labels))
    if scores is None:
        raise FinetuneError(
            f"{key}: {outcome.system.name!r} stores no label scores (it answers by generating "
            "text), so it cannot say how sure it is; make a system that gives label scores "
            "(the specialist, a local model, an engine) the first one"
        )
    return scores


def _threshold(recipe, config, validation, val_golds, scores, temp) -> tuple[float, dict]:
    """The threshold `pick` chooses on validation, and the validation figures at it."""
    first, fallback = validation[config.first], validation[config.fallback]
    metric = _metric(recipe, val_golds)
    conf = C.confidence(config.confidence, scores, temp)
    threshold = C.pick_threshold(config, conf, first.predictions, fallback.predictions, metric)
    sent = C.escalated(conf, threshold)
    return threshold, {
        "items": len(val_golds),
        "escalated": float(sent.mean()),
        "value": metric(C.combine(first.predictions, fallback.predictions, sent)),
        "first_value": metric(first.predictions),
        "fallback_value": metric(fallback.predictions),
    }


def _metric(recipe: Recipe, golds: list[Any]) -> C.Metric:
    name, labels = metric_names(recipe)[0], list(recipe.task.labels)
    return lambda preds: M.compute(recipe.task.type, name, golds, preds, labels=labels)


def _settings(config: CascadeConfig, threshold: float, temp: float) -> dict[str, Any]:
    return {
        "first": config.first,
        "fallback": config.fallback,
        "confidence": config.confidence,
        "pick": config.pick,
        "margin": config.margin,
        "max_escalated": config.max_escalated,
        "threshold": threshold,
        "temperature": temp,
        "calibrated": config.calibrate,
    }


def _test_figures(recipe, conf, pair, golds, sent, document) -> dict[str, Any]:
    """The escalated share on the test items and the curve over every threshold."""
    first, fallback = pair
    costs = {s["name"]: s["cost_per_1k"]["usd"] for s in document["systems"]}
    return {
        "items": len(golds),
        "escalated": float(sent.mean()),
        "escalated_items": int(sent.sum()),
        "curve": C.curve(
            conf,
            first.predictions,
            fallback.predictions,
            _metric(recipe, golds),
            (costs[first.system.name], costs[fallback.system.name]),
        ),
    }


def _system(recipe, config, pair, predictions, sent, golds, figures) -> dict[str, Any]:
    """The cascade as a system entry: every field a system has."""
    first, fallback = pair
    task, labels, share = task_type(recipe.task), list(recipe.task.labels), float(sent.mean())
    local = [o for o in pair if o.peak_memory is not None]
    details = C.combine(first.details, fallback.details, sent)
    return {
        "name": config.name,
        "role": "cascade",
        "kind": "cascade",
        "model": f"{config.first}, its least confident items to {config.fallback}",
        "serving": "cascade",
        "shots": first.system.shots,
        "prompt_style": f"{first.prompt_style} / {fallback.prompt_style}",
        "label_list": False,
        "metrics": metric_entries(recipe, golds, predictions, metric_names(recipe)),
        "per_class": task.per_class(golds, predictions, labels),
        "confusion": task.confusion(golds, predictions, labels),
        **_speed(pair, share, figures),
        # Both stay loaded to serve: their peaks add up (a remote one's is its server's).
        "peak_memory_bytes": sum(o.peak_memory for o in local) if local else None,
        "weights_bytes": sum(o.weights_bytes or 0 for o in local) or None,
        "parameters": _parameters(first, fallback),
        "disk_bytes": {
            "adapter": first.disk_bytes.get("adapter"),
            "model": sum((o.disk_bytes.get("model") or o.weights_bytes or 0) for o in local),
        },
        "tokens": {
            "input_per_item": first.input_tokens + share * fallback.input_tokens,
            "output_per_item": first.output_tokens + share * fallback.output_tokens,
        },
        "truncated_items": sum(
            bool(a or (s and b))
            for a, b, s in zip(first.truncated, fallback.truncated, sent, strict=True)
        ),
        "failed_items": sum("failed" in d for d in details),
        "invalid_items": sum(bool(d.get("invalid")) for d in details),
        "eval_seconds": 0.0,  # no inference of its own
    }


def _parameters(first: Outcome, fallback: Outcome) -> dict[str, int | None]:
    totals = [o.parameters.get("total") for o in (first, fallback)]
    return {
        "total": None if None in totals else sum(totals),
        "trainable": sum(o.parameters.get("trainable") or 0 for o in (first, fallback)),
    }


def cascade_figures(pair: tuple[Outcome, Outcome], figures: dict, share: float, rounds) -> dict:
    """The cascade's figures round by round (`cascade`), in `round_figures`' shape, plus p95,
    from the two systems' (`figures`, by name). Rounds of one evaluation pair by number;
    otherwise by their order."""
    first, fallback = pair
    a_fig, b_fig = figures[first.system.name], figures[fallback.system.name]
    a_rec, b_rec = rounds.of(first.system.name), rounds.of(fallback.system.name)
    same = a_fig["evaluation"] == b_fig["evaluation"]
    if same:
        pairs = [
            (i, b_fig["round"].index(r))
            for i, r in enumerate(a_fig["round"])
            if r in b_fig["round"]
        ]
    else:
        pairs = [(i, i) for i in range(min(len(a_rec), len(b_rec)))]
    out: dict[str, Any] = {k: [] for k in ("latency", "p95", "throughput", "cost", "round", "busy")}
    for i, j in pairs:
        mix = C.mixed_latencies(
            a_rec[i].measurement.latencies_ms, b_rec[j].measurement.latencies_ms, share
        )
        out["latency"].append(C.weighted_quantile(*mix, 0.5))
        out["p95"].append(C.weighted_quantile(*mix, 0.95))
        out["throughput"].append(
            C.mixed_throughput(a_fig["throughput"][i], b_fig["throughput"][j], share)
        )
        out["cost"].append(C.mixed_cost(a_fig["cost"][i], b_fig["cost"][j], share))
        out["round"].append(a_fig["round"][i])
        out["busy"].append(a_fig["busy"][i] or b_fig["busy"][j])
    # Another evaluation's rounds never pair with this one's.
    out["evaluation"] = (
        a_fig["evaluation"] if same else f"{a_fig['evaluation']}+{b_fig['evaluation']}"
    )
    return out


def _speed(pair: tuple[Outcome, Outcome], share: float, figures: dict) -> dict[str, Any]:
    first, fallback = pair
    latency, speed, usd = (timing.summary(figures[k]) for k in timing.FIGURES)
    return {
        "latency_ms": {
            "p50": latency["median"],
            "p95": timing.summary(figures["p95"])["median"],
            "items": "mixture",
            **spread(latency),
        },
        "throughput_items_per_s": speed["median"],
        "throughput": {"items": "serial mixture", **spread(speed)},
        "cost_per_1k": {
            "usd": usd["median"],
            "basis": f"{first.system.name} for every item + {share:.1%} of items "
            f"x {fallback.system.name}",
            **spread(usd),
        },
        "resident": True,
        "load": [],
    }


def _versus(recipe: Recipe, predictions: list, outcomes: list[Outcome], golds: list) -> list:
    """The cascade paired with every system on the same test items."""
    out = []
    for o in outcomes:
        q = paired_quality(recipe, predictions, o.predictions, golds, metric_names(recipe)[0])
        mc = q["mcnemar"]
        out.append(
            {
                "system": o.system.name,
                "cascade": q["specialist"],
                "other": q["other_value"],
                **{k: q[k] for k in ("metric", "difference", "low", "high", "significant")},
                "mcnemar": mc
                and {
                    "cascade_only": mc["specialist_only"],
                    "other_only": mc["baseline_only"],
                    "p_value": mc["p_value"],
                },
            }
        )
    return out


def _specialist_vs(recipe, specialist: Outcome, entry, predictions, golds, figures) -> dict:
    """The specialist against the cascade, as against a baseline."""
    mine, theirs = figures
    q = paired_quality(recipe, specialist.predictions, predictions, golds, metric_names(recipe)[0])
    q["baseline_value"] = q.pop("other_value")
    return {
        "baseline": entry["name"],
        **q,
        "timing": timing_ratios(mine, theirs, recipe.eval.confidence),
    }


def _items(conf, sent, predictions, golds) -> list[dict[str, Any]]:
    return [
        {
            "prediction": p,
            "score": float(p == g),
            "escalated": bool(s),
            "confidence": round(float(c), 5),
        }
        for c, s, p, g in zip(conf, sent, predictions, golds, strict=True)
    ]


def _calibration(recipe: Recipe, outcomes: list[Outcome], golds: list, calibrated: list) -> dict:
    """Reliability on the test items of every system with label scores, as they are, and of
    each cascade's first system after its temperature."""
    labels = list(recipe.task.labels)
    gold = np.array([labels.index(g) for g in golds])
    systems = []
    for o in outcomes:
        scores = label_scores(o.details, labels)
        if scores is not None:
            systems.append(
                {"name": o.system.name, "system": o.system.name, **_reliability(scores, gold, 1.0)}
            )
    done = set()
    for o, scores, temp in calibrated:
        if o.system.name not in done:
            done.add(o.system.name)
            name = f"{o.system.name}, T = {temp:.2f}"
            systems.append(
                {"name": name, "system": o.system.name, **_reliability(scores, gold, temp)}
            )
    return {"bins": BINS, "items": len(golds), "systems": systems}


def _reliability(scores: np.ndarray, gold: np.ndarray, temp: float) -> dict[str, Any]:
    p = probabilities(scores, temp)
    right = np.where(np.isnan(p), -1.0, p).argmax(axis=1) == gold
    right &= ~np.isnan(p).any(axis=1)
    return {
        "temperature": temp,
        "nll": nll(scores, gold, temp),
        **reliability(top_confidence(p), right),
    }
