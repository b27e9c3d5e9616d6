"""Where an experiment's training labels came from, and what that means for the decision.

- Students of a teacher (`labels.teacher` cells): at each training size, whether the student
  keeps the teacher's quality, the paired non-inferiority call each cell's evaluation made
  (`evaluate.teacher`). A size counts only when every seed's run keeps it, as a crossover
  counts a size only when every seed agrees.
- Cost at the recipe's request volume (`eval.prices.requests`): each system's labelling, paid
  once (a teacher's labelling as it cost, human labels at `eval.prices.per_human_label`),
  plus serving that many requests; the recommendation is then the cheapest of the systems
  that score within the best one's confidence interval (`report.decision.by_total`).
"""

from __future__ import annotations

from collections import defaultdict

from finetune.experiment.entries import Entry
from finetune.recipe.schema import ConstraintsConfig
from finetune.report import format as F
from finetune.report.decision import (
    Candidate,
    Recommendation,
    broken,
    by_quality,
    by_total,
    recommend,
    total_text,
)
from finetune.report.tables import Table


def taught(found: list[Entry]) -> dict[str, dict[int, list[Entry]]]:
    """The taught specialists' runs, by kind and training size."""
    curves: dict[str, dict[int, list[Entry]]] = defaultdict(lambda: defaultdict(list))
    for e in found:
        if e.teacher is not None:
            curves[e.kind][e.train_examples].append(e)
    return curves


def keeps_from(sizes: dict[int, list[Entry]]) -> int | None:
    """The fewest teacher labels at which every run keeps the teacher's quality."""
    kept = [n for n, runs in sizes.items() if all(e.teacher["non_inferior"] for e in runs)]
    return min(kept, default=None)


def teacher_findings(found: list[Entry]) -> list[str]:
    """`specialist (labels=teacher) keeps qwen's accuracy from 500 teacher labels (...)`."""
    lines = []
    for kind, sizes in taught(found).items():
        first = next(iter(sizes.values()))[0].teacher
        smallest, margin = keeps_from(sizes), first["margin"]
        which = f"{first['teacher']}'s {F.metric_label(first['metric'])}"
        lines.append(
            f"{kind} keeps {which} (non-inferior within {margin:g}) from {smallest} teacher "
            "labels on."
            if smallest is not None
            else f"{kind} does not keep {which} (within {margin:g}) at any size tried."
        )
    return lines


def teacher_table(found: list[Entry]) -> Table:
    """Each taught run against its teacher: values, difference, lower bound, the call."""
    rows = []
    for kind, sizes in taught(found).items():
        for size in sorted(sizes):
            for e in sizes[size]:
                t = e.teacher
                rows.append(
                    [
                        kind,
                        str(size),
                        "-" if e.seed is None else str(e.seed),
                        f"{F.score(t['student_value'])} vs {F.score(t['teacher_value'])}",
                        f"{t['difference']:+.3f}",
                        f"{t['lower']:+.3f} (margin {-t['margin']:+.3f})",
                        f"{t['agreement']:.0%}",
                        "keeps" if t["non_inferior"] else "does not keep",
                    ]
                )
    columns = ["student", "teacher labels", "seed", "metric: student vs teacher"]
    columns += ["difference", "one-sided lower bound", "same answer", "call"]
    return Table("teacher", "Students against their teacher", columns, rows)


def decide(
    systems: list[Entry], constraints: ConstraintsConfig, requests: int | None
) -> Recommendation:
    """By quality; with a request volume, the cheapest in all among the systems that score
    within the best allowed one's confidence interval."""
    candidates = [e.candidate for e in systems]
    allowed = [e for e in systems if not broken(e.candidate, constraints)]
    if requests is None or not allowed:
        return recommend(candidates, constraints, by_quality)
    top = max(allowed, key=lambda e: e.metric["value"])
    # A single run's interval; over seeds, their mean (the range over seeds is no interval).
    floor = top.metric["value"] if "seeds" in top.metric else top.metric["low"]
    return recommend(candidates, constraints, by_total(requests, floor))


def volume_text(choice: Recommendation, requests: int | None) -> str:
    """What the chosen system and the runner-up cost in all at the request volume."""
    if requests is None or choice.best is None:
        return ""
    text = f" At that volume, {choice.best.name} costs {total_text(choice.best, requests)}"
    if choice.runner_up is not None:
        text += f"; {choice.runner_up.name}, {total_text(choice.runner_up, requests)}"
    return text + "."


def cost_table(systems: list[Entry], requests: int) -> Table:
    """Every system's labelling, serving and total cost at the request volume, cheapest first."""

    def total(c: Candidate) -> float:
        value = c.total_usd(requests)
        return float("inf") if value is None else value

    rows = []
    for e in sorted(systems, key=lambda e: total(e.candidate)):
        c = e.candidate
        known = c.total_usd(requests) is not None
        rows.append(
            [
                e.name,
                F.score(c.value),
                F.usd(c.labelling_usd or 0.0),
                F.usd(c.usd_per_1k) if c.usd_per_1k is not None else "-",
                F.usd(c.total_usd(requests)) if known else "-",
            ]
        )
    columns = ["system", "metric", "labelling (once)", "serving / 1k"]
    columns.append(f"total over {F.count(requests)} requests")
    return Table("costs", "Labelling and serving cost", columns, rows)
