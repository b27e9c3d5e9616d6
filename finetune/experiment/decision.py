"""What an experiment decides: the crossover of a learning curve with a general system (paired
tests on the same items) and the Pareto fronts of quality against latency, cost and memory. The
system to deploy under the constraints is `finetune.report.decision.recommend`, shared with one
run's bottom line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from finetune.report.decision import Candidate
from finetune.stats import McNemar, mcnemar_exact


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
