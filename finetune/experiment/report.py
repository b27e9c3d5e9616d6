"""The experiment's combined report from its evaluated cells: the recommendation under the
constraints and the crossovers up front, then a leaderboard of every system, the learning curve
(primary metric against training examples, one line per specialist kind, the general systems
as bands), the crossover with each general system size by size, and the Pareto fronts of
quality against p50 latency, cost per 1k requests and peak memory. Written as `report.md`,
a self-contained `report.html` and the figures to `<runs_dir>/experiments/<name>/`, and logged
to one W&B run grouped with the cells' runs. What it is built from is `entries`; its figures
are `figures`."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from finetune.experiment.cells import Cell
from finetune.experiment.decision import Crossover, crossover_runs, pareto
from finetune.experiment.entries import (
    FRONTS,
    GENERAL,
    Entry,
    curves_by_kind,
    entries,
    missing_cells,
    per_size,
)
from finetune.experiment.figures import curve_figure, pareto_figure, shown
from finetune.experiment.judged import unjudged_cells
from finetune.experiment.labelling import (
    cost_table,
    decide,
    taught,
    teacher_findings,
    teacher_table,
    volume_text,
)
from finetune.experiment.schema import Experiment
from finetune.files import write_atomic
from finetune.report import format as F
from finetune.report.decision import constraints_text
from finetune.report.document import Block, Bullets, Heading, Paragraph, Verdict
from finetune.report.html import render_html
from finetune.report.markdown import render_markdown
from finetune.report.plots import Figure
from finetune.report.tables import Table

log = logging.getLogger(__name__)


def write(experiment: Experiment, cells: list[Cell], console: Any = None) -> Path | None:
    """Write the combined report and print its findings and recommendation to `console`;
    None when no cell has been evaluated."""
    metric, found = entries(experiment, cells)
    if not found:
        return None
    out = Path(cells[0].recipe.tracking.runs_dir) / "experiments" / experiment.name
    figures = [curve_figure(metric, found, out), pareto_figure(metric, per_size(found), out)]
    figures = [f for f in figures if f is not None]
    blocks = document(experiment, cells, metric, found, figures)
    write_atomic(out / "report.md", render_markdown(blocks, out))
    page = write_atomic(
        out / "report.html", render_html(blocks, f"{experiment.name}: experiment report")
    )
    _track(experiment, cells, out, blocks, figures)
    if console is not None:
        verdict = next(b for b in blocks if isinstance(b, Verdict))
        for line in [*verdict.findings, verdict.bottom_line, *verdict.cautions]:
            console.print(line, markup=False, highlight=False)
        console.print(f"HTML report (open in a browser): {page}", markup=False)
    return out / "report.md"


def document(
    experiment: Experiment,
    cells: list[Cell],
    metric: str,
    found: list[Entry],
    figures: list[Figure],
) -> list[Block]:
    """What the report says, in order, for Markdown, HTML and W&B alike: the answer first,
    then the curve, the systems (each kind at each size, seeds averaged), the tests behind the
    answer, and every run last."""
    name, systems = F.metric_label(metric), per_size(found)
    crossings = _crossings(found)
    requests = cells[0].recipe.eval.prices.requests
    recommendation = decide(systems, experiment.constraints, requests)
    advice = recommendation.describe(name) + volume_text(recommendation, requests)
    by_key = {f.key: f for f in figures}
    blocks: list[Block] = [Heading(experiment.name, 1)]
    blocks += [Paragraph(experiment.description)] if experiment.description else []
    findings = [f"{kind} is {c.describe(g)}." for kind, g, c in crossings]
    blocks += [
        Paragraph(_setup(experiment, cells, found, metric)),
        Verdict(
            [*findings, *teacher_findings(found)] or ["No curve to cross."],
            advice,
            tuple(missing_cells(cells) + unjudged_cells(cells, experiment.judge_against)),
        ),
    ]
    if "learning_curve" in by_key:
        blocks += [Heading("Learning curve"), by_key["learning_curve"]]
    blocks += [Heading("Leaderboard"), _leaderboard(systems, name)]
    blocks += [
        Heading("Crossover"),
        _crossover_table(found, crossings),
        Bullets(_crossover_lines(crossings, experiment.judge_against is not None)),
    ]
    if taught(found):
        blocks += [Heading("Students and their teacher", 3), Paragraph(TEACHER_TEXT)]
        blocks += [teacher_table(found), Bullets(teacher_findings(found))]
    if "pareto" in by_key:
        blocks += [Heading("Pareto fronts"), by_key["pareto"], _front_table(systems, metric)]
    blocks += [Heading("Recommendation"), Paragraph(advice)]
    if requests is not None:
        blocks += [Paragraph(VOLUME_TEXT), cost_table(systems, requests)]
    blocks += [Bullets(_constraint_lines(experiment, recommendation.excluded))]
    if len(systems) < len(found):  # several seeds: each run's own figures
        blocks += [Heading("Every run"), _leaderboard(found, name, key="runs")]
    blocks += [Heading("Cells"), _cells_table(cells)]
    return blocks


TEACHER_TEXT = (
    "Each taught cell's evaluation calls whether its student keeps the teacher's quality: the "
    "one-sided lower confidence bound of (student - teacher) on the primary metric, paired on "
    "the same test items by the bootstrap, above minus the margin (`data.teacher.margin`). A "
    "size counts only when every seed's run keeps it."
)

VOLUME_TEXT = (
    "With a request volume (`eval.prices.requests`), the recommendation is the cheapest system "
    "in all (its labelling, paid once, plus serving that many requests) among those scoring "
    "within the best one's confidence interval. A teacher's labels cost what its labelling "
    "cost; human labels, `eval.prices.per_human_label` each."
)


def _cells_table(cells: list[Cell]) -> Table:
    """Every cell: its values, its run (named by the hash of what it trains), its state."""
    rows = [
        [
            str(c.index),
            c.label,
            f"`{c.run_dir()}`",
            "evaluated" if (c.run_dir() / "eval" / "results.json").is_file() else "not evaluated",
        ]
        for c in cells
    ]
    return Table("cells", "Cells", ["cell", "values", "run", "state"], rows)


def _setup(experiment: Experiment, cells: list[Cell], found: list[Entry], metric: str) -> str:
    evaluated = sum((c.run_dir() / "eval" / "results.json").is_file() for c in cells)
    general = [e.name for e in found if e.kind == GENERAL]
    return (
        f"{evaluated} of {len(cells)} cells evaluated, each an ordinary run of "
        f"`{experiment.recipe}` with the cell's values set, scored on the same test items as "
        f"every general system ({', '.join(general) or 'none'}). Primary metric: "
        f"{F.metric_label(metric)}, with bootstrap intervals over the items; {_tests(experiment)}."
    )


def _tests(experiment: Experiment) -> str:
    """How crossovers are tested: on the primary metric, or on the judge's verdicts."""
    if experiment.judge_against is None:
        return (
            "crossovers are exact McNemar tests on the items only one of the two systems got right"
        )
    return (
        f"the metric is each specialist's win rate against {experiment.judge_against} as the "
        "cells' judge (eval.judge) called it, ties as half, so that system sits at 0.5; "
        "crossovers are exact sign tests on the judge's wins against its losses (the items "
        "'only one gets right' below), ties and unjudged items left out"
    )


