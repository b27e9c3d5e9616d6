"""The deployment question answered in plain sentences, one per trade-off, then a bottom line.

Every sentence restates measured numbers; nothing is weighed beyond them. Quality uses the
evaluator's `significant` flag (McNemar for classification, a paired-bootstrap interval that
excludes 0 otherwise). Latency and cost use the evaluator's round-by-round ratios: a baseline
is called faster, slower, cheaper or dearer only when the interval of its ratio to the
specialist excludes 1, "no clear difference" when it does not, and "too few rounds to test"
when the quiet rounds left are too few for an interval. Memory and size name the lowest
system and its ratio to the specialist. `cautions` says what may have disturbed the timings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetune.report import format as fmt
from finetune.report.results import cost, disk_total, latency, primary_metric, specialist

System = dict[str, Any]


def verdict(results: dict[str, Any]) -> list[str]:
    """Quality against each baseline, then latency, memory, size, cost, and the bottom line."""
    floor = [floor_sentence(results["floor"])] if results.get("floor") else []
    return [
        *floor,
        *(quality_sentence(c) for c in results["comparisons"]),
        _latency_sentence(results),
        _memory_sentence(results),
        _size_sentence(results),
        _cost_sentence(results),
        bottom_line(results),
    ]


def _outcome(comparison: dict[str, Any]) -> str:
    """`win`, `loss` or `tie` for the specialist against one baseline."""
    if comparison["significant"] and comparison["difference"] > 0:
        return "win"
    if comparison["significant"] and comparison["difference"] < 0:
        return "loss"
    return "tie"


def floor_sentence(floor: dict[str, Any]) -> str:
    """The specialist against answering the training split's most common label every time."""
    c = floor["specialist_vs"]
    metric, mc = fmt.metric_label(c["metric"]), c["mcnemar"]
    always = (
        f"always answering '{floor['label']}' (the majority class, {floor['train_share']:.0%} of "
        f"{fmt.count(floor['train_rows'])} training rows), which scores {fmt.score(c['other_value'])}"
    )
    p = f", McNemar p = {fmt.p_value(mc['p_value'])}" if mc else ""
    if _outcome(c) == "win":
        return f"The specialist is above the floor of {always}: {fmt.difference(c)}{p}."
    return (
        f"The specialist is not significantly better than {always} on {metric} "
        f"({fmt.score(c['specialist'])}, {fmt.difference(c)}{p})."
    )


def quality_sentence(c: dict[str, Any]) -> str:
    metric, mc = fmt.metric_label(c["metric"]), c.get("mcnemar")
    if _outcome(c) == "tie":
        p = f", p = {fmt.p_value(mc['p_value'])}" if mc else ""
        return (
            f"No significant difference between the specialist and {c['baseline']} on {metric} "
            f"({fmt.difference(c)}{p})."
        )
    verb = "beats" if _outcome(c) == "win" else "loses to"
    p = f", McNemar p = {fmt.p_value(mc['p_value'])}" if mc else ""
    return (
        f"The specialist {verb} {c['baseline']} on {metric}: {fmt.score(c['specialist'])} vs "
        f"{fmt.score(c['baseline_value'])}, {fmt.difference(c)}{p}."
    )


def _lowest(results: dict[str, Any], value: Callable[[System], float]) -> tuple[System, System]:
    """The system with the lowest value (the specialist wins ties) and the specialist."""
    special = specialist(results)
    # A remote system's memory and size are its server's: they are not compared (None).
    known = [s for s in results["systems"] if value(s) is not None]
    best = min(known, key=lambda s: (value(s), s is not special))
    return best, special


def _runner_up(results: dict[str, Any], value: Callable[[System], float]) -> System | None:
    others = [
        s for s in results["systems"] if s is not specialist(results) and value(s) is not None
    ]
    return min(others, key=value) if others else None


def _lowest_sentence(
    results: dict[str, Any],
    value: Callable[[System], float],
    show: Callable[[System], str],
    what: str,
    verb: str,
) -> str:
    """`WHAT: X, A; the specialist VERB B, r x that.` or, when the specialist is lowest,
    `WHAT: the specialist, A; the next, X, VERB B, r x that.`"""
    best, special = _lowest(results, value)
    if best is special:
        other = _runner_up(results, value)
        if other is None:
            return f"{what}: the specialist, {show(special)}."
        times = fmt.ratio(value(other), value(special))
        return (
            f"{what}: the specialist, {show(special)}; "
            f"the next, {other['name']}, {verb} {show(other)}, {times} that."
        )
    times = fmt.ratio(value(special), value(best))
    return (
        f"{what}: {best['name']}, {show(best)}; "
        f"the specialist {verb} {show(special)}, {times} that."
    )


