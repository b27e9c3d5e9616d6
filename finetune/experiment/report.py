"""The experiment's combined report from its evaluated cells: a leaderboard of every system, the
learning curve (primary metric against training examples, one line per specialist kind, the
general systems as bands), the crossover with each general system, and the recommendation under
the constraints. Written as Markdown with its plot to `<runs_dir>/experiments/<name>/`.

A specialist kind is a cell's values other than its training size and seed; the TF-IDF
classifier each cell fits on the same rows is a kind of its own. General systems are scored on
the same test items in every cell, so each is taken once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from finetune.experiment.cells import Cell
from finetune.experiment.decision import Candidate, crossover, recommend
from finetune.experiment.schema import Experiment
from finetune.report import format as F

SIZE_KEY = "data.max_train_examples"
SEED_KEYS = ("seed",)


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # the curve it belongs to; "general" for a general system
    train_examples: int | None
    metric: dict[str, float]  # value, low, high of the primary metric
    candidate: Candidate
    correct: dict[str, bool]  # item id -> right on the primary metric


def entries(experiment: Experiment, cells: list[Cell]) -> tuple[str, list[Entry]]:
    """The primary metric and every system of the evaluated cells."""
    found, general, metric = [], {}, ""
    for cell in cells:
        results_path = cell.run_dir() / "eval" / "results.json"
        if not results_path.is_file():
            continue
        results = json.loads(results_path.read_text())
        metric = results["metrics"][0]
        correct = _correct(cell.run_dir() / "eval" / "predictions.jsonl")
        size = json.loads((cell.run_dir() / "train_summary.json").read_text())["train_examples"]
        for system in results["systems"]:
            name = system["name"]
            if system["role"] == "specialist" or system["model"] == "tfidf":
                kind = _kind(cell) if system["role"] == "specialist" else name
                label = f"{name} [{cell.label}]"
                found.append(_entry(label, kind, size, metric, system, correct[name]))
            elif name not in general:
                general[name] = _entry(name, "general", None, metric, system, correct[name])
    return metric, found + list(general.values())


def write(experiment: Experiment, cells: list[Cell]) -> Path | None:
    """Write the combined report; None when no cell has been evaluated."""
    metric, found = entries(experiment, cells)
    if not found:
        return None
    out = Path(cells[0].recipe.tracking.runs_dir) / "experiments" / experiment.name
    out.mkdir(parents=True, exist_ok=True)
    plot = _plot(metric, found, out / "learning_curve.png")
    (out / "report.md").write_text(_markdown(experiment, metric, found, plot), encoding="utf-8")
    return out / "report.md"


def _entry(name, kind, size, metric, system, correct) -> Entry:
    peak = system.get("peak_memory_bytes")
    candidate = Candidate(
        name,
        system["metrics"][metric]["value"],
        p50_ms=(system.get("latency_ms") or {}).get("p50"),
        usd_per_1k=(system.get("cost_per_1k") or {}).get("usd"),
        memory_gb=peak / 1e9 if peak else None,
    )
    return Entry(name, kind, size, system["metrics"][metric], candidate, correct)


def _correct(predictions: Path) -> dict[str, dict[str, bool]]:
    by_system: dict[str, dict[str, bool]] = defaultdict(dict)
    for line in predictions.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for name, p in row["predictions"].items():
            by_system[name][row["id"]] = p.get("score") == 1.0
    return by_system


def _kind(cell: Cell) -> str:
    rest = {k: v for k, v in cell.values.items() if k != SIZE_KEY and k not in SEED_KEYS}
    return "specialist" + (f" ({', '.join(f'{k}={v}' for k, v in rest.items())})" if rest else "")


def _curves(found: list[Entry]) -> dict[str, dict[int, list[Entry]]]:
    curves: dict[str, dict[int, list[Entry]]] = defaultdict(lambda: defaultdict(list))
    for e in found:
        if e.kind != "general":
            curves[e.kind][e.train_examples].append(e)
    return curves


def _markdown(experiment: Experiment, metric: str, found: list[Entry], plot: Path) -> str:
    name = F.metric_label(metric)
    lines = [f"# {experiment.name}", ""]
    lines += [experiment.description, ""] if experiment.description else []
    lines += ["## Leaderboard", ""]
    lines += [
        f"| system | training examples | {name} [95% CI] | p50 | cost / 1k | peak memory |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in sorted(found, key=lambda e: -e.metric["value"]):
        c = e.candidate
        lines.append(
            f"| {e.name} | {e.train_examples if e.train_examples is not None else '-'} | "
            f"{F.with_ci(e.metric)} | {F.ms(c.p50_ms) if c.p50_ms is not None else '-'} | "
            f"{F.usd(c.usd_per_1k) if c.usd_per_1k is not None else '-'} | "
            f"{f'{c.memory_gb:.2f} GB' if c.memory_gb is not None else 'remote'} |"
        )
    lines += ["", "## Learning curve", "", f"![learning curve]({plot.name})", ""]
    lines += ["## Crossover", "", *_crossovers(found), ""]
    candidates = [e.candidate for e in found]
    lines += ["## Recommendation", "", recommend(candidates, experiment.constraints).describe(name)]
    return "\n".join(lines) + "\n"


def _crossovers(found: list[Entry]) -> list[str]:
    """For each specialist kind and general system: where the paired test first says better."""
    lines = []
    for kind, sizes in _curves(found).items():
        for general in (e for e in found if e.kind == "general"):
            # Several seeds at one size: the first seed's run stands for the size here.
            curve = {size: runs[0].correct for size, runs in sizes.items()}
            result = crossover(curve, general.correct)
            points = "; ".join(
                f"{p.size}: {p.specialist_only} vs {p.general_only}, p = {F.p_value(p.p_value)}"
                for p in result.points
            )
            lines.append(
                f"- {kind} is {result.describe(general.name)} (exact McNemar per size, items "
                f"only one gets right: {points})."
            )
    return lines or ["- No general system to cross."]


def _plot(metric: str, found: list[Entry], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    curves = _curves(found)
    for kind, sizes in curves.items():
        xs = sorted(sizes)
        means = [sum(e.metric["value"] for e in sizes[x]) / len(sizes[x]) for x in xs]
        low = [min(e.metric["low"] for e in sizes[x]) for x in xs]
        high = [max(e.metric["high"] for e in sizes[x]) for x in xs]
        ax.plot(xs, means, marker="o", label=kind)
        ax.fill_between(xs, low, high, alpha=0.15)
    for j, e in enumerate(e for e in found if e.kind == "general"):
        color = f"C{len(curves) + j}"  # a colour no curve has
        ax.axhline(e.metric["value"], color=color, linestyle="--", linewidth=1, label=e.name)
        ax.axhspan(e.metric["low"], e.metric["high"], color=color, alpha=0.08)
    ax.set_xscale("log")
    sizes = sorted({x for curve in curves.values() for x in curve})
    ax.set_xticks(sizes, [str(x) for x in sizes])
    ax.minorticks_off()
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel(F.metric_label(metric))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
