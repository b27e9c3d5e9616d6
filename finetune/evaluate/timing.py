"""Latency and throughput measured in rounds, so that load on the machine cannot pick a winner.

Each round times every system on the same items: the latency items one at a time, then the
throughput items at the evaluation batch size. The order of systems changes between rounds
(as listed, reversed, then shuffled by the recipe's seed), so a busy minute lands on several
systems instead of on whichever one happened to be timed then. What else the machine was
doing is sampled around every measurement (`machine_load`).

From the rounds: each system's figure is the median over rounds with its spread; the
specialist's ratio to each baseline is taken round by round (paired: both were timed within
the same round) and gets the sign-test interval for its median (`stats.median_interval`).
A difference is called only when that interval excludes 1. Where busy rounds leave too few
rounds quiet for both, the ratio is taken over each system's own quiet rounds instead, as for
systems timed in different evaluations (`unpaired_ratio`). Rounds that the machine's load or
a figure far from its median marks as disturbed are listed, never dropped.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from finetune.evaluate.machine_load import LoadSample, load_between, snapshot
from finetune.stats import median_interval, shift_interval

# A round whose figure is this far from the system's median, or 4 robust standard deviations
# of all systems' rounds if that is wider, is called out. On an idle 2-core machine here single
# rounds strayed up to 1.37x from their system's median (27% of p50 latency, 6 rounds, 4
# systems); a CPU hog made them 3-4x.
OUTLIER_FLOOR = math.log(1.5)
OUTLIER_SIGMAS = 4.0
FIGURES = ("latency", "throughput", "cost")


@dataclass(frozen=True)
class Measurement:
    latencies_ms: list[float]
    throughput_seconds: float
    throughput_items: int


@dataclass(frozen=True)
class Target:
    """One system to time: `open()` makes it ready (loading it, for a model that does not stay
    loaded) and yields a function that takes one measurement."""

    name: str
    open: Callable[[], AbstractContextManager[Callable[[], Measurement]]]
    resident: bool = True


@dataclass(frozen=True)
class Record:
    round: int  # 1-based
    position: int  # 1-based place in the round's order
    name: str
    measurement: Measurement
    load: LoadSample

    @property
    def p50(self) -> float:
        return float(statistics.median(self.measurement.latencies_ms))

    @property
    def p95(self) -> float:
        return _percentile(self.measurement.latencies_ms, 95)

    @property
    def throughput(self) -> float:
        m = self.measurement
        return m.throughput_items / m.throughput_seconds if m.throughput_seconds > 0 else math.nan


@dataclass
class Rounds:
    """Everything the timing rounds produced."""

    requested: int
    orders: list[list[str]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    resident: list[str] = field(default_factory=list)  # systems whose model stayed loaded
    evaluation: str = ""  # an id of this evaluation's rounds, kept with each system's records
    evaluated_at: str = ""
    # Systems whose records come from an earlier evaluation: name -> {evaluation, evaluated_at}.
    reused: dict[str, dict[str, str]] = field(default_factory=dict)

    def of(self, name: str) -> list[Record]:
        return sorted((r for r in self.records if r.name == name), key=lambda r: r.round)

    @property
    def done(self) -> int:
        return len(self.orders)

    def evaluation_of(self, name: str) -> str:
        """The evaluation whose rounds timed `name`: rounds of one evaluation pair up."""
        return self.reused[name]["evaluation"] if name in self.reused else self.evaluation


Observer = Callable[[str, int, str], None]  # (event "start" | "end", round, system name)


def round_orders(names: list[str], rounds: int, seed: int) -> list[list[str]]:
    """As listed, reversed, then a fresh seeded shuffle for every further round."""
    rng = random.Random(seed)
    orders = []
    for r in range(rounds):
        if r == 0:
            orders.append(list(names))
        elif r == 1:
            orders.append(names[::-1])
        else:
            orders.append(rng.sample(names, len(names)))
    return orders


def run_rounds(
    targets: list[Target],
    rounds: int,
    *,
    seed: int,
    budget_seconds: float,
    observer: Observer | None = None,
    on_step: Callable[[int, str], None] | None = None,
) -> Rounds:
    """Time every target once per round; stop starting rounds once another would overrun
    `budget_seconds` (the first round always runs)."""
    by_name = {t.name: t for t in targets}
    result = Rounds(requested=rounds)
    start = time.monotonic()
    longest = 0.0
    for number, order in enumerate(round_orders(list(by_name), rounds, seed), start=1):
        elapsed = time.monotonic() - start
        if number > 1 and elapsed + longest > budget_seconds:
            result.stopped_early = True
            break
        began = time.monotonic()
        result.orders.append(order)
        for position, name in enumerate(order, start=1):
            result.records.append(_time_one(by_name[name], number, position, observer))
            if on_step:
                on_step(number, name)
        longest = max(longest, time.monotonic() - began)
    result.seconds = time.monotonic() - start
    return result


def _time_one(target: Target, number: int, position: int, observer: Observer | None) -> Record:
    with target.open() as measure:
        if observer:
            observer("start", number, target.name)
        try:
            before = snapshot()
            measurement = measure()
            after = snapshot()
        finally:
            if observer:
                observer("end", number, target.name)
    return Record(number, position, target.name, measurement, load_between(before, after))


def figures_by_round(records: list[Record], cost: Callable[[float], float | None]) -> dict:
    """Per round: p50 latency (ms), throughput (items/s) and cost per 1k requests (USD), the
    round's number and whether the machine was busy during it."""
    return {
        "latency": [r.p50 for r in records],
        "throughput": [r.throughput for r in records],
        "cost": [cost(r.throughput) for r in records],
        "round": [r.round for r in records],
        "busy": [r.load.busy for r in records],
    }


