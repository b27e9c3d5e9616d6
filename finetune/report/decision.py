"""Which system to deploy: the first, in an order the caller gives, of the systems that meet the
constraints (`ConstraintsConfig`), the runner-up, and the limits every other one broke.

One run's bottom line (`verdict`) orders the systems by their paired tests against the
specialist; an experiment orders them by the primary metric (`by_quality`). Both rule systems
out with the same limits and words, which is why this sits below both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune.recipe.schema import ConstraintsConfig
from finetune.report import format as fmt


@dataclass(frozen=True)
class Candidate:
    """A system as the decision sees it; None for a figure not measured (a remote system's
    memory), which no constraint rules out."""

    name: str
    value: float  # the primary metric
    p50_ms: float | None = None
    usd_per_1k: float | None = None
    memory_gb: float | None = None
    labelling_usd: float | None = None  # what its training labels cost, once (an experiment's)

    def total_usd(self, requests: int) -> float | None:
        """Labelling once, then serving `requests` requests; None without a serving cost."""
        if self.usd_per_1k is None:
            return None
        return (self.labelling_usd or 0.0) + self.usd_per_1k * requests / 1000


def _gb(value: float) -> str:
    return f"{value:.3g} GB"


# What each limit reads: its words, the candidate's figure, the constraint, how both are shown.
LIMITS: tuple[tuple[str, str, str, Callable[[float], str]], ...] = (
    ("p50 latency", "p50_ms", "max_p50_ms", fmt.ms),
    ("cost per 1k requests", "usd_per_1k", "max_usd_per_1k", fmt.usd),
    ("peak memory", "memory_gb", "max_memory_gb", _gb),
)


def broken(candidate: Candidate, constraints: ConstraintsConfig) -> list[str]:
    """The limits `candidate` is over, by their words; a figure not measured breaks none."""
    return [
        label
        for label, attr, limit_attr, _ in LIMITS
        if getattr(constraints, limit_attr) is not None
        and getattr(candidate, attr) is not None
        and getattr(candidate, attr) > getattr(constraints, limit_attr)
    ]


def over_text(candidate: Candidate, constraints: ConstraintsConfig) -> list[str]:
    """`p50 latency 1,480 ms > 1,000 ms`, one for each limit `candidate` is over."""
    return [
        f"{label} {show(getattr(candidate, attr))} > {show(getattr(constraints, limit_attr))}"
        for label, attr, limit_attr, show in LIMITS
        if label in broken(candidate, constraints)
    ]


def constraints_text(constraints: ConstraintsConfig) -> str:
    """`p50 latency at most 1,000 ms; peak memory at most 8 GB`, or `none`."""
    shown = [
        f"{label} at most {show(getattr(constraints, limit_attr))}"
        for label, _, limit_attr, show in LIMITS
        if getattr(constraints, limit_attr) is not None
    ]
    return "; ".join(shown) if shown else "none"


def _known(value: float | None) -> float:
    """An unmeasured figure sorts last: it never wins a tie."""
    return math.inf if value is None else value


def by_quality(c: Candidate) -> tuple[float, float, float]:
    """Higher primary metric first; equal ones by cost, then p50 latency."""
    return (-c.value, _known(c.usd_per_1k), _known(c.p50_ms))


def by_total(requests: int, floor: float) -> Callable[[Candidate], tuple[bool, float, float]]:
    """The systems scoring at least `floor` (the best one's lower confidence bound) first, the
    cheapest of them to label once and serve `requests` requests first; then the rest."""

    def rank(c: Candidate) -> tuple[bool, float, float]:
        return (c.value < floor, _known(c.total_usd(requests)), -c.value)

    return rank


def total_text(c: Candidate, requests: int) -> str:
    """`$93 in all over 1,000,000 requests ($12 to label, $81 to serve)`."""
    total = c.total_usd(requests)
    if total is None:
        return "no measured serving cost"
    serving = total - (c.labelling_usd or 0.0)
    return (
        f"{fmt.usd(total)} in all over {fmt.count(requests)} requests "
        f"({fmt.usd(c.labelling_usd or 0.0)} to label, {fmt.usd(serving)} to serve)"
    )


def by_cost(c: Candidate) -> tuple[float, float, float]:
    """Lower cost first, then lower p50 latency, then higher primary metric."""
    return (_known(c.usd_per_1k), _known(c.p50_ms), -c.value)


@dataclass(frozen=True)
class Recommendation:
    best: Candidate | None
    runner_up: Candidate | None
    excluded: dict[str, list[str]] = field(default_factory=dict)  # name -> broken constraints

    def describe(self, metric: str) -> str:
        if self.best is None:
            return "No system meets the constraints."
        text = f"Deploy {self.best.name} ({metric} {self.best.value:.3f})."
        if self.runner_up is not None:
            text += f" The runner-up, {self.runner_up.name}, {_trade(self.best, self.runner_up, metric)}."
        return text


def recommend(
    candidates: list[Candidate],
    constraints: ConstraintsConfig,
    rank: Callable[[Candidate], Any] = by_quality,
) -> Recommendation:
    """The first system by `rank` among those that meet every constraint, and the next."""
    excluded = {c.name: broken(c, constraints) for c in candidates}
    excluded = {name: limits for name, limits in excluded.items() if limits}
    ranked = sorted((c for c in candidates if c.name not in excluded), key=rank)
    return Recommendation(
        ranked[0] if ranked else None, ranked[1] if len(ranked) > 1 else None, excluded
    )


def _trade(best: Candidate, other: Candidate, metric: str) -> str:
    """What choosing `other` instead of `best` gives up, and what it costs relative to it."""
    # Ranked by cost at a request volume, the runner-up may score more than the choice.
    gap = best.value - other.value
    parts = [f"scores {abs(gap):.3f} {'less' if gap >= 0 else 'more'} {metric}"]
    for label, attr, show in (
        ("p50 latency", "p50_ms", fmt.ms),
        ("cost per 1k", "usd_per_1k", fmt.usd),
    ):
        a, b = getattr(best, attr), getattr(other, attr)
        if a is not None and b is not None and a > 0:
            parts.append(f"{label} {show(b)} ({b / a:.2g}x)")
    return "; ".join(parts)
