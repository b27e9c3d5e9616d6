"""Cascades (`eval.cascades`): the first system answers, and the items it is least sure of go
to the fallback. Everything here is computed from stored answers; nothing is run again.

- **Confidence** is read from the first system's label scores (`calibration`): its top label's
  probability normalized over the labels, or that minus the runner-up's (`margin`), after a
  temperature fitted on validation items when `calibrate` is on. An item it failed has
  confidence 0.
- **Threshold**: an item is escalated when its confidence is below it. It is chosen on the
  validation items only (`pick`); test items never move it.
- **Test figures**: the cascade's answer to a test item is the first system's, or the
  fallback's when escalated. Its cost per 1k requests is the first's plus the escalated share
  of the fallback's. Its latency, in each timing round, is the mixture in which an item takes
  one of the first system's timed latencies a, or (with the escalated share's probability)
  a + b for one of the fallback's b, every pair equally likely; p50 and p95 are that mixture's
  quantiles. Throughput is serial: 1 / (1/first + share/fallback).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from finetune.evaluate.calibration import fit_temperature, probabilities, top_confidence
from finetune.recipe.schema import CascadeConfig

Metric = Callable[[list[Any]], float]  # predictions -> the primary metric on one split's golds


def temperature(
    config: CascadeConfig, scores: np.ndarray, golds: list[Any], labels: list[str]
) -> float:
    """The first system's temperature: fitted to its validation scores when `calibrate` is on,
    else 1."""
    if not config.calibrate:
        return 1.0
    return fit_temperature(scores, np.array([labels.index(g) for g in golds]))


def confidence(signal: str, scores: np.ndarray, temp: float) -> np.ndarray:
    """Each item's confidence by `signal` (`CascadeConfig.confidence`); 0 for an item without
    scores."""
    p = probabilities(scores, temp)
    top = top_confidence(p)
    if signal == "probability":
        return top
    second = np.sort(np.where(np.isnan(p), 0.0, p), axis=1)[:, -2]
    return top - second


def escalated(conf: np.ndarray, threshold: float) -> np.ndarray:
    return conf < threshold


def combine(first: list[Any], fallback: list[Any], sent: np.ndarray) -> list[Any]:
    """The first system's answers, the fallback's where the item was escalated."""
    return [b if s else a for a, b, s in zip(first, fallback, sent, strict=True)]


def candidates(conf: np.ndarray) -> list[float]:
    """Every threshold that escalates a different set of these items, fewest escalated first:
    0 (none), each distinct confidence, and just above the highest (all)."""
    distinct = sorted({float(c) for c in conf})
    top = float(np.nextafter(distinct[-1], np.inf)) if distinct else 1.0
    return [0.0, *(c for c in distinct if c > 0.0), top]


def pick_threshold(
    config: CascadeConfig, conf: np.ndarray, first: list[Any], fallback: list[Any], metric: Metric
) -> float:
    """The threshold `config.pick` chooses from the validation items' confidences and answers."""
    if config.pick == "fixed":
        return float(config.threshold)
    thresholds = candidates(conf)
    if config.pick == "max_escalated":
        k = int(np.floor(config.max_escalated * len(conf) + 1e-9))
        return thresholds[-1] if k >= len(conf) else float(np.sort(conf)[k]) if k else 0.0
    target = metric(fallback) - config.margin
    for t in thresholds:
        if metric(combine(first, fallback, escalated(conf, t))) >= target - 1e-12:
            return t
    return thresholds[-1]  # unreachable: escalating all is the fallback itself


def curve(
    conf: np.ndarray,
    first: list[Any],
    fallback: list[Any],
    metric: Metric,
    costs: tuple[float | None, float | None],
) -> list[dict[str, Any]]:
    """The primary metric and cost at every threshold that changes the escalated set."""
    points = []
    for t in candidates(conf):
        sent = escalated(conf, t)
        share = float(sent.mean()) if len(conf) else 0.0
        value = metric(combine(first, fallback, sent))
        points.append(
            {"threshold": t, "escalated": share, "value": value, "cost": mixed_cost(*costs, share)}
        )
    return points


def mixed_cost(first: float | None, fallback: float | None, share: float) -> float | None:
    """Cost per 1k requests: every item pays the first system, escalated ones the fallback too."""
    if first is None or fallback is None:
        return None
    return first + share * fallback


def mixed_throughput(first: float | None, fallback: float | None, share: float) -> float | None:
    """Items per second when the escalated items' fallback work follows the first's."""
    if not first or not fallback:
        return None
    return 1.0 / (1.0 / first + share / fallback)


def mixed_latencies(
    first: list[float], fallback: list[float], share: float
) -> tuple[np.ndarray, np.ndarray]:
    """The latency mixture's values and their probabilities: a alone with 1 - share, a + b
    with share, over every timed a of the first system and b of the fallback."""
    a, b = np.asarray(first, float), np.asarray(fallback, float)
    both = (a[:, None] + b[None, :]).ravel()
    values = np.concatenate([a, both])
    weights = np.concatenate(
        [np.full(len(a), (1 - share) / len(a)), np.full(len(both), share / len(both))]
    )
    return values, weights


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-quantile of a discrete distribution, averaging the two values around a cumulative
    weight that hits q exactly (so equal weights give the ordinary median)."""
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(weights[order])
    i = int(np.searchsorted(cum, q - 1e-12))
    i = min(i, len(v) - 1)
    if abs(cum[i] - q) < 1e-12 and i + 1 < len(v):
        later = i + 1 + int(np.argmax(weights[order][i + 1 :] > 0))
        return float((v[i] + v[later]) / 2)
    return float(v[i])
