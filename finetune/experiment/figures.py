"""The experiment report's figures: the learning curve (primary metric against training
examples, one line per specialist kind, the general systems as bands) and the Pareto fronts
of quality against p50 latency, cost per 1k requests and peak memory."""

from __future__ import annotations

import statistics
from pathlib import Path

from finetune.experiment.decision import pareto
from finetune.experiment.entries import FRONTS, GENERAL, Entry, curves_by_kind
from finetune.report import format as F
from finetune.report.decision import Candidate
from finetune.report.plots import Figure, pyplot, save_png


def shown(attr: str, c: Candidate) -> str:
    value = getattr(c, attr)
    return {"p50_ms": F.ms, "usd_per_1k": F.usd}.get(attr, lambda v: f"{v:.2f} GB")(value)


def curve_figure(metric: str, found: list[Entry], out: Path) -> Figure | None:
    """The learning curve, when the cells train on more than one size."""
    curves = curves_by_kind(found)
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


def pareto_figure(metric: str, found: list[Entry], out: Path) -> Figure | None:
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
