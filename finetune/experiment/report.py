"""The experiment's combined report from its evaluated cells: the recommendation under the
constraints and the crossovers up front, then a leaderboard of every system, the learning curve
(primary metric against training examples, one line per specialist kind, the general systems
as bands), the crossover with each general system size by size, and the Pareto fronts of
quality against p50 latency, cost per 1k requests and peak memory. Written as `report.md`,
a self-contained `report.html` and the figures to `<runs_dir>/experiments/<name>/`, and logged
to one W&B run grouped with the cells' runs.

A specialist kind is a cell's values other than its training size and seed (and the keys that
vary together with the size); the TF-IDF classifier each cell fits on its training rows is a
kind of its own. General systems are scored on the same test items in every cell, so each is
taken once.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.experiment.cells import Cell
from finetune.experiment.decision import Crossover, crossover_runs, pareto
from finetune.experiment.schema import Experiment
from finetune.files import write_atomic
from finetune.report import format as F
from finetune.report.decision import Candidate, constraints_text, recommend
from finetune.report.document import Block, Bullets, Heading, Paragraph, Verdict
from finetune.report.html import render_html
from finetune.report.markdown import render_markdown
from finetune.report.plots import Figure, pyplot, save_png
from finetune.report.tables import Table
from finetune.systems import registry

log = logging.getLogger(__name__)
SIZE_KEY = "data.max_train_examples"
SEED_KEYS = ("seed",)
GENERAL = "general"
FRONTS = (
    ("p50_ms", "p50 latency (ms)", "p50 latency"),
    ("usd_per_1k", "cost per 1k requests (USD)", "cost per 1k requests"),
    ("memory_gb", "peak memory (GB)", "peak memory"),
)


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # the curve it belongs to; "general" for a general system
    train_examples: int | None
    seed: int | None
    metric: dict[str, float]  # value, low, high of the primary metric
    candidate: Candidate
    correct: dict[str, bool]  # item id -> right on the primary metric
    short: str = ""  # a label short enough for a plot
    # Each general system's correctness in the cell this entry comes from, by name: what the
    # entry is paired with (a few-shot system's examples are drawn by the cell's seed).
    against: dict[str, dict[str, bool]] = field(default_factory=dict)


def entries(experiment: Experiment, cells: list[Cell]) -> tuple[str, list[Entry]]:
    """The primary metric and every system of the evaluated cells, each once: a general system
    that answered differently in some cells (its shots drawn by another seed) once per variant."""
    found: dict[Any, Entry] = {}
    variants: dict[str, list[tuple[int, dict[str, bool], dict]]] = defaultdict(list)
    seeded, metric = any(k in SEED_KEYS for k in _varied(experiment)), ""
    for cell in cells:
        results_path = cell.run_dir() / "eval" / "results.json"
        if not results_path.is_file():
            continue
        results = json.loads(results_path.read_text())
        metric = results["metrics"][0]
        correct = _correct(cell.run_dir() / "eval" / "predictions.jsonl")
        size = json.loads((cell.run_dir() / "train_summary.json").read_text())["train_examples"]
        seed = cell.recipe.seed
        at = f" @ {size}" + (f", seed {seed}" if seeded else "")
        generals = {
            s["name"]: s
            for s in results["systems"]
            if s["role"] != "specialist" and registry.kind(s["kind"]).general
        }
        against = {name: correct[name] for name in generals}
        for name, system in generals.items():
            if all(right != correct[name] for _, right, _ in variants[name]):
                variants[name].append((seed, correct[name], system))
        for system in results["systems"]:
            name = system["name"]
            if name in generals:
                continue
            # The same rows give the same TF-IDF classifier in every cell that trains on them.
            curve = _kind(experiment, cell) if system["role"] == "specialist" else name
            key = (curve, size, seed)
            found.setdefault(
                key,
                _entry(curve + at, curve, size, seed, metric, system, correct[name], against),
            )
    general = [
        _entry(
            name if len(vs) == 1 else f"{name} [seed {seed}]",
            GENERAL,
            None,
            None,
            metric,
            system,
            right,
            {},
        )
        for name, vs in variants.items()
        for seed, right, system in vs
    ]
    return metric, [*found.values(), *general]


def _varied(experiment: Experiment) -> set[str]:
    return set(experiment.axes) | {k for group in experiment.paired for k in group}


def per_size(found: list[Entry]) -> list[Entry]:
    """The systems a deployment chooses between: each specialist kind at each training size,
    its seeds' runs as one (mean metric, median p50, cost and memory), and each general system.
    Picking the luckiest seed's run by its test score would overstate what that recipe gives."""
    groups: dict[Any, list[Entry]] = defaultdict(list)
    for e in found:
        groups[e.name if e.kind == GENERAL else (e.kind, e.train_examples)].append(e)
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        first, values = runs[0], [e.metric["value"] for e in runs]
        name = f"{first.kind} @ {first.train_examples} (mean of {len(runs)} seeds)"
        candidate = Candidate(
            name,
            statistics.mean(values),
            **{a: _median(getattr(e.candidate, a) for e in runs) for a, _, _ in FRONTS},
        )
        metric = {"value": candidate.value, "low": min(values), "high": max(values)}
        metric["seeds"] = len(runs)  # low and high: the range over seeds, not an interval
        short = f"{first.kind} @ {first.train_examples}"
        out.append(
            Entry(name, first.kind, first.train_examples, None, metric, candidate, {}, short)
        )
    return out


