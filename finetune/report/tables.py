"""The report's tables as plain rows of text, shared by Markdown, HTML and W&B, plus the
terminal's headline table (rich)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich import box
from rich.table import Table as RichTable
from rich.text import Text

from finetune.report import format as fmt
from finetune.report.results import cascades as cascade_systems
from finetune.report.results import (
    cost,
    fallback_cost_share,
    is_remote,
    latency,
    primary_metric,
    specialist,
)


@dataclass(frozen=True)
class Table:
    """A titled table of text cells; `highlight` marks rows to emphasise (the specialist)."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    highlight: tuple[int, ...] = ()


def disk_cell(system: dict[str, Any]) -> str:
    """`19.6 MB adapter + 540 MB base` for an adapter; the model's size otherwise."""
    if is_remote(system):
        return "remote"
    adapter, model = system["disk_bytes"].get("adapter"), system["disk_bytes"].get("model") or 0
    if adapter:
        return f"{fmt.size(adapter)} adapter + {fmt.size(model)} base"
    return fmt.size(model)


def _parameters_cell(system: dict[str, Any]) -> str:
    total, trainable = system["parameters"]["total"], system["parameters"]["trainable"]
    return "remote" if total is None else f"{fmt.count(total)} ({fmt.count(trainable)})"


def peak_cell(system: dict[str, Any]) -> str:
    return "remote" if is_remote(system) else f"{system['peak_memory_bytes'] / 2**30:.2f}"


def _specialist_rows(results: dict[str, Any]) -> tuple[int, ...]:
    return tuple(i for i, s in enumerate(results["systems"]) if s is specialist(results))


def headline(results: dict[str, Any]) -> Table:
    metric = primary_metric(results)
    level = f"{results['confidence']:.0%}"
    columns = [
        "system",
        f"{fmt.metric_label(metric)} [{level} CI]",
        "p50 latency (ms)",
        "throughput (items/s)",
        "peak memory (GiB)",
        "size on disk",
        "cost / 1k requests (USD)",
    ]
    rows = [
        [
            s["name"],
            fmt.with_ci(s["metrics"][metric]),
            f"{latency(s):,.1f}",
            f"{s['throughput_items_per_s']:,.1f}",
            peak_cell(s),
            disk_cell(s),
            fmt.usd(cost(s)),
        ]
        for s in results["systems"]
    ]
    rows += _floor_rows(results, [metric], blanks=len(columns) - 2)
    return Table("headline", "Headline", columns, rows, _specialist_rows(results))


def metrics(results: dict[str, Any]) -> Table:
    """Every metric with its confidence interval, for every system."""
    columns = ["system", *(fmt.metric_label(m) for m in results["metrics"])]
    rows = [
        [s["name"], *(fmt.with_ci(s["metrics"][m]) for m in results["metrics"])]
        for s in results["systems"]
    ]
    rows += _floor_rows(results, results["metrics"])
    return Table("metrics", "All metrics", columns, rows, _specialist_rows(results))


def floor_name(floor: dict[str, Any]) -> str:
    return f"floor: always '{floor['label']}'"


def _floor_rows(results: dict[str, Any], metrics: list[str], blanks: int = 0) -> list[list[str]]:
    """The majority-class floor as a last row, its cells beyond the metrics left blank."""
    floor = results.get("floor")
    if not floor:
        return []
    return [
        [floor_name(floor), *(fmt.with_ci(floor["metrics"][m]) for m in metrics)] + ["—"] * blanks
    ]


def systems(results: dict[str, Any]) -> Table:
    """What each system is and what one item costs it: model, prompt, parameters, tokens."""
    columns = [
        "system",
        "model",
        "shots",
        "prompt",
        "parameters (trainable)",
        "tokens in / out per item",
        "truncated items",
        "cost basis",
    ]
    rows = [
        [
            s["name"],
            s["model"],
            str(s["shots"]),
            s["prompt_style"],
            _parameters_cell(s),
            f"{s['tokens']['input_per_item']:.1f} / {s['tokens']['output_per_item']:.1f}",
            str(s["truncated_items"]),
            s["cost_per_1k"]["basis"],
        ]
        for s in results["systems"]
    ]
    return Table("systems", "Systems", columns, rows, _specialist_rows(results))


