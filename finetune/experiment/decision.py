"""What an experiment decides: the crossover of a learning curve with a general system (paired
tests on the same items), and the system to deploy under the experiment's constraints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from finetune.evaluate.stats import mcnemar_exact


@dataclass(frozen=True)
class Point:
    """One training size of a learning curve against one general system."""

    size: int
    specialist_only: int  # items only the specialist got right
    general_only: int  # items only the general system got right
    p_value: float
    verdict: str  # better | worse | no clear difference


@dataclass(frozen=True)
class Crossover:
    smallest_better: int | None  # the fewest training examples at which the specialist wins
    largest_worse: int | None  # the most at which it still loses
    points: list[Point]

    def describe(self, general: str) -> str:
        better = (
            f"significantly better than {general} from {self.smallest_better} training examples"
            if self.smallest_better is not None
            else f"not significantly better than {general} within the sizes tried"
        )
        worse = (
            f"; still significantly worse at {self.largest_worse}"
            if self.largest_worse is not None
            else f"; never significantly worse than {general}"
        )
        return better + worse


def crossover(
    curve: Mapping[int, Mapping[str, bool]], general: Mapping[str, bool], alpha: float = 0.05
) -> Crossover:
    """`curve`: per training size, the specialist's per-item correctness by item id; `general`:
    the general system's on the same items. Each size is an exact McNemar test on the items both
    were scored on."""
    points = []
    for size in sorted(curve):
        ids = sorted(set(curve[size]) & set(general))
        test = mcnemar_exact([curve[size][i] for i in ids], [general[i] for i in ids])
        if test.p_value < alpha:
            verdict = "better" if test.a_only > test.b_only else "worse"
        else:
            verdict = "no clear difference"
        points.append(Point(size, test.a_only, test.b_only, test.p_value, verdict))
    better = [p.size for p in points if p.verdict == "better"]
    worse = [p.size for p in points if p.verdict == "worse"]
    return Crossover(min(better, default=None), max(worse, default=None), points)


@dataclass(frozen=True)
class Candidate:
    """A system as the decision sees it; None for a figure not measured (a remote system's
    memory), which no constraint rules out."""

    name: str
    value: float  # the primary metric
    p50_ms: float | None = None
    usd_per_1k: float | None = None
    memory_gb: float | None = None


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


def recommend(candidates: list[Candidate], constraints: Any) -> Recommendation:
    """The best primary metric among the systems that meet every constraint (ties: the faster),
    and the next best with what it gives up or costs."""
    limits = {
        "p50 latency": ("p50_ms", constraints.max_p50_ms),
        "cost per 1k requests": ("usd_per_1k", constraints.max_usd_per_1k),
        "peak memory": ("memory_gb", constraints.max_memory_gb),
    }
    excluded, eligible = {}, []
    for c in candidates:
        broken = [
            name
            for name, (attr, limit) in limits.items()
            if limit is not None and getattr(c, attr) is not None and getattr(c, attr) > limit
        ]
        if broken:
            excluded[c.name] = broken
        else:
            eligible.append(c)
    ranked = sorted(eligible, key=lambda c: (-c.value, c.p50_ms or 0.0))
    return Recommendation(
        ranked[0] if ranked else None, ranked[1] if len(ranked) > 1 else None, excluded
    )


def _trade(best: Candidate, other: Candidate, metric: str) -> str:
    """What choosing `other` instead of `best` gives up, and what it costs relative to it."""
    from finetune.report import format as F

    parts = [f"scores {best.value - other.value:.3f} less {metric}"]
    for label, attr, show in (
        ("p50 latency", "p50_ms", F.ms),
        ("cost per 1k", "usd_per_1k", F.usd),
    ):
        a, b = getattr(best, attr), getattr(other, attr)
        if a is not None and b is not None and a > 0:
            parts.append(f"{label} {show(b)} ({b / a:.2g}x)")
    return "; ".join(parts)