def _median(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def write(experiment: Experiment, cells: list[Cell], console: Any = None) -> Path | None:
    """Write the combined report and print its findings and recommendation to `console`;
    None when no cell has been evaluated."""
    metric, found = entries(experiment, cells)
    if not found:
        return None
    out = Path(cells[0].recipe.tracking.runs_dir) / "experiments" / experiment.name
    figures = [_curve_figure(metric, found, out), _pareto_figure(metric, per_size(found), out)]
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
    recommendation = recommend([e.candidate for e in systems], experiment.constraints)
    by_key = {f.key: f for f in figures}
    blocks: list[Block] = [Heading(experiment.name, 1)]
    blocks += [Paragraph(experiment.description)] if experiment.description else []
    blocks += [
        Paragraph(_setup(experiment, cells, found, metric)),
        Verdict(
            [f"{kind} is {c.describe(g)}." for kind, g, c in crossings] or ["No curve to cross."],
            recommendation.describe(name),
            tuple(_missing(cells)),
        ),
    ]
    if "learning_curve" in by_key:
        blocks += [Heading("Learning curve"), by_key["learning_curve"]]
    blocks += [Heading("Leaderboard"), _leaderboard(systems, name)]
    blocks += [
        Heading("Crossover"),
        _crossover_table(found, crossings),
        Bullets(_crossover_lines(crossings)),
    ]
    if "pareto" in by_key:
        blocks += [Heading("Pareto fronts"), by_key["pareto"], _front_table(systems, metric)]
    blocks += [Heading("Recommendation"), Paragraph(recommendation.describe(name))]
    blocks += [Bullets(_constraint_lines(experiment, recommendation.excluded))]
    if len(systems) < len(found):  # several seeds: each run's own figures
        blocks += [Heading("Every run"), _leaderboard(found, name, key="runs")]
    blocks += [Heading("Cells"), _cells_table(cells)]
    return blocks


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
        f"{F.metric_label(metric)}, with bootstrap intervals over the items; crossovers are "
        "exact McNemar tests on the items only one of the two systems got right."
    )


def _missing(cells: list[Cell]) -> list[str]:
    missing = [c for c in cells if not (c.run_dir() / "eval" / "results.json").is_file()]
    if not missing:
        return []
    listed = ", ".join(str(c.index) for c in missing)
    return [
        f"Not evaluated, so not in this report: {len(missing)} of {len(cells)} cells "
        f"({listed}; see Cells). Run the experiment again to finish them."
    ]