def _crossings(found: list[Entry]) -> list[tuple[str, str, Crossover]]:
    """(kind, general system, its crossover) for every specialist kind and general system, each
    run tested against the general system's answers in its own cell."""
    names = list(dict.fromkeys(n for e in found for n in e.against))
    out = []
    for kind, sizes in curves_by_kind(found).items():
        for general in names:
            runs = {
                size: [(e.correct, e.against[general]) for e in entries if general in e.against]
                for size, entries in sizes.items()
            }
            out.append((kind, general, crossover_runs(runs)))
    return out


def _crossover_lines(
    crossings: list[tuple[str, str, Crossover]], judged: bool = False
) -> list[str]:
    test = "exact sign test on the judge's verdicts" if judged else "exact McNemar"
    return [
        f"{kind} is {c.describe(general)} ({test} per size, items only one gets right: "
        f"{'; '.join(p.describe() for p in c.points)})."
        for kind, general, c in crossings
    ] or ["No general system to cross."]


def _crossover_table(found: list[Entry], crossings: list) -> Table:
    by_kind = curves_by_kind(found)
    rows = []
    for kind, general, c in crossings:
        for p in c.points:
            runs = by_kind[kind][p.size]
            mine = statistics.mean(e.metric["value"] for e in runs)
            rows.append(
                [
                    kind,
                    general,
                    str(p.size),
                    str(len(p.tests)),
                    F.score(mine),
                    f"{p.specialist_only} vs {p.general_only}",
                    F.p_value(p.p_value),
                    p.verdict,
                ]
            )
    columns = ["specialist", "general system", "training examples", "runs", "metric (mean)"]
    columns += ["items only one gets right (summed)", "p (largest over runs)", "call"]
    return Table("crossover", "Crossover, size by size", columns, rows)


