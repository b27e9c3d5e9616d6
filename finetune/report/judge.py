"""The judge in the report: its section (what it did, its sanity check, its table) and the
sentences the verdict says about it.

With a judge (`results["judge"]`), the verdict's quality comparisons rest on its win rates
(`report.results.quality_comparisons`): the specialist beats a baseline when the interval of
its win rate (ties as half) is above 0.5, loses when it is below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.report import format as fmt
from finetune.report.plots import BASELINE_COLOR, DPI, Figure, pyplot, save_png
from finetune.report.tables import Table

CORRUPTIONS = {
    "other_reference": "against another item's reference",
    "first_sentence": "against its own first sentence",
}


def lead_sentence(results: dict[str, Any]) -> str:
    """What quality means here, the judge's sanity figure and position consistency."""
    j = results["judge"]
    guided = ", reading each item's reference answer" if j["reference_guided"] else ""
    return (
        f"Quality is judged by {j['judge']}: it compared the specialist's answer with each "
        f"baseline's on every test item, in both orders{guided}; a disagreement between the "
        f"orders is a tie, and the win rate counts ties as half. {sanity_text(j)} "
        f"{consistency_text(j)} The metrics ({', '.join(_metrics(results))}) are in the tables."
    )


def _metrics(results: dict[str, Any]) -> list[str]:
    return [fmt.metric_label(m) for m in results["metrics"]]


def sanity_text(j: dict[str, Any]) -> str:
    """`Its sanity check: it preferred the reference ... (94%; at least 90% needed).`"""
    s = j.get("sanity")
    if s is None:
        return "It was given no sanity check (eval.judge.sanity is empty)."
    if not s["pairs"]:
        return "Its sanity check had no pairs (no reference answer could be corrupted)."
    parts = "; ".join(
        f"{CORRUPTIONS.get(name, name)}: {c['preferred']} of {c['pairs']}"
        for name, c in s["by_corruption"].items()
    )
    figure = (
        f"Its sanity check: it preferred the reference answer to a corrupted one in both orders "
        f"in {s['preferred']} of {s['pairs']} pairs ({s['rate']:.0%}; {parts}; "
        f"{s['threshold']:.0%} needed)"
    )
    if s["passed"]:
        return figure + "."
    return f"{figure}, so its verdicts below are not to be trusted."


def consistency_text(j: dict[str, Any]) -> str:
    c = j.get("consistency")
    if c is None:
        return "No pair had both of its verdicts parsed."
    return (
        f"It gave the same verdict in both orders on {c:.0%} of the items (position consistency)."
    )


def pair_sentence(c: dict[str, Any]) -> str:
    """The specialist against one baseline, by the judge."""
    p = c["judge"]
    rate = f"{p['win_rate']:.2f} {fmt.interval(p['low'], p['high'])}"
    record = f"{p['wins']} wins, {p['ties']} ties, {p['losses']} losses"
    tail = f"{record}, sign test p = {fmt.p_value(p['sign_test_p'])}{_unparsable(p)}"
    if c["significant"]:
        verb = "beats" if p["win_rate"] > 0.5 else "loses to"
        return f"By the judge, the specialist {verb} {c['baseline']}: win rate {rate} ({tail})."
    return (
        f"By the judge, no significant difference between the specialist and {c['baseline']}: "
        f"win rate {rate} ({tail})."
    )


def _unparsable(p: dict[str, Any]) -> str:
    return f"; {p['unparsable']} items unjudged (unparsable verdict)" if p["unparsable"] else ""


def versus(c: dict[str, Any], specialist_first: bool) -> str:
    """`win rate 0.62 [0.53, 0.71] for the specialist, sign test p = 0.03`."""
    p = c["judge"]
    rate, low, high = p["win_rate"], p["low"], p["high"]
    who = "the specialist"
    if not specialist_first:
        rate, low, high, who = 1 - rate, 1 - high, 1 - low, c["baseline"]
    return (
        f"judge win rate {rate:.2f} {fmt.interval(low, high)} for {who}, "
        f"sign test p = {fmt.p_value(p['sign_test_p'])}"
    )