def _entry(name, kind, size, seed, metric, system, correct, against) -> Entry:
    peak = system.get("peak_memory_bytes")
    candidate = Candidate(
        name,
        system["metrics"][metric]["value"],
        p50_ms=(system.get("latency_ms") or {}).get("p50"),
        usd_per_1k=(system.get("cost_per_1k") or {}).get("usd"),
        memory_gb=peak / 1e9 if peak else None,
    )
    return Entry(
        name, kind, size, seed, system["metrics"][metric], candidate, correct, name, against
    )


def _correct(predictions: Path) -> dict[str, dict[str, bool]]:
    by_system: dict[str, dict[str, bool]] = defaultdict(dict)
    for line in predictions.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for name, p in row["predictions"].items():
            by_system[name][row["id"]] = p.get("score") == 1.0
    return by_system


def size_keys(experiment: Experiment) -> set[str]:
    """The training-size key and every key that varies together with it (a paired group)."""
    keys = {SIZE_KEY}
    for group in experiment.paired:
        if SIZE_KEY in group:
            keys |= set(group)
    return keys


def _kind(experiment: Experiment, cell: Cell) -> str:
    """`specialist (r=4, base=all-minilm-l6-v2)`: one value per axis other than size and seed
    (a paired group by its first key), each key by its last part."""
    sizing, seen, parts = size_keys(experiment) | set(SEED_KEYS), set(), []
    for group in [{k: None} for k in experiment.axes] + list(experiment.paired):
        first = next(iter(group))
        if first in sizing or first in seen:
            continue
        seen |= set(group)
        parts.append(f"{first.rsplit('.', 1)[-1]}={cell.values[first]}")
    return "specialist" + (f" ({', '.join(parts)})" if parts else "")


def _sizing(experiment: Experiment, cell: Cell) -> str:
    keys = size_keys(experiment) | set(SEED_KEYS)
    return ", ".join(f"{k}={v}" for k, v in cell.values.items() if k in keys) or "the recipe"


def _curves(found: list[Entry]) -> dict[str, dict[int, list[Entry]]]:
    curves: dict[str, dict[int, list[Entry]]] = defaultdict(lambda: defaultdict(list))
    for e in found:
        if e.kind != GENERAL:
            curves[e.kind][e.train_examples].append(e)
    return curves


def _crossings(found: list[Entry]) -> list[tuple[str, str, Crossover]]:
    """(kind, general system, its crossover) for every specialist kind and general system, each
    run tested against the general system's answers in its own cell."""
    names = list(dict.fromkeys(n for e in found for n in e.against))
    out = []
    for kind, sizes in _curves(found).items():
        for general in names:
            runs = {
                size: [(e.correct, e.against[general]) for e in entries if general in e.against]
                for size, entries in sizes.items()
            }
            out.append((kind, general, crossover_runs(runs)))
    return out


def _crossover_lines(crossings: list[tuple[str, str, Crossover]]) -> list[str]:
    return [
        f"{kind} is {c.describe(general)} (exact McNemar per size, items only one gets right: "
        f"{'; '.join(p.describe() for p in c.points)})."
        for kind, general, c in crossings
    ] or ["No general system to cross."]


def _crossover_table(found: list[Entry], crossings: list) -> Table:
    by_kind = _curves(found)
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
            [label, "; ".join(f"{c.name} ({F.score(c.value)}, {_show(attr, c)})" for c in front)]
        )
    return Table(
        "pareto",
        "Pareto fronts",
        ["against", f"systems no other beats on both {F.metric_label(metric)} and it"],
        rows,
    )


def _show(attr: str, c: Candidate) -> str:
    value = getattr(c, attr)
    return {"p50_ms": F.ms, "usd_per_1k": F.usd}.get(attr, lambda v: f"{v:.2f} GB")(value)


def _constraint_lines(experiment: Experiment, excluded: dict[str, list[str]]) -> list[str]:
    lines = [f"Constraints (`constraints`): {constraints_text(experiment.constraints)}."]
    lines += [f"Ruled out: {name} ({', '.join(broken)})." for name, broken in excluded.items()]
    return lines