def _leaderboard(found: list[Entry], metric_name: str, key: str = "leaderboard") -> Table:
    rows = []
    for e in sorted(found, key=lambda e: -e.metric["value"]):
        c = e.candidate
        rows.append(
            [
                e.name,
                str(e.train_examples) if e.train_examples is not None else "-",
                _metric_cell(e.metric),
                F.ms(c.p50_ms) if c.p50_ms is not None else "-",
                F.usd(c.usd_per_1k) if c.usd_per_1k is not None else "-",
                f"{c.memory_gb:.2f} GB" if c.memory_gb is not None else "remote",
            ]
        )
    seeds = any("seeds" in e.metric for e in found)
    level = f"{metric_name} [95% CI]" + ("; mean (range) over seeds" if seeds else "")
    columns = ["system", "training examples", level, "p50", "cost / 1k"]
    return Table(key, key.capitalize(), [*columns, "peak memory"], rows)


def _metric_cell(metric: dict[str, float]) -> str:
    if "seeds" in metric:
        return f"{F.score(metric['value'])} ({F.score(metric['low'])}-{F.score(metric['high'])})"
    return F.with_ci(metric)


def _front_table(found: list[Entry], metric: str) -> Table:
    candidates = [e.candidate for e in found]
    rows = []
    for attr, _, label in FRONTS:
        front = pareto(candidates, attr)
        rows.append(
            [label, "; ".join(f"{c.name} ({F.score(c.value)}, {shown(attr, c)})" for c in front)]
        )
    return Table(
        "pareto",
        "Pareto fronts",
        ["against", f"systems no other beats on both {F.metric_label(metric)} and it"],
        rows,
    )


def _constraint_lines(experiment: Experiment, excluded: dict[str, list[str]]) -> list[str]:
    lines = [f"Constraints (`constraints`): {constraints_text(experiment.constraints)}."]
    lines += [f"Ruled out: {name} ({', '.join(broken)})." for name, broken in excluded.items()]
    return lines


def _track(
    experiment: Experiment, cells: list[Cell], out: Path, blocks: list[Block], figures: list[Figure]
) -> None:
    """One W&B run in the experiment's group: its tables, figures and recommendation."""
    from finetune.tracking import open_tracker

    tracker = open_tracker(
        cells[0].recipe,
        out,
        job_type="experiment",
        config=experiment.model_dump(mode="json"),
        name=f"{experiment.name}-experiment",
    )
    ok = False
    try:
        for block in blocks:
            if isinstance(block, Table):
                tracker.log_table(f"experiment/{block.key}", block.columns, block.rows)
        for figure in figures:
            tracker.log_image(f"experiment/{figure.key}", figure.path)
        verdict = next(b for b in blocks if isinstance(b, Verdict))
        tracker.summary({"recommendation": verdict.bottom_line, "cells": len(cells)})
        ok = True
    finally:
        tracker.finish(ok)
