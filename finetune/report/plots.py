"""The report's figures as PNG files: quality against latency and against cost, confusion
matrices, and the training loss curve. Matplotlib runs headless (Agg); the specialist is
drawn in a highlight colour and every point carries its system's name.

No text may lie on other text: a point's name goes to the nearest free place around it (with
a leader line when far), tick labels are thinned until they stand apart, and labels too long
for a matrix's ticks are shown by letter with a key below. `*_figure` functions return the
figure before it is written, for the tests that measure its texts."""

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
CASCADE_COLOR = "#2ca02c"
_COLORS = {"specialist": SPECIALIST_COLOR, "cascade": CASCADE_COLOR}


def color_of(system: dict[str, Any]) -> str:
    """A system's colour in every figure: the specialist's, a cascade's, or a baseline's."""
    return _COLORS.get(system["role"], BASELINE_COLOR)


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
    *,
    prefix: str = "",
) -> Path:
    """The `tradeoff_figure` written as a PNG."""
    return save_png(tradeoff_figure(results, x, xlabel, spread, prefix=prefix), path)


def tradeoff_figure(
    results: dict[str, Any],
    x: Callable[[dict[str, Any]], float],
    xlabel: str,
    spread: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    *,
    prefix: str = "",
) -> Any:
    """Primary metric (with CI error bars) against a cost-like quantity, one point per system;
    `spread(system)` gives the quantity's range over timing rounds (`low`, `high`) as x bars.
    A range over more than a decade is drawn on a log axis; `prefix` goes before plain tick
    numbers ("$"). Every point is named, no name on another or on a tick label."""
    plt = pyplot()
    metric, special = primary_metric(results), specialist(results)
    xs = [x(s) for s in results["systems"]]
    log = min(xs) > 0 and max(xs) / min(xs) > 10
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=DPI)
    points = []
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
            fmt="*" if is_special else "D" if s["role"] == "cascade" else "o",
            markersize=14 if is_special else 8,
            color=color_of(s),
            capsize=4,
            zorder=3 if is_special else 2,
        )
        points.append(_Point(x(s), m["value"], textwrap.shorten(s["name"], 40), is_special))
    _x_axis(ax, xs, log, prefix)
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{fmt.metric_label(metric)} ({results['confidence']:.0%} CI)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _fit_ticks(fig, ax.xaxis, log)
    fig.tight_layout()
    fig.canvas.draw()
    ax.set_xlim(ax.get_xlim())  # names are placed in display space: the view must stay put
    ax.set_ylim(ax.get_ylim())
    _name_points(fig, ax, sorted(points, key=lambda p: not p.special))
    return fig


@dataclass(frozen=True)
class _Point:
    x: float
    y: float
    name: str
    special: bool