def _curve_figure(metric: str, found: list[Entry], out: Path) -> Figure | None:
    """The learning curve, when the cells train on more than one size."""
    curves = _curves(found)
    sizes = sorted({x for curve in curves.values() for x in curve})
    if len(sizes) < 2:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10.5, 5))
    seeds = max(len(runs) for curve in curves.values() for runs in curve.values())
    for i, (kind, by_size) in enumerate(curves.items()):
        xs = sorted(by_size)
        values = [[e.metric["value"] for e in by_size[x]] for x in xs]
        means = [statistics.mean(v) for v in values]
        color = f"C{i}"
        ax.plot(xs, means, marker="o", color=color, label=kind)
        low = [min(e.metric["low"] for e in by_size[x]) for x in xs]
        high = [max(e.metric["high"] for e in by_size[x]) for x in xs]
        ax.fill_between(xs, low, high, color=color, alpha=0.12)
        if seeds > 1:  # the spread over seeds at each size
            below = [m - min(v) for m, v in zip(means, values, strict=True)]
            above = [max(v) - m for m, v in zip(means, values, strict=True)]
            ax.errorbar(xs, means, yerr=[below, above], fmt="none", ecolor=color, capsize=3)
    for j, e in enumerate(e for e in found if e.kind == GENERAL):
        color = f"C{len(curves) + j}"  # a colour no curve has
        ax.axhline(e.metric["value"], color=color, linestyle="--", linewidth=1.2, label=e.name)
        ax.axhspan(e.metric["low"], e.metric["high"], color=color, alpha=0.07)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(x) for x in sizes])
    ax.minorticks_off()
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel(F.metric_label(metric))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    spread = " Bars: the range over seeds." if seeds > 1 else ""
    caption = (
        f"{F.metric_label(metric)} against training examples; shaded: 95% intervals (the "
        f"widest over seeds); dashed: general systems with their intervals.{spread}"
    )
    return Figure("learning_curve", save_png(fig, out / "learning_curve.png"), caption)


def _pareto_figure(metric: str, found: list[Entry], out: Path) -> Figure | None:
    """Quality against p50 latency, cost and memory, each front drawn as a line."""
    candidates = [e.candidate for e in found]
    panels = [(a, x, t) for a, x, t in FRONTS if any(getattr(c, a) for c in candidates)]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.4 * len(panels)), squeeze=False)
    kinds = list(dict.fromkeys(e.kind for e in found if e.kind != GENERAL))
    for ax, (attr, xlabel, _) in zip(axes[:, 0], panels, strict=True):
        for e in found:
            x = getattr(e.candidate, attr)
            if not x:
                continue
            general = e.kind == GENERAL
            color = "black" if general else f"C{kinds.index(e.kind)}"
            ax.scatter(x, e.metric["value"], color=color, marker="s" if general else "o", s=28)
        front = pareto([c for c in candidates if getattr(c, attr)], attr)
        ax.plot([getattr(c, attr) for c in front], [c.value for c in front], "r--", linewidth=1)
        short = {e.name: e.short for e in found}
        for c in front:
            ax.annotate(
                short[c.name],
                (getattr(c, attr), c.value),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        values = [getattr(c, attr) for c in candidates if getattr(c, attr)]
        if min(values) > 0 and max(values) / min(values) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(F.metric_label(metric))
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color=f"C{i}", marker="o", linestyle="", label=k)
        for i, k in enumerate(kinds)
    ]
    handles.append(
        plt.Line2D([], [], color="black", marker="s", linestyle="", label="general systems")
    )
    handles.append(plt.Line2D([], [], color="red", linestyle="--", label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.015 * (len(handles) // 3), 1, 1))
    caption = (
        f"{F.metric_label(metric)} against p50 latency, cost per 1k requests and peak memory; "
        "each specialist kind at each training size is one point (its seeds averaged); the "
        "dashed line joins the systems no other beats on both (remote systems have no memory "
        "point)."
    )
    return Figure("pareto", save_png(fig, out / "pareto.png"), caption)


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