def comparisons(results: dict[str, Any]) -> Table:
    """The specialist against each baseline on the primary metric, paired over the same items."""
    columns = [
        "baseline",
        "metric",
        "specialist",
        "baseline value",
        "difference [CI]",
        "specialist only correct",
        "baseline only correct",
        "McNemar p",
        "significant",
    ]
    rows = []
    for c in results["comparisons"]:
        mc = c.get("mcnemar")
        rows.append(
            [
                c["baseline"],
                fmt.metric_label(c["metric"]),
                fmt.score(c["specialist"]),
                fmt.score(c["baseline_value"]),
                fmt.difference(c),
                str(mc["specialist_only"]) if mc else "-",
                str(mc["baseline_only"]) if mc else "-",
                fmt.p_value(mc["p_value"]) if mc else "-",
                "yes" if c["significant"] else "no",
            ]
        )
    return Table("comparisons", "Paired comparisons", columns, rows)


def cascades(results: dict[str, Any]) -> Table:
    """Each cascade: its rule, how many items it escalates, its quality against the two systems
    it is made of (paired on the same test items) and its cost against the fallback's."""
    metric = primary_metric(results)
    columns = [
        "cascade",
        "escalates when",
        "escalated (validation / test)",
        f"{fmt.metric_label(metric)} [CI]",
        "vs first (McNemar p)",
        "vs fallback (McNemar p)",
        "cost / 1k (share of fallback's)",
    ]
    rows = []
    for s in cascade_systems(results):
        c = s["cascade"]
        versus = {v["system"]: v for v in c["versus"]}
        share = fallback_cost_share(results, s)
        share = f" ({share:.0%})" if share is not None else ""
        rows.append(
            [
                s["name"],
                rule_text(c),
                f"{c['validation']['escalated']:.1%} / {c['test']['escalated']:.1%}",
                fmt.with_ci(s["metrics"][metric]),
                _versus_cell(versus[c["first"]]),
                _versus_cell(versus[c["fallback"]]),
                fmt.usd(cost(s)) + share,
            ]
        )
    return Table("cascades", "Cascades", columns, rows)


def teacher(results: dict[str, Any]) -> Table:
    """The student against the teacher that labelled its training rows: what the labelling
    did and cost, and whether the student keeps the teacher's quality."""
    t, label = results["teacher"], fmt.metric_label(results["teacher"]["metric"])
    rows = [["teacher", t["teacher"]]]
    if (card := t.get("labelling")) is not None:
        rows += labelling_rows(card)
    margin = f"{-t['margin']:+.3f}"
    rows += [
        [
            f"{label}: student vs teacher",
            f"{fmt.score(t['student_value'])} vs "
            f"{fmt.score(t['teacher_value'])} ({t['difference']:+.3f})",
        ],
        [
            f"one-sided {results['confidence']:.0%} lower bound of the difference",
            f"{t['lower']:+.3f}, {'above' if t['non_inferior'] else 'not above'} {margin}: "
            f"the student {'keeps' if t['non_inferior'] else 'does not keep'} the teacher's quality",
        ],
        ["same answer as the teacher", f"{t['agreement']:.1%} of test items"],
    ]
    return Table("teacher", "Student and teacher", ["", ""], rows)