def _x_axis(ax: Any, values: list[float], log: bool, prefix: str) -> None:
    """Ticks whose labels are readable numbers: on a log scale, 1-2-5 steps over up to two
    decades and decades beyond; numbers written out ("$0.002", "1,000") where they stay short,
    else matplotlib's powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if log:
        ax.set_xscale("log")
        decades = math.log10(max(values) / min(values))
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if min(values) >= 1e-3 and max(values) < 1e6:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: prefix + _plain(v)))


def _plain(value: float) -> str:
    """A tick value written out with the decimals it needs: 0.0005, 0.25, 20, 1,000."""
    for decimals in range(13):
        if abs(round(value, decimals) - value) <= abs(value) * 1e-6:
            return f"{value:,.{decimals}f}"
    return f"{value:g}"


def _fit_ticks(fig: Any, axis: Any, log: bool) -> None:
    """Fewer ticks until no two tick labels of `axis` touch."""
    from matplotlib.ticker import LogLocator, MaxNLocator

    for n in range(9, 1, -1):
        fig.canvas.draw()
        if _apart(fig, tick_labels(axis)):
            return
        axis.set_major_locator(LogLocator(subs=(1.0,), numticks=n) if log else MaxNLocator(n))


def _apart(fig: Any, texts: list[Any]) -> bool:
    """Whether no two of the drawn `texts` come within 2 pixels of each other."""
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer).padded(2) for t in texts]
    return not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def tick_labels(axis: Any) -> list[Any]:
    """The tick labels `axis` draws: those with text, at ticks inside the view."""
    low, high = sorted(axis.get_view_interval())
    slack = (high - low) * 1e-9
    return [
        label
        for loc, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels(), strict=False)
        if low - slack <= loc <= high + slack and label.get_text() and label.get_visible()
    ]


# Where a point's name may go, in points from the point, nearest first: to the right, to the
# left, below, above, diagonally, then the same farther out (there with a leader line).
_DIRECTIONS = (
    (1, 0.5), (-1, 0.5), (1, -1.2), (-1, -1.2), (0, 1.2), (0, -1.6),
    (0.7, 1.2), (-0.7, 1.2), (0.7, -1.6), (-0.7, -1.6),
)  # fmt: skip
_OFFSETS = [(r * dx, r * dy) for r in (8, 20, 34, 52, 74) for dx, dy in _DIRECTIONS]


def _name_points(fig: Any, ax: Any, points: list[_Point]) -> None:
    """Each point's name where it lies inside the axes clear of every marker, error bar, tick
    label and name already placed (its leader line too): the nearest such place, else the one
    touching least."""
    renderer = fig.canvas.get_renderer()
    area = ax.get_window_extent(renderer)
    taken = [*_marker_boxes(fig, ax), *(t.get_window_extent(renderer) for t in _ticks(ax))]
    for point in points:
        start = ax.transData.transform((point.x, point.y))
        best = None
        for i, offset in enumerate(_OFFSETS):
            text = _annotate(ax, point, offset, leader=False)
            box = text.get_window_extent(renderer).padded(2)
            text.remove()
            touching = sum(box.overlaps(t) for t in taken) + (not _inside(box, area))
            if i >= len(_DIRECTIONS):
                touching += _crossings(start, box, taken)
            if best is None or (touching, i) < best[:2]:
                best = (touching, i, offset, box)
            if touching == 0:
                break
        _, i, offset, box = best
        _annotate(ax, point, offset, leader=i >= len(_DIRECTIONS))
        taken.append(box)


def _crossings(start: Any, box: Any, taken: list[Any]) -> int:
    """How many of the `taken` boxes a leader line from `start` to `box` passes through, those
    around the point itself aside."""
    (x0, y0), (x1, y1) = start, ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
    others = [t for t in taken if not t.contains(x0, y0)]
    steps = [k / 16 for k in range(1, 16)]
    return sum(
        any(t.contains(x0 + (x1 - x0) * k, y0 + (y1 - y0) * k) for k in steps) for t in others
    )


def _annotate(ax: Any, point: _Point, offset: tuple[float, float], leader: bool) -> Any:
    dx, dy = offset
    arrow = {"arrowstyle": "-", "color": "0.45", "lw": 0.7, "shrinkA": 1, "shrinkB": 5}
    return ax.annotate(
        point.name,
        (point.x, point.y),
        xytext=offset,
        textcoords="offset points",
        ha="left" if dx > 0 else "right" if dx < 0 else "center",
        va="bottom" if dy > 0 else "top",
        fontsize=9,
        fontweight="bold" if point.special else "normal",
        color=SPECIALIST_COLOR if point.special else "black",
        arrowprops=arrow if leader else None,
        zorder=4,
    )


def _marker_boxes(fig: Any, ax: Any) -> list[Any]:
    """Display-space boxes around each marker and along each error bar."""
    renderer = fig.canvas.get_renderer()
    boxes = []
    for line in ax.lines:  # the markers, and the error bars' caps
        if line.get_marker() not in (None, "None", ""):
            boxes.append(line.get_window_extent(renderer))
    for bars in ax.collections:  # the error bars themselves
        boxes += [path.get_extents(bars.get_transform()) for path in bars.get_paths()]
    return [b.padded(1) for b in boxes]


def _ticks(ax: Any) -> list[Any]:
    return [*tick_labels(ax.xaxis), *tick_labels(ax.yaxis)]


def _inside(box: Any, area: Any) -> bool:
    return area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1


# Labels longer than this are shown by letter (A, B, ...) with a key below the matrices.
LONGEST_TICK_LABEL = 14


def confusion(results: dict[str, Any], path: Path) -> Path:
    """The `confusion_figure` written as a PNG."""
    return save_png(confusion_figure(results), path)


def confusion_figure(results: dict[str, Any]) -> Any:
    """One confusion matrix per system: gold labels in rows, predicted in columns, counts shown.
    Long labels are shown by letter, with a key below the matrices."""
    plt = pyplot()
    labels, systems = results["labels"], [s for s in results["systems"] if s.get("confusion")]
    ticks = label_aliases(labels)
    ncols = min(len(systems), 4 if len(labels) <= 3 else 2)
    nrows = math.ceil(len(systems) / ncols)
    cell = max(2.8, 0.5 * len(labels) + 1.6)
    key = _key_lines(labels, ticks, width=cell * ncols) if ticks != labels else []
    key_height = 0.17 * len(key) + 0.3 if key else 0.0
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell * ncols, cell * nrows + key_height), squeeze=False, dpi=DPI
    )
    special = specialist(results)
    for ax, s in zip(axes.flat, systems, strict=False):
        _matrix(ax, s["confusion"], ticks, s is special, textwrap.shorten(s["name"], 30))
    for ax in list(axes.flat)[len(systems) :]:
        ax.axis("off")
    bottom = key_height / fig.get_figheight()
    _square_layout(fig, bottom)
    if not all(_apart(fig, tick_labels(ax.xaxis)) for ax in axes.flat):
        # Predicted labels are written across while they fit side by side, else upright.
        for ax in axes.flat:
            ax.tick_params(axis="x", labelrotation=90)
        fig.canvas.draw()
    if key:
        fig.text(0.02, bottom - 0.08 / fig.get_figheight(), "\n".join(key), va="top", fontsize=9)
    return fig


def _square_layout(fig: Any, bottom: float) -> None:
    """Matrices laid out above `bottom` (a fraction of the height) with room for every title
    and tick label. tight_layout places square (fixed-aspect) axes as if they filled their cells,
    which put one row's axis label on the next row's title; constrained layout with `compress`
    lays out the squares themselves."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    fig.set_layout_engine(ConstrainedLayoutEngine(compress=True, rect=(0, bottom, 1, 1 - bottom)))
    fig.canvas.draw()


