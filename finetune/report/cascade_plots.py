"""The cascades' figures: quality against the share of items escalated and against cost, with
the two systems as end points and the chosen threshold marked; and reliability diagrams of
every system that gives label scores."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from finetune.report import format as fmt
from finetune.report.plots import (
    BASELINE_COLOR,
    CASCADE_COLOR,
    DPI,
    Figure,
    color_of,
    pyplot,
    save_png,
)
from finetune.report.results import cascades, primary_metric


def cascade_curve(results: dict[str, Any], cascade: dict[str, Any], path: Path) -> Path:
    return save_png(cascade_curve_figure(results, cascade), path)


def cascade_curve_figure(results: dict[str, Any], cascade: dict[str, Any]) -> Any:
    """Two panels: the primary metric on the test items at every threshold, against the share
    escalated and against cost per 1k requests."""
    plt = pyplot()
    metric = primary_metric(results)
    info, by_name = cascade["cascade"], {s["name"]: s for s in results["systems"]}
    ends = (by_name[info["first"]], by_name[info["fallback"]])
    points = info["test"]["curve"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=DPI, sharey=True)
    panels = [
        (axes[0], "escalated", "share of test items escalated to the fallback", (0.0, 1.0)),
        (axes[1], "cost", "cost per 1,000 requests (USD), median over timing rounds", None),
    ]
    for ax, key, label, end_x in panels:
        xs = [p[key] for p in points]
        if None in xs:
            ax.text(0.5, 0.5, "cost not measured", ha="center", transform=ax.transAxes)
            continue
        ax.plot(xs, [p["value"] for p in points], color=CASCADE_COLOR, drawstyle="steps-post")
        for system, x in zip(ends, end_x or [_cost(s) for s in ends], strict=True):
            _point(ax, x, system["metrics"][metric], system["name"], color_of(system), "o")
        chosen = info["test"]["escalated"] if key == "escalated" else _cost(cascade)
        _point(ax, chosen, cascade["metrics"][metric], "chosen threshold", CASCADE_COLOR, "*")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{fmt.metric_label(metric)} on test ({results['confidence']:.0%} CI)")
    fig.suptitle(textwrap.shorten(f"Cascade {cascade['name']}", 90))
    fig.tight_layout()
    return fig


def _cost(system: dict[str, Any]) -> float | None:
    return system["cost_per_1k"]["usd"]


def _point(ax: Any, x: float, m: dict[str, float], name: str, color: str, marker: str) -> None:
    ax.errorbar(
        x,
        m["value"],
        yerr=[[m["value"] - m["low"]], [m["high"] - m["value"]]],
        fmt=marker,
        color=color,
        markersize=14 if marker == "*" else 8,
        capsize=4,
        zorder=3,
    )
    ax.annotate(
        textwrap.shorten(name, 30),
        (x, m["value"]),
        textcoords="offset points",
        xytext=(6, -14 if marker == "*" else 8),
        fontsize=8,
    )


def reliability_diagram(results: dict[str, Any], path: Path) -> Path:
    return save_png(reliability_figure(results), path)


def reliability_figure(results: dict[str, Any]) -> Any:
    """One panel per system with label scores: each confidence bin's accuracy against its mean
    confidence, the diagonal where they agree, and the expected calibration error."""
    plt = pyplot()
    systems = results["calibration"]["systems"]
    ncols = min(len(systems), 3)
    nrows = math.ceil(len(systems) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.5 * nrows), dpi=DPI, squeeze=False
    )
    for ax, entry in zip(axes.flat, systems, strict=False):
        bins = entry["bins"]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.bar(
            [b["low"] for b in bins],
            [b["accuracy"] for b in bins],
            width=[b["high"] - b["low"] for b in bins],
            align="edge",
            alpha=0.6,
            edgecolor="black",
            color=CASCADE_COLOR if entry["temperature"] != 1.0 else BASELINE_COLOR,
        )
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "k.")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{textwrap.shorten(entry['name'], 34)}\nECE {entry['ece']:.3f}", fontsize=9)
        ax.set_xlabel("confidence (top label)", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in list(axes.flat)[len(systems) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def cascade_figures(results: dict[str, Any], out_dir: Path) -> list[Figure]:
    """Each cascade's curve, and the reliability diagrams of the systems with label scores."""
    label = fmt.metric_label(primary_metric(results))
    figures = [
        Figure(
            f"cascade_curve_{i}",
            cascade_curve(results, s, out_dir / f"cascade_{i}.png"),
            f"{s['name']}: {label} on the test items at every threshold, against the share of "
            "items escalated and against cost per 1,000 requests; the end points are the two "
            "systems alone, the star the threshold chosen on validation.",
        )
        for i, s in enumerate(cascades(results))
    ]
    if (results.get("calibration") or {}).get("systems"):
        path = reliability_diagram(results, out_dir / "reliability.png")
        figures.append(
            Figure(
                "reliability",
                path,
                "Reliability diagrams: accuracy of the items in each confidence bin against the "
                "bin's mean confidence; on the dashed diagonal a probability means what it says.",
            )
        )
    return figures