def labelling_rows(card: dict[str, Any]) -> list[list[str]]:
    """What a teacher's labelling did (its card): rows, drops, time and cost, its quality."""
    which = (
        "the training split, its labels hidden" if card["rows"] == "train" else "unlabelled rows"
    )
    dropped = ", ".join(f"{k} {v}" for k, v in card["dropped"].items()) or "none"
    cost = card["cost"]
    rows = [
        [
            "rows labelled",
            f"{which}: {fmt.count(card['asked'])} asked, "
            f"{fmt.count(card['kept'])} kept (dropped: {dropped})",
        ],
        [
            "labelling time and cost",
            f"{_duration(cost['seconds'])}, {fmt.usd(cost['usd'])} ({cost['basis']})",
        ],
    ]
    if (q := card.get("quality")) is not None:
        rows.append(
            [
                f"teacher's {fmt.metric_label(q['metric'])} on the human labels",
                f"{fmt.score(q['value'])} on {fmt.count(q['rows'])} rows",
            ]
        )
    return rows


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def rule_text(c: dict[str, Any]) -> str:
    """`probability < 0.873 (T = 1.42; non-inferior to X on validation)`."""
    if c["pick"] == "non_inferior":
        margin = f", margin {c['margin']:g}" if c["margin"] else ""
        how = f"cheapest non-inferior to {c['fallback']} on validation{margin}"
    elif c["pick"] == "max_escalated":
        how = f"at most {c['max_escalated']:.0%} of validation escalated"
    else:
        how = "fixed"
    temperature = f"T = {c['temperature']:.2f}; " if c["calibrated"] else ""
    return f"{c['first']}'s {c['confidence']} < {c['threshold']:.3f} ({temperature}{how})"


def _versus_cell(v: dict[str, Any]) -> str:
    mc = v["mcnemar"]
    p = f" (p = {fmt.p_value(mc['p_value'])})" if mc else ""
    return f"{v['difference']:+.3f}{p}"


def calibration(results: dict[str, Any]) -> Table:
    """How well each system's top-label probability matches its accuracy on the test items."""
    info = results["calibration"]
    columns = ["system", "temperature", "expected calibration error", "NLL", "items"]
    rows = [
        [
            e["name"],
            f"{e['temperature']:.2f}",
            f"{e['ece']:.3f}",
            f"{e['nll']:.3f}",
            str(info["items"]),
        ]
        for e in info["systems"]
    ]
    return Table("calibration", "Calibration on the test items", columns, rows)


def timing(results: dict[str, Any]) -> Table:
    """Per system: each timed figure's median over rounds with its range, and disturbed rounds."""
    disturbed: dict[str, list[str]] = {}
    for entry in results["timing"]["disturbed"]:
        disturbed.setdefault(entry["system"], []).append(str(entry["round"]))
    columns = [
        "system",
        "p50 latency (ms)",
        "p95 latency (ms)",
        "throughput (items/s)",
        "cost / 1k requests (USD)",
        "stayed loaded",
        "disturbed rounds",
    ]
    rows = [
        [
            s["name"],
            _median_range(s["latency_ms"]["p50"], s["latency_ms"], "{:,.1f}"),
            _number(s["latency_ms"]["p95"], "{:,.1f}"),
            _median_range(s["throughput_items_per_s"], s["throughput"], "{:,.1f}"),
            _median_range(s["cost_per_1k"]["usd"], s["cost_per_1k"], None),
            "yes" if s.get("resident") else "no",
            ", ".join(disturbed.get(s["name"], [])) or "-",
        ]
        for s in results["systems"]
    ]
    return Table("timing", "Timing", columns, rows, _specialist_rows(results))


def timing_ratios(results: dict[str, Any]) -> Table:
    """The specialist's latency, throughput and cost as ratios to each baseline's, per round."""
    level = f"{results['confidence']:.0%}"
    columns = ["baseline"] + [
        f"{k} ratio [{level} interval]" for k in ("latency", "throughput", "cost")
    ]
    rows = [
        [c["baseline"], *(_ratio_cell(c["timing"][k]) for k in ("latency", "throughput", "cost"))]
        for c in results["comparisons"]
    ]
    return Table("timing_ratios", "Speed and cost ratios", columns, rows)