def label_aliases(labels: list[str]) -> list[str]:
    """The labels as tick labels: themselves, or A, B, ... Z, AA, ... when any is too long."""
    if all(len(label) <= LONGEST_TICK_LABEL for label in labels):
        return list(labels)
    letters = [chr(ord("A") + i) for i in range(26)]
    return [("" if i < 26 else letters[i // 26 - 1]) + letters[i % 26] for i in range(len(labels))]


def _key_lines(labels: list[str], aliases: list[str], width: float) -> list[str]:
    """`A = label` per label, wrapped to the figure's `width` (inches) at 9 points."""
    chars = max(30, int(width * 72 / (9 * 0.62)))
    lines = []
    for alias, label in zip(aliases, labels, strict=True):
        lines += textwrap.wrap(f"{alias} = {label}", chars, subsequent_indent=" " * 6)
    return lines


def _matrix(ax: Any, matrix: list[list[int]], ticks: list[str], special: bool, title: str) -> None:
    top = max(max(row) for row in matrix) or 1
    ax.imshow(matrix, cmap="Reds" if special else "Blues", vmin=0, vmax=top)
    for r, row in enumerate(matrix):
        for c, n in enumerate(row):
            color = "white" if n > top / 2 else "black"
            ax.text(c, r, str(n), ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_yticks(range(len(ticks)), ticks)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("gold label")
    ax.set_title(title, fontsize=10, fontweight="bold" if special else "normal")


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
                prefix="$",
            ),
            f"{label} against estimated cost per 1,000 requests; vertical bars are confidence "
            "intervals, horizontal bars the range over timing rounds.",
        ),
    ]
    if results["task"] == "classification" and any(s.get("confusion") for s in results["systems"]):
        path = confusion(results, out_dir / "confusion.png")
        lettered = label_aliases(results["labels"]) != results["labels"]
        key = " Labels are shown by letter; the key is below the matrices." if lettered else ""
        caption = f"Confusion matrices: gold label in rows, prediction in columns.{key}"
        figures.append(Figure("confusion", path, caption))
    curve = loss_curve(run_dir, history, out_dir / "loss_curve.png")
    if curve is not None:
        figures.append(Figure("loss_curve", curve, "Training and validation loss by step."))
    return figures
