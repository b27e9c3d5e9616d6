"""The report's figures as PNG files: quality against latency and against cost, confusion
matrices, and the training loss curve. Matplotlib runs headless (Agg); the specialist is
drawn in a highlight colour and every point carries its system's name."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.files import write_atomic
from finetune.report import format as fmt
from finetune.report.results import cost, latency, primary_metric, specialist

SPECIALIST_COLOR = "#d62728"
BASELINE_COLOR = "#1f77b4"
DPI = 120


@dataclass(frozen=True)
class Figure:
    key: str
    path: Path
    caption: str


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> Path:
    """Write the figure as a PNG atomically, and close it."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=DPI)
    pyplot().close(fig)
    return write_atomic(path, png.getvalue())


def tradeoff(
    results: dict[str, Any],
    x: Callable[[dict[str, Any]], float],
    xlabel: str,
    path: Path,
    spread: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Path:
    """Primary metric (with CI error bars) against a cost-like quantity, one point per system;
    `spread(system)` gives the quantity's range over timing rounds (`low`, `high`) as x bars."""
    plt = pyplot()
    metric, special = primary_metric(results), specialist(results)
    xs = [x(s) for s in results["systems"]]
    log = min(xs) > 0 and max(xs) / min(xs) > 10
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for s in results["systems"]:
        m, is_special = s["metrics"][metric], s is special
        xr = spread(s) if spread else {}
        xerr = None
        if xr.get("low") is not None and xr.get("high") is not None:
            xerr = [[max(x(s) - xr["low"], 0)], [max(xr["high"] - x(s), 0)]]
        ax.errorbar(
            x(s),
            m["value"],
            xerr=xerr,
            yerr=[[m["value"] - m["low"]], [m["high"] - m["value"]]],
            fmt="*" if is_special else "o",
            markersize=14 if is_special else 8,
            color=SPECIALIST_COLOR if is_special else BASELINE_COLOR,
            capsize=4,
            zorder=3 if is_special else 2,
        )
        right = _fraction(x(s), xs, log) > 0.6  # label on the left, inside the axes
        ax.annotate(
            textwrap.shorten(s["name"], 40),
            (x(s), m["value"]),
            xytext=(-8 if right else 8, 6),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=9,
            fontweight="bold" if is_special else "normal",
            color=SPECIALIST_COLOR if is_special else "black",
        )
    if log:
        _log_axis(ax)
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{fmt.metric_label(metric)} ({results['confidence']:.0%} CI)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save_png(fig, path)


def _fraction(value: float, values: list[float], log: bool) -> float:
    """Where `value` lies between the smallest and largest of `values` (0 to 1)."""
    f = math.log if log else float
    low, high = f(min(values)), f(max(values))
    return (f(value) - low) / (high - low) if high > low else 0.0


def _log_axis(ax: Any) -> None:
    """Log scale labelled 20, 50, 100, 200 ... in plain numbers rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def confusion(results: dict[str, Any], path: Path) -> Path:
    """One confusion matrix per system: gold labels in rows, predicted in columns, counts shown."""
    plt = pyplot()
    labels, systems = results["labels"], [s for s in results["systems"] if s.get("confusion")]
    ncols = min(len(systems), 4 if len(labels) <= 3 else 2)
    nrows = math.ceil(len(systems) / ncols)
    cell = max(2.8, 0.5 * len(labels) + 1.6)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
    special = specialist(results)
    for ax, s in zip(axes.flat, systems, strict=False):
        matrix = s["confusion"]
        top = max(max(row) for row in matrix) or 1
        ax.imshow(matrix, cmap="Reds" if s is special else "Blues", vmin=0, vmax=top)
        for r, row in enumerate(matrix):
            for c, n in enumerate(row):
                color = "white" if n > top / 2 else "black"
                ax.text(c, r, str(n), ha="center", va="center", color=color, fontsize=9)
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, rotation=45 if len(labels) > 3 else 0, ha="right")
        ax.set_yticks(ticks, labels)
        ax.set_xlabel("predicted label")
        ax.set_ylabel("gold label")
        ax.set_title(
            textwrap.shorten(s["name"], 30),
            fontsize=10,
            fontweight="bold" if s is special else "normal",
        )
    for ax in list(axes.flat)[len(systems) :]:
        ax.axis("off")
    fig.tight_layout()
    return save_png(fig, path)


def loss_curve(run_dir: Path, history: list[dict[str, Any]], path: Path) -> Path | None:
    """The training run's own `loss_curve.png`, else one redrawn from its log, else None."""
    existing = run_dir / "loss_curve.png"
    if existing.is_file():
        return write_atomic(path, existing.read_bytes())
    if not any(r.get(k) is not None for r in history for k in ("train/loss", "eval/loss")):
        return None
    # Training draws this figure; importing its plotter loads torch, worth it only here.
    from finetune.train.outputs import plot_loss_curve

    return plot_loss_curve(history, path.parent, title=run_dir.parent.name)


def make_figures(
    results: dict[str, Any], run_dir: Path, history: list[dict[str, Any]], out_dir: Path
) -> list[Figure]:
    """Every figure the report shows, written under `out_dir`."""
    label = fmt.metric_label(primary_metric(results))
    figures = [
        Figure(
            "quality_vs_latency",
            tradeoff(
                results,
                latency,
                "p50 latency per item at batch size 1 (ms), median over timing rounds",
                out_dir / "quality_vs_latency.png",
                lambda s: s["latency_ms"],
            ),
            f"{label} against p50 latency (batch size 1); vertical bars are confidence intervals, "
            "horizontal bars the range over timing rounds.",
        ),
        Figure(
            "quality_vs_cost",
            tradeoff(
                results,
                cost,
                "estimated cost per 1,000 requests (USD), median over timing rounds",
                out_dir / "quality_vs_cost.png",
                lambda s: s["cost_per_1k"],
            ),
            f"{label} against estimated cost per 1,000 requests; vertical bars are confidence "
            "intervals, horizontal bars the range over timing rounds.",
        ),
    ]
    if results["task"] == "classification" and any(s.get("confusion") for s in results["systems"]):
        path = confusion(results, out_dir / "confusion.png")
        figures.append(
            Figure(
                "confusion", path, "Confusion matrices: gold label in rows, prediction in columns."
            )
        )
    curve = loss_curve(run_dir, history, out_dir / "loss_curve.png")
    if curve is not None:
        figures.append(Figure("loss_curve", curve, "Training and validation loss by step."))
    return figures