def _ratio_cell(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "-"
    interval = (
        f"[{fmt.factor(r['low'])}, {fmt.factor(r['high'])}]"
        if r["low"] is not None
        else "[too few rounds]"
    )
    verdict = "" if r["clear"] or r["low"] is None else " no clear difference"
    apart = "" if r.get("paired", True) else " (timed apart)"
    if "paired_rounds" in r:  # same rounds, too few quiet for both: each one's own quiet rounds
        apart = " (unpaired)"
    return f"{fmt.factor(r['ratio'])}x {interval}{verdict}{apart}"


def _median_range(value: float | None, spread: dict[str, Any], form: str | None) -> str:
    """`104.2 (98.0-110.3)`: a median over rounds and its range."""
    show = fmt.usd if form is None else form.format
    if value is None:
        return "-"
    if spread.get("low") is None:
        return show(value)
    return f"{show(value)} ({show(spread['low'])}-{show(spread['high'])})"


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def per_class(results: dict[str, Any]) -> list[Table]:
    """Precision, recall and F1 by label, one table per system (classification only)."""
    tables = []
    for i, s in enumerate(results["systems"]):
        if not s.get("per_class"):
            continue
        rows = [
            [
                c["label"],
                fmt.score(c["precision"]),
                fmt.score(c["recall"]),
                fmt.score(c["f1"]),
                str(c["support"]),
            ]
            for c in s["per_class"]
        ]
        columns = ["label", "precision", "recall", "F1", "support"]
        tables.append(Table(f"per_class/{i}", s["name"], columns, rows))
    return tables


def training(summary: dict[str, Any]) -> Table:
    """How the specialist was trained, from `train_summary.json`."""

    def pair(first: float | None, final: float | None) -> str:
        return "-" if first is None or final is None else f"{first:.4f} → {final:.4f}"

    tokens_per_s = summary.get("tokens_per_second")
    rows = [
        ["method", str(summary.get("method", "-"))],
        [
            "trainable parameters",
            f"{fmt.count(summary['trainable_parameters'])} of "
            f"{fmt.count(summary['total_parameters'])}",
        ],
        ["steps", str(summary["steps"])],
        ["training time", f"{summary['train_seconds']:,.0f} s"],
        ["throughput", f"{tokens_per_s:,.0f} tokens/s" if tokens_per_s else "-"],
        [
            "train loss (first → final)",
            pair(summary["first_train_loss"], summary["final_train_loss"]),
        ],
        [
            "validation loss (first → final)",
            pair(summary["first_eval_loss"], summary["final_eval_loss"]),
        ],
    ]
    return Table("training", "Training", ["", "value"], rows)


def headline_table(results: dict[str, Any]) -> RichTable:
    """One row per system for the terminal: quality with its CI, latency, throughput, memory,
    size and cost; readable at 100 columns (value and interval, adapter and base on two lines)."""
    metric = primary_metric(results)
    level = f"{results['confidence']:.0%}"
    table = RichTable(
        title=Text(
            f"{results['recipe']}: specialist vs baselines on {results['test_items']} test items"
        ),
        caption=(
            f"{level} CI: percentile bootstrap; latency at batch size 1; "
            f"throughput at batch size {results['batch_size']}"
        ),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("system", overflow="fold")
    table.add_column(f"{fmt.metric_label(metric)}\n[{level} CI]", no_wrap=True)
    for name in ("p50\nms", "items\n/s", "peak\nGiB"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("size on disk")
    table.add_column("USD /\n1k req", justify="right", no_wrap=True)
    special = specialist(results)
    for s in results["systems"]:
        m = s["metrics"][metric]
        disk = disk_cell(s).replace(" + ", "\n+ ")
        table.add_row(
            Text(s["name"]),  # Text: a name is never read as rich markup
            Text(f"{fmt.score(m['value'])}\n{fmt.interval(m['low'], m['high'])}"),
            f"{latency(s):,.0f}" if latency(s) >= 10 else f"{latency(s):.1f}",
            f"{s['throughput_items_per_s']:,.1f}",
            peak_cell(s),
            Text(disk),
            fmt.usd(cost(s)),
            style="bold" if s is special else None,
            end_section=True,
        )
    floor = results.get("floor")
    if floor:
        m = floor["metrics"][metric]
        cells = f"{fmt.score(m['value'])}\n{fmt.interval(m['low'], m['high'])}"
        table.add_row(Text(floor_name(floor)), Text(cells), *["—"] * 5, style="dim")
    return table
