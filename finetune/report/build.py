"""`write_report(run_dir)`: read the evaluation, write `report.md`, `report.html` and the
figures under `report/`, and log the same tables and figures to W&B."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from finetune.files import write_atomic
from finetune.report import tables
from finetune.report.cascade_plots import cascade_figures
from finetune.report.document import report_document
from finetune.report.html import render_html
from finetune.report.judge import judge_figures
from finetune.report.judge import table as judge_table
from finetune.report.markdown import render_markdown
from finetune.report.plots import Figure, make_figures
from finetune.report.results import (
    cascades,
    cost,
    disk_total,
    header,
    is_remote,
    latency,
    load_results,
    load_training,
    primary_metric,
)
from finetune.report.verdict import cautions, verdict

log = logging.getLogger(__name__)

FIGURES_DIR = "report"


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    figures: list[Path]


def write_report(run_dir: str | Path, *, console: Console | None = None) -> ReportPaths:
    """Write the comparison report of an evaluated run; print its headline table, verdict and
    paths to `console` when one is given."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    training, history = load_training(run_dir)
    figures = make_figures(results, run_dir, history, run_dir / FIGURES_DIR)
    figures += cascade_figures(results, run_dir / FIGURES_DIR)
    figures += judge_figures(results, run_dir / FIGURES_DIR)
    blocks = report_document(results, run_dir, training, figures)
    paths = ReportPaths(
        markdown=write_atomic(run_dir / "report.md", render_markdown(blocks, run_dir)),
        html=write_atomic(
            run_dir / "report.html", render_html(blocks, f"{results['recipe']} report")
        ),
        figures=[f.path for f in figures],
    )
    _track(results, run_dir, figures)
    if console is not None:
        console.print(tables.headline_table(results))
        for sentence in verdict(results):
            console.print(sentence, markup=False, highlight=False)
        for note in cautions(results):
            console.print(f"Caution: {note}", markup=False, highlight=False, style="bold red")
        console.print(f"Markdown report: {paths.markdown}", markup=False)
        console.print(f"HTML report (open in a browser): {paths.html}", markup=False)
    return paths


def headline_numbers(results: dict[str, Any]) -> dict[str, Any]:
    """Per-system headline values and per-baseline differences, as numbers for the W&B summary."""
    metric, values = primary_metric(results), {}
    for s in results["systems"]:
        name = s["name"].replace("/", "_")
        m = s["metrics"][metric]
        values |= {
            f"{name}/{metric}": m["value"],
            f"{name}/{metric}_low": m["low"],
            f"{name}/{metric}_high": m["high"],
            f"{name}/p50_latency_ms": latency(s),
            f"{name}/throughput_items_per_s": s["throughput_items_per_s"],
            f"{name}/peak_memory_gib": None if is_remote(s) else s["peak_memory_bytes"] / 2**30,
            f"{name}/disk_mb": None if is_remote(s) else disk_total(s) / 1e6,
            f"{name}/cost_per_1k_usd": cost(s),
        }
    for c in results["comparisons"]:
        name = c["baseline"].replace("/", "_")
        values[f"vs {name}/difference"] = c["difference"]
        values[f"vs {name}/significant"] = c["significant"]
        for figure, ratio in c["timing"].items():
            values[f"vs {name}/{figure}_ratio"] = ratio["ratio"]
            values[f"vs {name}/{figure}_clear"] = ratio["clear"]
    for p in (results.get("judge") or {}).get("pairs", []):
        name = p["baseline"].replace("/", "_")
        values |= {f"judge vs {name}/{k}": p[k] for k in ("win_rate", "low", "high", "sign_test_p")}
    values["timing/rounds"] = results["timing"]["rounds"]
    values["timing/disturbed_rounds"] = len(results["timing"]["disturbed"])
    values["bottom_line"] = verdict(results)[-1]
    return values


def _track(results: dict[str, Any], run_dir: Path, figures: list[Figure]) -> None:
    """Log the headline, metrics and comparison tables, every figure and the headline numbers."""
    from finetune.recipe import load_recipe
    from finetune.tracking import open_tracker

    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        log.warning("%s: no recipe.yaml, so the report is not logged to W&B", run_dir)
        return
    recipe = load_recipe(recipe_path)
    tracker = open_tracker(
        recipe, run_dir, job_type="report", config=header(results), name=f"{recipe.name}-report"
    )
    ok = False
    try:
        for table in (
            tables.headline(results),
            tables.metrics(results),
            tables.comparisons(results),
            tables.timing(results),
            tables.timing_ratios(results),
            *([tables.cascades(results)] if cascades(results) else []),
            *([tables.calibration(results)] if results.get("calibration") else []),
            *([tables.teacher(results)] if results.get("teacher") else []),
            *([judge_table(results)] if results.get("judge") else []),
        ):
            tracker.log_table(f"report/{table.key}", table.columns, table.rows)
        for figure in figures:
            tracker.log_image(f"report/{figure.key}", figure.path)
        tracker.summary(headline_numbers(results))
        ok = True
    finally:
        tracker.finish(ok)