def timing_call(comparison: dict[str, Any], figure: str) -> str:
    """`lower`, `higher`, `unclear` or `untested`: the specialist's figure against the baseline's,
    called only when the interval of their round-by-round ratio excludes 1. `untested` when too
    few (quiet) rounds were left for an interval: a 100x ratio then is not "no clear
    difference", only one the rounds cannot test."""
    ratio = comparison["timing"][figure]
    if ratio["ratio"] is not None and ratio["low"] is None:
        return "untested"
    if not ratio["clear"]:
        return "unclear"
    return "lower" if ratio["high"] < 1 else "higher"


def _ratio_text(comparison: dict[str, Any], figure: str) -> str:
    r = comparison["timing"][figure]
    if r["ratio"] is None:
        return "not measured"
    apart = "" if r.get("paired", True) else ", timed apart"
    if r["low"] is None:
        return f"ratio {r['ratio']:.2f}{apart}"
    return f"ratio {r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}]{apart}"


def _timed_sentence(
    results: dict[str, Any],
    figure: str,
    what: str,
    show: Callable[[System], str],
    words: tuple[str, str],
) -> str:
    """`WHAT, median of n rounds: the specialist A; LOWER than X (B, ratio r [lo, hi]); HIGHER
    than Y (...); no clear difference from Z (...); too few rounds to test against W (...); 95%
    intervals over rounds.`"""
    special = specialist(results)
    by_name = {s["name"]: s for s in results["systems"]}
    groups: dict[str, list[str]] = {"lower": [], "higher": [], "unclear": [], "untested": []}
    for c in results["comparisons"]:
        other = by_name[c["baseline"]]
        groups[timing_call(c, figure)].append(
            f"{c['baseline']} ({show(other)}, {_ratio_text(c, figure)})"
        )
    heads = {
        "lower": f"{words[0]} than",
        "higher": f"{words[1]} than",
        "unclear": "no clear difference from",
        "untested": "too few rounds to test against",
    }
    parts = [f"{heads[k]} {_and(v)}" for k, v in groups.items() if v]
    rounds = results["timing"]["rounds"]
    head = f"{what}, median of {rounds} rounds: the specialist {show(special)}"
    if not parts:
        return f"{head}."
    level = f"{results['confidence']:.0%}"
    return f"{head}; {'; '.join(parts)}; {level} intervals over rounds."


def _peak(system: System) -> float:
    return system["peak_memory_bytes"]


def _latency_sentence(results: dict[str, Any]) -> str:
    return _timed_sentence(
        results,
        "latency",
        "p50 latency at batch size 1",
        lambda s: fmt.ms(latency(s)),
        ("faster", "slower"),
    )


def _memory_sentence(results: dict[str, Any]) -> str:
    return _lowest_sentence(
        results, _peak, lambda s: fmt.gib(_peak(s)), "Lowest peak memory while serving", "peaks at"
    )


def _size_sentence(results: dict[str, Any]) -> str:
    sentence = _lowest_sentence(
        results, disk_total, lambda s: fmt.size(disk_total(s)), "Smallest size on disk", "needs"
    )
    adapter = specialist(results)["disk_bytes"].get("adapter")
    if not adapter:
        return sentence
    base = specialist(results)["disk_bytes"].get("model") or 0
    return (
        f"{sentence[:-1]}; the specialist's {fmt.size(adapter)} adapter is all it adds where "
        f"its {fmt.size(base)} base model is already deployed."
    )


def _cost_sentence(results: dict[str, Any]) -> str:
    return _timed_sentence(
        results,
        "cost",
        "Cost per 1k requests",
        lambda s: fmt.usd(cost(s)),
        ("cheaper", "dearer"),
    )


def _clearly_cheaper(results: dict[str, Any]) -> System | None:
    """The cheapest of the baselines whose cost is clearly below the specialist's, if any."""
    by_name = {s["name"]: s for s in results["systems"]}
    cheaper = [
        by_name[c["baseline"]]
        for c in results["comparisons"]
        if timing_call(c, "cost") == "higher"  # the specialist costs more
    ]
    return min(cheaper, key=cost) if cheaper else None


def _lower_point_cost(results: dict[str, Any], special: System) -> System | None:
    """The cheapest baseline whose median cost is below the specialist's, clearly or not."""
    lower = [s for s in results["systems"] if s is not special and cost(s) < cost(special)]
    return min(lower, key=cost) if lower else None