def summary(values: list[float | None]) -> dict[str, Any]:
    """Median over rounds with its spread (min, max)."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"median": None, "low": None, "high": None, "rounds": values}
    return {
        "median": float(statistics.median(clean)),
        "low": float(min(clean)),
        "high": float(max(clean)),
        "rounds": values,
    }


def paired_ratio(
    mine: list[float | None],
    theirs: list[float | None],
    confidence: float,
    busy: list[bool] | None = None,
    numbers: list[int] | None = None,
) -> dict[str, Any]:
    """The round-by-round ratio mine / theirs: its median, the sign-test interval for that
    median, and whether the interval excludes 1 (`clear`).

    Rounds in which the machine was busy while either was timed (`busy`, from the load sampled
    around each measurement, not from the figures) are left out and listed in `left_out` by
    their `numbers`: the interval is [min, max] at these round counts, so one busy round kept
    in would stretch it over 1 whatever the other rounds say."""
    busy = busy or [False] * len(mine)
    numbers = numbers or list(range(1, len(mine) + 1))
    ratios, left_out = [], []
    for a, b, disturbed, number in zip(mine, theirs, busy, numbers, strict=True):
        if a is None or not b or math.isnan(a):
            continue
        if disturbed:
            left_out.append(number)
        else:
            ratios.append(a / b)
    interval = median_interval(ratios, confidence)  # None for too few ratios, or none
    low, high = interval if interval else (None, None)
    return {
        "ratio": float(statistics.median(ratios)) if ratios else None,
        "low": low,
        "high": high,
        "rounds": len(ratios),
        "clear": interval is not None and (high < 1 or low > 1),
        "left_out": left_out,
        "paired": True,
    }


def unpaired_ratio(
    mine: list[float | None],
    theirs: list[float | None],
    confidence: float,
    busy: tuple[list[bool], list[bool]] | None = None,
) -> dict[str, Any]:
    """mine / theirs for two systems timed in different evaluations, where no round pairs them:
    the Hodges-Lehmann estimate of the ratio (over every pair of rounds) with Moses'
    distribution-free interval, on the log figures. Rounds in which the machine was busy are
    left out of each side; `left_out` counts them, since round numbers name different
    evaluations here."""
    mine_busy, theirs_busy = busy or ([False] * len(mine), [False] * len(theirs))
    a = _logs([v for v, b in zip(mine, mine_busy, strict=True) if not b])
    b = _logs([v for v, b in zip(theirs, theirs_busy, strict=True) if not b])
    shift, low, high = shift_interval(a, b, confidence) if a and b else (None, None, None)
    return {
        "ratio": math.exp(shift) if shift is not None else None,
        "low": math.exp(low) if low is not None else None,
        "high": math.exp(high) if high is not None else None,
        "rounds": min(len(a), len(b)),
        "clear": low is not None and (high < 0 or low > 0),
        "left_out": sum(mine_busy) + sum(theirs_busy),
        "paired": False,
    }


def round_ratio(
    mine: list[float | None],
    theirs: list[float | None],
    confidence: float,
    busy: tuple[list[bool], list[bool]],
    numbers: list[int],
) -> dict[str, Any]:
    """mine / theirs for two systems timed in the same rounds: paired by round, rounds in which
    either was busy left out (`paired_ratio`). Where that leaves too few rounds for an interval,
    each system's own quiet rounds are compared as if timed apart (`unpaired_ratio`), marked by
    `paired_rounds` (the rounds quiet for both, perhaps none): a 500x gap is decided over 5
    quiet rounds each though only 3 were quiet for both. The paired ratio, without an interval,
    stays when even that has too few rounds."""
    either = [a or b for a, b in zip(*busy, strict=True)]
    paired = paired_ratio(mine, theirs, confidence, either, numbers)
    if paired["low"] is not None:
        return paired
    apart = unpaired_ratio(mine, theirs, confidence, busy)
    if apart["low"] is None:
        return paired
    return {**apart, "left_out": paired["left_out"], "paired_rounds": paired["rounds"]}


def normal_spread(figures: list[dict[str, list]]) -> float:
    """A robust standard deviation of log(figure / its system's median), pooled over systems."""
    pooled = []
    for figs in figures:
        for key in ("latency", "throughput"):
            logs = _logs(figs[key])
            if len(logs) >= 3:
                center = statistics.median(logs)
                pooled += [abs(x - center) for x in logs]
    return 1.4826 * statistics.median(pooled) if pooled else 0.0


def disturbed_rounds(
    records: list[Record], figures: dict[str, list], spread: float = 0.0
) -> list[dict[str, Any]]:
    """Rounds of one system that the machine's load or a figure far from its median (beyond
    `normal_spread`) mark, with the figures they touch (a busy machine touches them all; cost
    follows throughput)."""
    limit = max(OUTLIER_FLOOR, OUTLIER_SIGMAS * spread)
    out = []
    deviations = {k: _deviations(figures[k], limit) for k in ("latency", "throughput")}
    for i, record in enumerate(records):
        reasons = [_load_reason(record.load)] if record.load.busy else []
        outliers = {k for k, devs in deviations.items() if devs[i] is not None}
        reasons += [f"{k} {math.exp(deviations[k][i]):.2f}x its median" for k in sorted(outliers)]
        if not reasons:
            continue
        affected = set(FIGURES) if record.load.busy else outliers
        if "throughput" in affected:
            affected.add("cost")
        out.append(
            {
                "system": record.name,
                "round": record.round,
                "figures": [f for f in FIGURES if f in affected],
                "reasons": reasons,
                "busy": record.load.busy,
                "load": record.load.as_dict(),
            }
        )
    return out


def _logs(values: list[float | None]) -> list[float]:
    return [math.log(v) for v in values if v and not math.isnan(v) and v > 0]


def _deviations(values: list[float | None], limit: float) -> list[float | None]:
    """log(value / median) where it is beyond `limit`, else None."""
    clean = _logs(values)
    if len(clean) < 3:
        return [None] * len(values)
    center = statistics.median(clean)
    logs = [math.log(v) if v and not math.isnan(v) and v > 0 else None for v in values]
    return [x - center if x is not None and abs(x - center) > limit else None for x in logs]


def _load_reason(load: LoadSample) -> str:
    parts = []
    if load.others_cores is not None:
        parts.append(f"other processes used {load.others_cores:.2f} cores")
    if load.steal_share:
        parts.append(f"the hypervisor took {load.steal_share:.0%} of the CPU time")
    return "machine busy: " + ", ".join(parts)


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))
