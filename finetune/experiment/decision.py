"""What an experiment decides: the crossover of a learning curve with a general system (paired
tests on the same items), and the system to deploy under the experiment's constraints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune.evaluate.stats import McNemar, mcnemar_exact


@dataclass(frozen=True)
class Point:
    """One training size of a learning curve against one general system: an exact McNemar test
    per seed's run on the same items. The size counts as better (or worse) only when every
    seed's test says so; one seed's luck does not move the crossover."""

    size: int
    tests: tuple[McNemar, ...]
    alpha: float = 0.05

    @property
    def specialist_only(self) -> int:
        """Items only the specialist got right, summed over seeds."""
        return sum(t.a_only for t in self.tests)

    @property
    def general_only(self) -> int:
        """Items only the general system got right, summed over seeds."""
        return sum(t.b_only for t in self.tests)

    @property
    def p_value(self) -> float:
        """The largest over seeds: the least significant seed decides."""
        return max(t.p_value for t in self.tests)

    @property
    def calls(self) -> list[str]:
        """Each seed's call: better | worse | no clear difference."""
        return [_call(t, self.alpha) for t in self.tests]

    @property
    def verdict(self) -> str:
        calls = set(self.calls)
        return calls.pop() if len(calls) == 1 else "no clear difference"

    def describe(self) -> str:
        """`200: 10 vs 0, p = 0.002`; with seeds, `200 (3 seeds): 10/8/12 vs 0/1/2, p = ...,
        better in 2 of 3`."""
        from finetune.report import format as F

        if len(self.tests) == 1:
            t = self.tests[0]
            return f"{self.size}: {t.a_only} vs {t.b_only}, p = {F.p_value(t.p_value)}"
        mine = "/".join(str(t.a_only) for t in self.tests)
        theirs = "/".join(str(t.b_only) for t in self.tests)
        ps = "/".join(F.p_value(t.p_value) for t in self.tests)
        tally = ", ".join(
            f"{c} in {self.calls.count(c)} of {len(self.tests)}"
            for c in ("better", "worse")
            if c in self.calls
        )
        return f"{self.size} ({len(self.tests)} seeds): {mine} vs {theirs}, p = {ps}" + (
            f"; {tally}" if tally else ""
        )


def _call(test: McNemar, alpha: float) -> str:
    if test.p_value >= alpha:
        return "no clear difference"
    return "better" if test.a_only > test.b_only else "worse"


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


Correct = Mapping[str, bool]  # item id -> right on the primary metric


def crossover(
    curve: Mapping[int, Correct | Sequence[Correct]], general: Correct, alpha: float = 0.05
) -> Crossover:
    """`curve`: per training size, the specialist's per-item correctness by item id (a list of
    them where several seeds ran that size); `general`: the general system's on the same items.
    Each size is an exact McNemar test per seed on the items both were scored on."""
    runs = {
        size: [(run, general) for run in ([runs] if isinstance(runs, Mapping) else runs)]
        for size, runs in curve.items()
    }
    return crossover_runs(runs, alpha)


def crossover_runs(
    runs: Mapping[int, Sequence[tuple[Correct, Correct]]], alpha: float = 0.05
) -> Crossover:
    """As `crossover`, each run paired with the general system's answers it was evaluated
    beside: (specialist, general) correctness per run, per training size."""
    points = []
    for size in sorted(runs):
        tests = []
        for mine, theirs in runs[size]:
            ids = sorted(set(mine) & set(theirs))
            tests.append(mcnemar_exact([mine[i] for i in ids], [theirs[i] for i in ids]))
        points.append(Point(size, tuple(tests), alpha))
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


def pareto(candidates: list[Candidate], attr: str) -> list[Candidate]:
    """The systems no other beats on both the primary metric (higher) and `attr` (lower: p50_ms,
    usd_per_1k or memory_gb), in rising `attr`; systems without the figure are left out."""
    known = [c for c in candidates if getattr(c, attr) is not None]

    def beaten(c: Candidate) -> bool:
        return any(
            o.value >= c.value
            and getattr(o, attr) <= getattr(c, attr)
            and (o.value > c.value or getattr(o, attr) < getattr(c, attr))
            for o in known
        )

    return sorted((c for c in known if not beaten(c)), key=lambda c: getattr(c, attr))