def bottom_line(results: dict[str, Any]) -> str:
    """Deploy the specialist when it significantly beats every baseline and none is clearly
    cheaper; otherwise name the trade-off: the best-quality system and the cheapest one."""
    comparisons, metric = results["comparisons"], primary_metric(results)
    label = fmt.metric_label(metric)
    if not comparisons:
        return "Bottom line: no baselines were evaluated, so there is nothing to compare against."
    special = specialist(results)
    floor = results.get("floor")
    if floor and _outcome(floor["specialist_vs"]) != "win":
        return (
            f"Bottom line: do not deploy the specialist as it is; it is not significantly better "
            f"on {label} than always answering '{floor['label']}'; {_record(comparisons, label)}."
        )
    cheapest = _clearly_cheaper(results) or special
    wins_all = all(_outcome(c) == "win" for c in comparisons)
    if wins_all and cheapest is special:
        return (
            f"Bottom line: deploy the specialist; it is significantly better than every baseline "
            f"on {label} and no baseline is clearly cheaper per 1k requests "
            f"(the specialist: {fmt.usd(cost(special))})."
        )
    if wins_all:
        return (
            f"Bottom line: the trade-off is quality against cost; the specialist is significantly "
            f"better than every baseline on {label}, while {cheapest['name']} is clearly cheaper "
            f"at {fmt.usd(cost(cheapest))} per 1k requests against the specialist's "
            f"{fmt.usd(cost(special))} ({fmt.ratio(cost(special), cost(cheapest))})."
        )
    best = max(results["systems"], key=lambda s: (s["metrics"][metric]["value"], s is special))
    best_text = f"{fmt.score(best['metrics'][metric]['value'])}"
    lower = _lower_point_cost(results, special) if best is cheapest is special else None
    if lower is not None:
        tail = (
            f"the specialist has the highest {label} ({best_text}); no baseline is clearly "
            f"cheaper, though {lower['name']}'s median {fmt.usd(cost(lower))} per 1k requests is "
            f"below the specialist's {fmt.usd(cost(special))} (not clearly, over these rounds)"
        )
    elif best is cheapest:
        tail = (
            f"{_name(best, special)} has both the highest {label} ({best_text}) and the lowest "
            f"cost ({fmt.usd(cost(best))} per 1k requests)"
            + ("; no baseline is clearly cheaper" if best is special else "")
        )
    elif cheapest is special:
        tail = (
            f"the highest {label} is {_name(best, special)}'s {best_text}, and no baseline is "
            f"clearly cheaper than the specialist ({fmt.usd(cost(special))} per 1k requests)"
        )
    else:
        tail = (
            f"the highest {label} is {_name(best, special)}'s {best_text} and the cheapest system "
            f"is {cheapest['name']} at {fmt.usd(cost(cheapest))} per 1k requests"
        )
    return f"Bottom line: {_record(comparisons, label)}; {tail}."


def cautions(results: dict[str, Any]) -> list[str]:
    """What may have disturbed the timings, system by system, naming the figures it touches."""
    info = results["timing"]
    notes = []
    if info["stopped_early"]:
        notes.append(
            f"Timing stopped after {info['rounds']} of {info['rounds_requested']} rounds "
            f"(eval.timing.max_minutes, {info['max_minutes']:g}, was spent); the ratios' "
            "intervals are over the rounds that ran."
        )
    by_system: dict[str, list[dict[str, Any]]] = {}
    for entry in info["disturbed"]:
        by_system.setdefault(entry["system"], []).append(entry)
    for name, entries in by_system.items():
        figures = sorted({f for e in entries for f in e["figures"]}, key=_FIGURE_ORDER.index)
        rounds = "; ".join(f"round {e['round']}: {', '.join(e['reasons'])}" for e in entries)
        busy = [str(e["round"]) for e in entries if e.get("busy")]
        left_out = ""
        if busy:
            which = f"round {busy[0]} is" if len(busy) == 1 else f"rounds {_and(busy)} are"
            left_out = f"; {which} left out of its ratios to the others (machine busy)"
        notes.append(
            f"Timing interference for {name} ({rounds}). Affected: its {_and(figures)}. "
            f"Figures are medians over {info['rounds']} rounds and ratios are paired within "
            f"rounds, so a disturbed round shifts them little{left_out}; re-run `finetune eval` "
            "on a quiet machine to confirm."
        )
    return notes


_FIGURE_ORDER = ["latency", "throughput", "cost"]


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _name(system: System, special: System) -> str:
    return "the specialist" if system is special else system["name"]


def _record(comparisons: list[dict[str, Any]], label: str) -> str:
    """`the specialist is significantly better than 1 of 3 baselines on accuracy (worse than X;
    no significant difference from Y)`."""
    by = {k: [c["baseline"] for c in comparisons if _outcome(c) == k] for k in ("loss", "tie")}
    wins = sum(_outcome(c) == "win" for c in comparisons)
    details = []
    if by["loss"]:
        details.append(f"worse than {', '.join(by['loss'])}")
    if by["tie"]:
        details.append(f"no significant difference from {', '.join(by['tie'])}")
    return (
        f"the specialist is significantly better than {wins} of {len(comparisons)} baselines "
        f"on {label} ({'; '.join(details)})"
    )
