"""The deployment question answered in plain sentences, one per trade-off, then a bottom line.

Every sentence restates measured numbers; nothing is weighed beyond them. Quality uses the
evaluator's `significant` flag (McNemar for classification, a paired-bootstrap interval that
excludes 0 otherwise); the other dimensions name the lowest system and its ratio to the
specialist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetune.report import format as fmt
from finetune.report.results import cost, disk_total, latency, primary_metric, specialist

System = dict[str, Any]
# Timings of one system repeated on this kind of shared machine differ by up to about 10%
# (the same weights measured as specialist and as base), so smaller gaps are not a finding.
TIMING_NOISE = 0.10


def verdict(results: dict[str, Any]) -> list[str]:
    """Quality against each baseline, then latency, memory, size, cost, and the bottom line."""
    return [
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
    best = min(results["systems"], key=lambda s: (value(s), s is not special))
    return best, special


def _runner_up(results: dict[str, Any], value: Callable[[System], float]) -> System | None:
    others = [s for s in results["systems"] if s is not specialist(results)]
    return min(others, key=value) if others else None


def _lowest_sentence(
    results: dict[str, Any],
    value: Callable[[System], float],
    show: Callable[[System], str],
    what: str,
    verb: str,
    *,
    timed: bool = False,
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
    noise = (
        f", within the {TIMING_NOISE:.0%} noise of repeated timings"
        if timed and value(special) <= value(best) * (1 + TIMING_NOISE)
        else ""
    )
    return (
        f"{what}: {best['name']}, {show(best)}; "
        f"the specialist {verb} {show(special)}, {times} that{noise}."
    )


def _peak(system: System) -> float:
    return system["peak_memory_bytes"]


def _latency_sentence(results: dict[str, Any]) -> str:
    return _lowest_sentence(
        results,
        latency,
        lambda s: fmt.ms(latency(s)),
        "Lowest p50 latency at batch size 1",
        "takes",
        timed=True,
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
    return _lowest_sentence(
        results,
        cost,
        lambda s: fmt.usd(cost(s)),
        "Lowest cost per 1k requests",
        "costs",
        timed=True,
    )


def bottom_line(results: dict[str, Any]) -> str:
    """Deploy the specialist when it significantly beats every baseline and none is cheaper;
    otherwise name the trade-off: the best-quality system and the cheapest one."""
    comparisons, metric = results["comparisons"], primary_metric(results)
    label = fmt.metric_label(metric)
    if not comparisons:
        return "Bottom line: no baselines were evaluated, so there is nothing to compare against."
    special = specialist(results)
    cheapest, _ = _lowest(results, cost)
    if cost(special) <= cost(cheapest) * (1 + TIMING_NOISE):
        cheapest = special  # cost comes from timings: a gap within their noise is no gap
    wins_all = all(_outcome(c) == "win" for c in comparisons)
    if wins_all and cheapest is special:
        return (
            f"Bottom line: deploy the specialist; it is significantly better than every baseline "
            f"on {label} and no baseline is cheaper per 1k requests ({fmt.usd(cost(special))}) "
            f"by more than the {TIMING_NOISE:.0%} noise of the timings it comes from."
        )
    if wins_all:
        return (
            f"Bottom line: the trade-off is quality against cost; the specialist is significantly "
            f"better than every baseline on {label}, while {cheapest['name']} is cheaper at "
            f"{fmt.usd(cost(cheapest))} per 1k requests against the specialist's "
            f"{fmt.usd(cost(special))} ({fmt.ratio(cost(special), cost(cheapest))})."
        )
    best = max(results["systems"], key=lambda s: (s["metrics"][metric]["value"], s is special))
    best_text = f"{fmt.score(best['metrics'][metric]['value'])}"
    if best is cheapest:
        tail = (
            f"{_name(best, special)} has both the highest {label} ({best_text}) and the lowest "
            f"cost ({fmt.usd(cost(best))} per 1k requests)"
        )
    else:
        tail = (
            f"the highest {label} is {_name(best, special)}'s {best_text} and the cheapest system "
            f"is {_name(cheapest, special)} at {fmt.usd(cost(cheapest))} per 1k requests"
        )
    return f"Bottom line: {_record(comparisons, label)}; {tail}."


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
