"""The report's figures keep every text readable: no two texts (tick labels, point names, titles,
axis labels, the key) overlap and none is cut off at the figure's edge, on a cost range of five
decades with two systems at almost the same point, and on an 8-class task whose labels run to
80 characters; the HTML report with those labels does not overflow sideways in Chromium."""

from __future__ import annotations

import copy
import importlib.util
import shutil

import pytest
from conftest import REPO, screenshot
from matplotlib.text import Text
from test_report import make_results, write_run

from finetune.report import plots, write_report
from finetune.report.results import cost, latency

LONG_LABELS = [
    "Commercial construction permits and zoning variance applications for mixed use",
    "Residential renovation disputes between homeowners and licensed general contractors",
    "Occupational safety violations reported on active high-rise construction sites",
    "Environmental impact assessments required before breaking ground on wetlands",
    "Mechanics liens filed by unpaid subcontractors against the property owner title",
    "Building code inspections for fire egress, sprinklers and structural load paths",
    "Public procurement tenders for municipal infrastructure and road resurfacing work",
    "Insurance claims for water damage, mould remediation and latent building defects",
]


def close_points_wide_costs() -> dict:
    """Five systems over five decades of cost; the specialist and qwen2.5-1.5b almost coincide."""
    results = make_results()
    twin = copy.deepcopy(results["systems"][3])
    twin["name"] = "qwen2.5-1.5b zero-shot"
    twin["metrics"]["accuracy"] = {"value": 0.905, "low": 0.875, "high": 0.935}
    results["systems"].append(twin)
    for system, usd in zip(results["systems"], [0.0023, 5e-7, 0.0056, 0.0100, 0.0024], strict=True):
        system["cost_per_1k"] |= {"usd": usd, "low": usd * 0.97, "high": usd * 1.04}
    return results


def long_labels() -> dict:
    """An 8-class task whose labels run to 80 characters, four systems."""
    results = make_results()
    results["labels"] = LONG_LABELS
    n = len(LONG_LABELS)
    for k, system in enumerate(results["systems"]):
        system["confusion"] = [
            [40 - 3 * k if i == j else (i + j + k) % 5 for j in range(n)] for i in range(n)
        ]
        system["per_class"] = [
            {"label": label, "precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 50}
            for label in LONG_LABELS
        ]
    return results


def drawn_texts(fig) -> list[Text]:
    """Every text the figure draws: tick labels in view, axis labels, titles, the texts in each
    axes (point names, counts) and the figure's own (the key)."""
    fig.canvas.draw()
    texts = list(fig.texts)
    for ax in fig.axes:
        if not ax.axison:
            continue
        texts += [*plots.tick_labels(ax.xaxis), *plots.tick_labels(ax.yaxis)]
        texts += [ax.xaxis.label, ax.yaxis.label, ax.title, *ax.texts]
    return [t for t in texts if t.get_text() and t.get_visible()]


def assert_readable(fig) -> list[str]:
    """No two drawn texts overlap and every one lies inside the figure; returns their texts."""
    renderer = fig.canvas.get_renderer()
    # An annotation's own extent includes its leader line: measure the text alone.
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in drawn_texts(fig)]
    overlapping = [
        (a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :]
        if box.overlaps(other)
    ]  # fmt: skip
    assert overlapping == []
    frame = fig.bbox
    cut = [
        text for text, box in boxes
        if box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1
    ]  # fmt: skip
    assert cut == []
    return [text for text, _ in boxes]


def test_cost_plot_over_five_decades_has_readable_ticks_and_apart_names():
    results = close_points_wide_costs()
    fig = plots.tradeoff_figure(results, cost, "cost (USD)", lambda s: s["cost_per_1k"], prefix="$")
    texts = assert_readable(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in plots.tick_labels(ax.xaxis)] == [
        f"$\\mathdefault{{10^{{{e}}}}}$" for e in range(-7, -1)
    ]
    names = [s["name"] for s in results["systems"]]
    assert sorted(t.get_text() for t in ax.texts) == sorted(names)
    assert set(names) <= set(texts)
    plots.pyplot().close(fig)


@pytest.mark.parametrize(
    "costs, ticks",
    [
        (
            [0.0023, 0.0019, 0.0056, 0.0100, 0.0024],
            ["$0.002", "$0.004", "$0.006", "$0.008", "$0.01"],
        ),
        (
            [0.0023, 0.0011, 0.0056, 0.0200, 0.0024],
            ["$0.001", "$0.002", "$0.005", "$0.01", "$0.02"],
        ),
    ],
    ids=["linear", "log"],
)
def test_costs_of_a_tenth_of_a_cent_and_up_are_written_in_dollars(costs, ticks):
    results = close_points_wide_costs()
    for system, usd in zip(results["systems"], costs, strict=True):
        system["cost_per_1k"] |= {"usd": usd, "low": usd, "high": usd}
    fig = plots.tradeoff_figure(results, cost, "cost", prefix="$")
    assert_readable(fig)
    assert [t.get_text() for t in plots.tick_labels(fig.axes[0].xaxis)] == ticks
    plots.pyplot().close(fig)


def test_latencies_over_three_decades_are_plain_numbers():
    results = close_points_wide_costs()
    for system, ms in zip(results["systems"], [95.0, 8.0, 210.0, 4800.0, 96.0], strict=True):
        system["latency_ms"] |= {"p50": ms, "low": ms, "high": ms}
    fig = plots.tradeoff_figure(results, latency, "latency (ms)", lambda s: s["latency_ms"])
    assert_readable(fig)
    assert [t.get_text() for t in plots.tick_labels(fig.axes[0].xaxis)] == [
        "10", "100", "1,000", "10,000"
    ]  # fmt: skip
    plots.pyplot().close(fig)


def test_long_labels_are_lettered_with_a_key_and_the_matrices_stay_apart():
    fig = plots.confusion_figure(long_labels())
    texts = assert_readable(fig)
    letters = list("ABCDEFGH")
    for ax in fig.axes:
        assert [t.get_text() for t in plots.tick_labels(ax.yaxis)] == letters
        assert [t.get_text() for t in plots.tick_labels(ax.xaxis)] == letters
    (key,) = fig.texts
    assert key.get_text().splitlines() == [
        f"{a} = {label}" for a, label in zip(letters, LONG_LABELS, strict=True)
    ]
    assert key.get_text() in texts
    boxes = [ax.get_window_extent() for ax in fig.axes]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plots.pyplot().close(fig)


@pytest.mark.parametrize(
    "labels", [["fresh", "rotten"], ["business", "entertainment", "politics", "sports", "tech"]]
)
def test_short_labels_stay_on_the_matrices(labels):
    results = long_labels()
    results["labels"] = labels
    for system in results["systems"]:
        system["confusion"] = [row[: len(labels)] for row in system["confusion"][: len(labels)]]
    fig = plots.confusion_figure(results)
    assert_readable(fig)
    assert not fig.texts
    assert [t.get_text() for t in plots.tick_labels(fig.axes[0].yaxis)] == labels
    plots.pyplot().close(fig)


def _screenshot_script():
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", REPO / "scripts" / "screenshot_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)"
)
def test_the_long_label_report_fits_the_window_in_chromium(tmp_path):
    run = write_run(tmp_path / "run", long_labels())
    paths = write_report(run)
    script = _screenshot_script()
    browser, url = script.find_browser(), paths.html.resolve().as_uri()
    for width in (script.WIDTH, 800):
        scroll_width, height = script.page_size(browser, url, 60, width=width)
        assert scroll_width <= width and height > 1000, width
    assert screenshot(run, run / "shot.png")[0] == script.WIDTH
