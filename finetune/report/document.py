"""What the report says, in order, as a list of blocks that Markdown and HTML both render.

Blocks hold plain text (results' names included, unescaped); each renderer escapes for its
format. Text between backticks is shown as code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.report import format as fmt
from finetune.report import judge as J
from finetune.report import tables
from finetune.report.decision import constraints_text
from finetune.report.plots import Figure
from finetune.report.results import PREDICTIONS_FILE, cascades, constraints
from finetune.report.verdict import cautions, verdict


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Verdict:
    """The answer to the deployment question, shown highlighted: one finding per trade-off,
    then the bottom line."""

    findings: list[str]
    bottom_line: str
    cautions: tuple[str, ...] = ()  # what may have disturbed the measurements


Block = Heading | Paragraph | Bullets | Verdict | tables.Table | Figure


def setup_text(results: dict[str, Any]) -> str:
    """One paragraph: task, items, metrics, intervals, hardware, batch sizes and prices."""
    hw, prices = results["hardware"], results["prices"]
    labels = f" ({', '.join(results['labels'])})" if results["labels"] else ""
    metrics = ", ".join(fmt.metric_label(m) for m in results["metrics"])
    api = [
        f"{name} {fmt.usd(rate)} in / "
        f"{fmt.usd(prices['per_million_output_tokens'].get(name, 0))} out per million tokens"
        for name, rate in prices["per_million_input_tokens"].items()
    ]
    return (
        f"Task: {results['task']}{labels}, scored on {fmt.count(results['test_items'])} held-out "
        f"test items, the same items for every system. Metrics: {metrics} (the first is primary), "
        f"with {results['confidence']:.0%} confidence intervals from "
        f"{fmt.count(results['bootstrap_samples'])} bootstrap samples. Hardware: {hw['device']} "
        f"({hw['description']}), {hw['dtype']}; latency at batch size 1, throughput at batch "
        f"size {results['batch_size']}. Prices: machine {fmt.usd(prices['machine_per_hour'])}/h"
        + (f"; API {'; '.join(api)}" if api else "")
        + "."
    )


def constraints_paragraph(results: dict[str, Any]) -> str:
    """The limits the bottom line applied and how it breaks ties on quality."""
    recorded = "" if "constraints" in results else " (the defaults; this evaluation predates them)"
    return (
        f"Deployment constraints (`eval.constraints`){recorded}: "
        f"{constraints_text(constraints(results))}. The bottom line recommends only systems "
        "within them; between systems with no significant difference in quality, the clearly "
        "cheaper one, else the clearly faster one."
    )


def timing_text(results: dict[str, Any]) -> str:
    """How the timing rounds ran: how many, how long, in which orders, what stayed loaded."""
    t = results["timing"]
    orders = " | ".join(", ".join(order) for order in t["orders"][:3])
    more = (
        f" | ... ({len(t['orders']) - 3} more, shuffled by the seed)"
        if len(t["orders"]) > 3
        else ""
    )
    loaded = ", ".join(t["resident"]) if t["resident"] else "none"
    early = (
        f" Stopped after {t['rounds']} of {t['rounds_requested']} rounds: "
        f"eval.timing.max_minutes ({t['max_minutes']:g}) was spent."
        if t["stopped_early"]
        else ""
    )
    return (
        f"{t['rounds']} rounds in {t['seconds']:,.0f} s; each timed {fmt.count(t['latency_items'])} "
        f"items one at a time and {fmt.count(t['throughput_items'])} at batch size "
        f"{results['batch_size']} per system. Orders: {orders}{more}. Kept loaded between "
        f"rounds: {loaded} (the others load again for each round).{early}{_reused_text(t)}"
        f"{_unpaired_text(results)}"
    )


def _unpaired_text(results: dict[str, Any]) -> str:
    """Which baselines' ratios fell back to each system's own quiet rounds."""
    names = [
        c["baseline"]
        for c in results["comparisons"]
        if any("paired_rounds" in r for r in c["timing"].values())
    ]
    if not names:
        return ""
    return (
        f" Busy rounds left too few rounds quiet for both the specialist and "
        f"{', '.join(names)} for a paired interval, so some of their ratios are taken over each "
        "system's own quiet rounds, as for systems timed apart (marked 'unpaired')."
    )


def _reused_text(timing: dict[str, Any]) -> str:
    """Which systems brought rounds an earlier evaluation on this machine ran (`eval.reuse`)."""
    reused = timing.get("reused") or {}
    if not reused:
        return ""
    listed = ", ".join(f"{name} ({r['evaluated_at']})" for name, r in reused.items())
    return (
        f" Timed by an earlier evaluation on this machine, with the same settings, and not in "
        f"these rounds: {listed}. Systems timed in one evaluation are compared round by round; "
        "across two, a ratio is the Hodges-Lehmann estimate over every pair of rounds with "
        "Moses' distribution-free interval (marked 'timed apart')."
    )


def label_list_text(results: dict[str, Any]) -> str | None:
    """Which systems' prompts listed the labels after the instruction (`label_list`, from
    `task.list_labels`); None for results that do not say (other tasks, older evaluations)."""
    flags = {s["name"]: s["label_list"] for s in results["systems"] if "label_list" in s}
    if results["task"] != "classification" or not flags:
        return None
    shown = [name for name, listed in flags.items() if listed]
    if not shown:
        return (
            "Label list (`task.list_labels`): appended for no system; every prompt has the "
            "recipe's instruction as written."
        )
    others = [name for name, listed in flags.items() if not listed]
    return (
        f"Label list (`task.list_labels`): appended to the instruction for {', '.join(shown)}; "
        f"not for {', '.join(others)} (a trained system keeps the prompt it was trained on; "
        "TF-IDF and classifier heads read no prompt)."
    )


def _paragraphs(*texts: str | None) -> list[Paragraph]:
    return [Paragraph(t) for t in texts if t]


def _run_line(results: dict[str, Any], run_dir: Path) -> str:
    created = results.get("created_at")
    return f"Run: `{run_dir}`" + (f", evaluated {created}." if created else ".")


HOW_TO_READ = [
    "Confidence intervals are percentile bootstrap intervals over the test items.",
    "Differences between the specialist and a baseline use a paired bootstrap over the same "
    "items; for classification, significance is McNemar's exact test on the items exactly one "
    "of the two systems got right (otherwise the interval excluding 0).",
    "Latency is measured one item at a time (batch size 1), each prompt computed in full; "
    "throughput at the evaluation batch size, with the prompt prefix every item shares (system "
    "turn, instruction, few-shot examples) computed once, as a serving engine with prefix "
    "caching does. Both are timed in rounds: every round times every system on the same items, "
    "in a new order each round, so load from other processes falls on all systems alike. Each "
    "figure is the median over rounds, shown with its range; the specialist's ratio to each "
    "baseline is taken within each round, and a difference is called only when the sign-test "
    "interval of the median ratio excludes 1 (otherwise: no clear difference).",
    "Cost per 1,000 requests is the machine's hourly price times the time per item at that "
    "throughput, or the API's token prices where the recipe gives them.",
    "Size on disk counts the adapter plus the base model it needs.",
]
MEMORY_NOTE = {
    "alone": "Peak memory is the peak resident set of a fresh process that loaded the system alone "
    "and scored the batch of its longest inputs: its Python runtime and libraries included, nothing "
    "left behind by another system.",
    "shared": "Peak memory is the evaluating process's peak while the system was scored "
    "(eval.memory: shared): it includes what systems scored before it left behind, so it "
    "overstates every system but the first.",
    "cuda": "Peak memory is the GPU allocator's peak while the system was loaded and scored.",
}


def report_document(
    results: dict[str, Any],
    run_dir: Path,
    training: dict[str, Any] | None,
    figures: list[Figure],
) -> list[Block]:
    """The whole report, top to bottom."""
    by_key = {f.key: f for f in figures}
    sentences = verdict(results)
    blocks: list[Block] = [
        Heading(f"{results['recipe']}: specialist vs general models", level=1),
        Paragraph(_run_line(results, run_dir)),
        Heading("Setup"),
        Paragraph(setup_text(results)),
        Paragraph(constraints_paragraph(results)),
        Heading("Verdict"),
        Verdict(sentences[:-1], sentences[-1], tuple(cautions(results))),
        Heading("Headline"),
        tables.headline(results),
        Heading("All metrics"),
        tables.metrics(results),
        Heading("Systems"),
        tables.systems(results),
        *_paragraphs(label_list_text(results)),
        Heading("Timing: medians over rounds"),
        Paragraph(timing_text(results)),
        tables.timing(results),
    ]
    if results["comparisons"]:
        blocks += [
            Heading("Paired comparisons: the specialist against each baseline"),
            tables.comparisons(results),
            Heading("Speed and cost against each baseline, paired by round", level=3),
            tables.timing_ratios(results),
        ]
    blocks += _cascade_blocks(results, by_key)
    blocks += _general_model_blocks(results, by_key)
    per_class = tables.per_class(results)
    if per_class:
        blocks.append(Heading("Per-class precision, recall and F1"))
        for table in per_class:
            blocks += [Heading(table.title, level=3), table]
    blocks.append(Heading("Figures"))
    blocks += [
        by_key[k] for k in ("quality_vs_latency", "quality_vs_cost", "confusion") if k in by_key
    ]
    if training is not None or "loss_curve" in by_key:
        blocks.append(Heading("Training"))
        blocks += [tables.training(training)] if training is not None else []
        blocks += [by_key["loss_curve"]] if "loss_curve" in by_key else []
    blocks += [
        Heading("How to read this"),
        Bullets(
            [*HOW_TO_READ, MEMORY_NOTE[results.get("memory", "shared")], *remote_notes(results)]
        ),
        Paragraph(f"Trace any number to items: `{PREDICTIONS_FILE.as_posix()}`."),
    ]
    return blocks


def _general_model_blocks(results: dict[str, Any], by_key: dict[str, Figure]) -> list[Block]:
    """The general model's other roles: the teacher that labelled the training rows, the judge
    that compared the answers."""
    blocks: list[Block] = []
    if results.get("teacher"):
        blocks += [Heading("Student and teacher"), Paragraph(TEACHER_TEXT), tables.teacher(results)]
    if results.get("judge"):
        blocks += [Heading("Judge"), Paragraph(J.section_text(results)), J.table(results)]
        blocks += [by_key["judge"]] if "judge" in by_key else []
    return blocks


TEACHER_TEXT = (
    "The specialist learned from labels a general model gave (`data.teacher`); everything is "
    "still scored on the human-labelled test items. The student keeps the teacher's quality "
    "when the one-sided lower confidence bound of (student - teacher), paired on the same "
    "items by the bootstrap, is above minus the recipe's margin (`data.teacher.margin`)."
)


CASCADE_TEXT = (
    "A cascade answers with its first system and sends the items it is least sure of to the "
    "fallback. Its threshold is chosen on the validation items, never on test items; its test "
    "figures come from the two systems' stored answers and timing rounds, with no new inference. "
    "Cost per 1k requests is the first system's plus the escalated share of the fallback's. "
    "Latency is, in each timing round, the mixture in which an item takes one of the first "
    "system's timed latencies, or that plus one of the fallback's with the escalated share's "
    "probability; its p50 is that mixture's median. Throughput assumes the fallback's work "
    "follows the first system's on the same machine."
)


def _cascade_blocks(results: dict[str, Any], by_key: dict[str, Figure]) -> list[Block]:
    """The cascades: how each routes, its figures, its curve; then calibration."""
    blocks: list[Block] = []
    curves = [f for k, f in by_key.items() if k.startswith("cascade_curve")]
    if cascades(results):
        blocks += [Heading("Cascades"), Paragraph(CASCADE_TEXT), tables.cascades(results), *curves]
    if results.get("calibration") and results["calibration"]["systems"]:
        blocks += [
            Heading("Calibration", level=3),
            Paragraph(CALIBRATION_TEXT),
            tables.calibration(results),
            *([by_key["reliability"]] if "reliability" in by_key else []),
        ]
    return blocks


CALIBRATION_TEXT = (
    "How far each system's top-label probability (its label scores normalized over the labels) "
    "can be read as the chance it is right, on the test items: the expected calibration error "
    "weighs each of 10 equal-width confidence bins' gap between accuracy and mean confidence by "
    "its share of items. A row with a temperature other than 1 is a cascade's first system "
    "after temperature scaling fitted on validation items (it never changes which label wins)."
)


def remote_notes(results: dict[str, Any]) -> list[str]:
    """What each system served by an API was, how it was scored, and what failed."""
    return [
        f"{s['name']} is {s['model']}, served remotely ({s.get('serving', 'remote API')}): its "
        "memory and size are its server's, not measured here. It is timed on the evaluation's "
        "own requests, not in rounds: an item's latency is its request's wall time (cached "
        "with the answer), its throughput the configured concurrency over the mean latency. "
        f"{s.get('failed_items', 0)} item(s) failed after retries and "
        f"{s.get('invalid_items', 0)} answer(s) named no label; both are scored wrong."
        for s in results["systems"]
        if s["peak_memory_bytes"] is None
    ]