def cautions(results: dict[str, Any]) -> list[str]:
    """A judge that failed its sanity check, verdicts it could not give, prompts cut."""
    j, notes = results.get("judge"), []
    if not j:
        return notes
    if j.get("sanity") and not j["sanity"]["passed"]:
        notes.append(f"The judge failed its sanity check. {sanity_text(j)}")
    unparsable = sum(p["unparsable"] for p in j["pairs"])
    if unparsable or j["failed"]:
        notes.append(
            f"The judge left {unparsable} item-pairs unjudged ({j['failed']} failed requests, "
            "the rest replies without exactly one of [[A]], [[B]], [[C]]): they are counted, "
            "not guessed, and left out of the win rates."
        )
    if j["truncated"]:
        notes.append(
            f"{j['truncated']} judge prompts were cut to fit eval.judge.max_length (or the "
            "engine's context); raise it."
        )
    return notes


def table(results: dict[str, Any]) -> Table:
    """One row per pair: outcomes, win rate, sign test, consistency and length bias."""
    j = results["judge"]
    columns = [
        "specialist vs",
        "wins / ties / losses",
        "unjudged",
        "win rate (ties half)",
        "sign test p",
        "same verdict both orders",
        "answer A picked",
        "mean words (specialist / baseline)",
        "decisive items won by the longer answer",
    ]
    lc = any(p["length_controlled"] for p in j["pairs"])
    columns += ["length-controlled win rate"] if lc else []
    rows = [_row(p, lc) for p in j["pairs"]]
    return Table("judge", f"Judged by {j['judge']}", columns, rows)


def _row(p: dict[str, Any], lc: bool) -> list[str]:
    length = p["length"]
    longer = length["longer_won"]
    row = [
        p["baseline"],
        f"{p['wins']} / {p['ties']} / {p['losses']}",
        str(p["unparsable"]),
        _rate(p),
        fmt.p_value(p["sign_test_p"]),
        "-" if p["consistency"] is None else f"{p['consistency']:.0%}",
        "-" if p["first_position"] is None else f"{p['first_position']:.0%}",
        f"{_words(length['first_words'])} / {_words(length['second_words'])}",
        "-" if longer is None else f"{longer:.0%} of {length['decisive_with_length_difference']}",
    ]
    if lc:
        row.append(_rate(p["length_controlled"]) if p["length_controlled"] else "-")
    return row


def _rate(p: dict[str, Any]) -> str:
    if p["win_rate"] is None:
        return "-"
    return f"{p['win_rate']:.3f} {fmt.interval(p['low'], p['high'])}"


def _words(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def section_text(results: dict[str, Any]) -> str:
    """The judge section's paragraph: method, sanity, consistency and cost."""
    j, cost = results["judge"], results["judge"]["cost"]
    return (
        f"{lead_sentence(results)} Each pair of answers was judged twice, the second time "
        "with A and B swapped; the interval is a percentile bootstrap over items at "
        f"{results['confidence']:.0%}, and the sign test is exact on the decisive items. "
        "'Answer A picked' is the share of decisive verdicts that went to the answer shown "
        f"first (0.5 without position bias). Judging {fmt.count(j['games'])} prompts took "
        f"{cost['seconds']:,.0f} s of the judge's time, {fmt.usd(cost['usd'])} "
        f"({cost['basis']}). Every verdict: `eval/judgments.jsonl`."
    )


def judge_figures(results: dict[str, Any], out_dir: Path) -> list[Figure]:
    """The win-rate plot, with a judge; none without."""
    pairs = [p for p in (results.get("judge") or {}).get("pairs", []) if p["win_rate"] is not None]
    if not pairs:
        return []
    path = save_png(win_rate_figure(results["judge"]["judge"], pairs), out_dir / "judge.png")
    caption = (
        f"The specialist's win rate against each baseline as judged by "
        f"{results['judge']['judge']} (ties as half), with {results['confidence']:.0%} bootstrap "
        "intervals over items; right of 0.5 the specialist's answers are preferred."
    )
    return [Figure("judge", path, caption)]


def win_rate_figure(judge: str, pairs: list[dict[str, Any]]) -> Any:
    """One row per baseline: the win rate as a point, its interval as a bar, 0.5 marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(pairs)), dpi=DPI)
    rows = range(len(pairs))
    rates = [p["win_rate"] for p in pairs]
    spans = [[p["win_rate"] - p["low"] for p in pairs], [p["high"] - p["win_rate"] for p in pairs]]
    ax.errorbar(rates, rows, xerr=spans, fmt="o", color=BASELINE_COLOR, capsize=4)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(list(rows), [f"vs {p['baseline']}" for p in pairs])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, len(pairs) - 0.3)
    ax.set_xlabel(f"specialist's win rate, judged by {judge} (ties half)")
    fig.tight_layout()
    return fig
