"""The deployment question answered in plain sentences, one per trade-off, then a bottom line
that names the system to deploy, why, and the runner-up with what it costs or loses.

Every sentence restates measured numbers; nothing is weighed beyond them. Quality uses the
evaluator's `significant` flag (McNemar for classification, a paired-bootstrap interval that
excludes 0 otherwise). Latency and cost use the evaluator's round-by-round ratios: a baseline
is called faster, slower, cheaper or dearer only when the interval of its ratio to the
specialist excludes 1, "no clear difference" when it does not, and "too few rounds to test"
when the quiet rounds left are too few for an interval, paired or not. Memory and size name the
lowest system and its ratio to the specialist. `cautions` says what may have disturbed the
timings.

The bottom line deploys the first of the systems that meet `eval.constraints`: baselines
significantly better than the specialist, then the specialist and the baselines it ties on
quality, a tie going to the one clearly cheaper, else clearly faster (the sentence says so), then
the baselines it beats. Without the specialist (ruled out) the highest primary metric goes first.
A specialist not above the majority-class floor is never deployed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetune.recipe.schema import ConstraintsConfig
from finetune.report import format as fmt
from finetune.report import judge as J
from finetune.report.decision import (
    Candidate,
    Recommendation,
    broken,
    by_cost,
    by_quality,
    over_text,
    recommend,
)
from finetune.report.results import (
    cascades,
    constraints,
    cost,
    disk_total,
    fallback_cost_share,
    latency,
    primary_metric,
    quality_comparisons,
    quality_value,
    specialist,
)

System = dict[str, Any]


def verdict(results: dict[str, Any]) -> list[str]:
    """Quality against each baseline, then latency, memory, size, cost, and the bottom line."""
    floor = [floor_sentence(results["floor"])] if results.get("floor") else []
    judged = [J.lead_sentence(results)] if results.get("judge") else []
    routed = cascades(results)
    named = {s["name"] for s in routed}
    return [
        *judged,
        *floor,
        # A cascade's own sentence pairs it with both of its systems.
        *(quality_sentence(c) for c in quality_comparisons(results) if c["baseline"] not in named),
        *(cascade_sentence(results, s) for s in routed),
        *([teacher_sentence(results)] if results.get("teacher") else []),
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
    if c.get("judge"):
        return J.pair_sentence(c)
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


def cascade_sentence(results: dict[str, Any], system: System) -> str:
    """`Cascade X: the specialist answers and escalates 14% of test items to Y (...): accuracy
    A [CI], against the specialist ..., against Y ..., at B of Y's cost per 1k requests.`"""
    c, label = system["cascade"], fmt.metric_label(primary_metric(results))
    versus = {v["system"]: v for v in c["versus"]}
    against = "; ".join(
        f"against {_as_first(results, name)} {_versus_text(versus[name])}"
        for name in (c["first"], c["fallback"])
    )
    share = fallback_cost_share(results, system)
    theirs = next(cost(s) for s in results["systems"] if s["name"] == c["fallback"])
    price = (
        f", at {share:.0%} of {c['fallback']}'s cost per 1k requests ({fmt.usd(cost(system))} "
        f"vs {fmt.usd(theirs)})"
        if share
        else ""
    )
    return (
        f"Cascade {system['name']}: {_as_first(results, c['first'])} answers and escalates "
        f"{c['test']['escalated']:.0%} of test items to {c['fallback']} (its {c['confidence']} "
        f"below {c['threshold']:.3f}, chosen on {c['validation']['items']} validation items, "
        f"where it escalated {c['validation']['escalated']:.0%}): {label} "
        f"{fmt.with_ci(system['metrics'][primary_metric(results)])}; {against}{price}, "
        f"p50 latency {fmt.ms(latency(system))}."
    )


def teacher_sentence(results: dict[str, Any]) -> str:
    """`Taught by X, the student keeps its quality: accuracy A vs B, lower bound L above -M;
    it gives X's answer on 91% of test items. X labelled 800 rows (780 kept) in 12 min, $0.01.`"""
    t, label = results["teacher"], fmt.metric_label(results["teacher"]["metric"])
    keeps = "keeps" if t["non_inferior"] else "does not keep"
    where = "above" if t["non_inferior"] else "not above"
    text = (
        f"Taught by {t['teacher']}, the student {keeps} its quality: {label} "
        f"{fmt.score(t['student_value'])} vs {fmt.score(t['teacher_value'])}, the one-sided "
        f"{results['confidence']:.0%} lower bound of the difference {t['lower']:+.3f} {where} "
        f"{-t['margin']:+.3f}; it gives {t['teacher']}'s answer on {t['agreement']:.0%} of test "
        "items."
    )
    if (card := t.get("labelling")) is not None:
        cost = card["cost"]
        text += (
            f" {t['teacher']} labelled {fmt.count(card['asked'])} rows ({fmt.count(card['kept'])} "
            f"kept) in {cost['seconds'] / 60:.1f} min, {fmt.usd(cost['usd'])}."
        )
    return text


def _as_first(results: dict[str, Any], name: str) -> str:
    return "the specialist" if name == specialist(results)["name"] else name


def _versus_text(v: dict[str, Any]) -> str:
    """`+0.042, significantly better (p = 0.0021)` or `-0.004, no significant difference (...)`."""
    mc = v["mcnemar"]
    p = f" (McNemar p = {fmt.p_value(mc['p_value'])})" if mc else ""
    if not v["significant"]:
        return f"{v['difference']:+.3f}, no significant difference{p}"
    word = "better" if v["difference"] > 0 else "worse"
    return f"{v['difference']:+.3f}, significantly {word}{p}"


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
    few (quiet) rounds were left for an interval, paired or unpaired, or none at all: a 100x
    ratio then is not "no clear difference", only one the rounds cannot test."""
    ratio = comparison["timing"][figure]
    if ratio["low"] is None and (ratio["ratio"] is not None or ratio.get("left_out")):
        return "untested"
    if not ratio["clear"]:
        return "unclear"
    return "lower" if ratio["high"] < 1 else "higher"


def _ratio_text(comparison: dict[str, Any], figure: str) -> str:
    r = comparison["timing"][figure]
    if r["ratio"] is None:
        return "every round busy" if r.get("left_out") else "not measured"
    if r["low"] is None:
        return f"ratio {fmt.factor(r['ratio'])}{_apart(r)}"
    low, high = fmt.factor(r["low"]), fmt.factor(r["high"])
    return f"ratio {fmt.factor(r['ratio'])} [{low}, {high}]{_apart(r)}"


def _apart(ratio: dict[str, Any]) -> str:
    """How a ratio was taken when not round by round: `timed apart` (in two evaluations) or
    `unpaired` (too few rounds quiet for both; over each one's own quiet rounds)."""
    if ratio.get("paired", True):
        return ""
    return ", unpaired" if "paired_rounds" in ratio else ", timed apart"


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


def bottom_line(results: dict[str, Any]) -> str:
    """The system to deploy, why, and the runner-up with what it costs or loses, among the
    systems that meet `eval.constraints` (those that do not are named with the limit they
    break). Never the specialist when it is not above the majority-class floor."""
    comparisons, label = quality_comparisons(results), quality_label(results)
    if not comparisons:
        return "Bottom line: no baselines were evaluated, so there is nothing to compare against."
    floor = results.get("floor")
    if floor and _outcome(floor["specialist_vs"]) != "win":
        return (
            f"Bottom line: do not deploy the specialist as it is; it is not significantly better "
            f"on {label} than always answering '{floor['label']}'; {_record(comparisons, label)}."
        )
    limits = constraints(results)
    candidates = [_candidate(results, s) for s in results["systems"]]
    choice = _choose(results, candidates, limits)
    ruled_out = _ruled_out(results, candidates, choice, limits, label)
    if choice.best is None:
        return f"Bottom line: no system meets eval.constraints: {_and(ruled_out)}."
    why = _why(results, choice, label)
    runner_up = _runner_up_text(results, choice, label)
    tail = f"; ruled out by eval.constraints: {_and(ruled_out)}" if ruled_out else ""
    gist = _cascade_gist(results, choice.best.name)
    return f"Bottom line: deploy {_called(results, choice.best)}: {gist}{why}{runner_up}{tail}."


def _cascade_gist(results: dict[str, Any], name: str) -> str:
    """`accuracy 0.850 [0.80, 0.89] at 27% of X's cost per 1k requests; ` for a cascade."""
    system = next(s for s in results["systems"] if s["name"] == name)
    if not system.get("cascade"):
        return ""
    metric, share = primary_metric(results), fallback_cost_share(results, system)
    price = (
        f" at {share:.0%} of {system['cascade']['fallback']}'s cost per 1k requests"
        if share
        else ""
    )
    return f"{fmt.metric_label(metric)} {fmt.with_ci(system['metrics'][metric])}{price}; "


def quality_label(results: dict[str, Any]) -> str:
    """What the bottom line weighs quality by: the judge's win rate, or the primary metric."""
    if results.get("judge") and any(c.get("judge") for c in quality_comparisons(results)):
        return "judge win rate"
    return fmt.metric_label(primary_metric(results))


def _candidate(results: dict[str, Any], system: System) -> Candidate:
    peak = system["peak_memory_bytes"]
    return Candidate(
        system["name"],
        quality_value(results, system),
        p50_ms=latency(system),
        usd_per_1k=cost(system),
        memory_gb=None if peak is None else peak / 1e9,
    )


def _choose(
    results: dict[str, Any], candidates: list[Candidate], limits: ConstraintsConfig
) -> Recommendation:
    """By the paired tests against the specialist while it meets the constraints; without
    it, by the primary metric alone (baselines are not tested against one another)."""
    name = specialist(results)["name"]
    mine = next(c for c in candidates if c.name == name)
    return recommend(candidates, limits, by_quality if broken(mine, limits) else _rank(results))


def _rank(results: dict[str, Any]) -> Callable[[Candidate], tuple]:
    """Baselines significantly better than the specialist (best first), the quality ties
    that win the tie-break (cheapest first), the specialist, the ties it wins, the baselines
    it beats."""
    by_name = {c["baseline"]: c for c in quality_comparisons(results)}

    def key(c: Candidate) -> tuple:
        comparison = by_name.get(c.name)
        if comparison is None:
            return (2,)
        outcome = _outcome(comparison)
        if outcome == "tie" and _tie_break(comparison)[0] == "baseline":
            return (1, *by_cost(c))
        return ({"loss": 0, "tie": 3, "win": 4}[outcome], *by_quality(c))

    return key


def _tie_break(comparison: dict[str, Any]) -> tuple[str, str]:
    """Who wins a tie on quality, `specialist` or `baseline`, and by what: the figure whose
    interval first excludes 1 (cost, then p50 latency), else the higher point metric."""
    for figure in ("cost", "latency"):
        call = timing_call(comparison, figure)
        if call in ("lower", "higher"):
            return ("specialist" if call == "lower" else "baseline"), figure
    return ("baseline" if comparison["difference"] < 0 else "specialist"), "metric"


def _why(results: dict[str, Any], choice: Recommendation, label: str) -> str:
    """Why the deployed system comes first: its paired test against the specialist or, for
    the specialist, against the runner-up."""
    best, other = choice.best, choice.runner_up
    special = specialist(results)["name"]
    by_name = {c["baseline"]: c for c in quality_comparisons(results)}
    if other is None:
        return "it is the only system that meets the constraints"
    if special in choice.excluded:
        return (
            f"it has the highest {label} of the systems that meet the constraints "
            f"({fmt.score(best.value)}; baselines are not tested against one another)"
        )
    if best.name == special and _outcome(by_name[other.name]) == "win":
        return (
            f"it is significantly better on {label} than every baseline that meets the "
            f"constraints, the runner-up included ({_versus(by_name[other.name], True)})"
        )
    if best.name == special:
        return _tie_text(results, by_name[other.name], label)
    comparison = by_name[best.name]
    if _outcome(comparison) == "loss":
        return (
            f"it is significantly better than the specialist on {label} "
            f"({_versus(comparison, specialist_first=False)})"
        )
    return _tie_text(results, comparison, label)


def _versus(c: dict[str, Any], specialist_first: bool) -> str:
    """`0.950 vs 0.910, p = 0.0025` (McNemar), or the difference and its interval; with a
    judge, its win rate."""
    if c.get("judge"):
        return J.versus(c, specialist_first)
    values = [fmt.score(c["specialist"]), fmt.score(c["baseline_value"])]
    sign = 1 if specialist_first else -1
    d, low, high = (sign * c[k] for k in ("difference", "low", "high"))
    mc = c.get("mcnemar")
    interval = fmt.interval(*sorted((low, high)))
    evidence = f"p = {fmt.p_value(mc['p_value'])}" if mc else f"{d:+.3f} {interval}"
    return f"{' vs '.join(values if specialist_first else values[::-1])}, {evidence}"


def _tie_text(results: dict[str, Any], c: dict[str, Any], label: str) -> str:
    """`it ties X on accuracy (...) and is clearly cheaper (ratio ...); ties on accuracy are
    broken by cost, then p50 latency`."""
    winner, figure = _tie_break(c)
    mine = winner == "specialist"
    other = c["baseline"] if mine else "the specialist"
    if figure == "cost":
        how = f"is clearly cheaper per 1k requests ({_oriented(c, 'cost', mine)})"
    elif figure == "latency":
        how = (
            f"costs no clearly different amount but is clearly faster at p50 "
            f"({_oriented(c, 'latency', mine)})"
        )
    else:
        calls = {timing_call(c, "cost"), timing_call(c, "latency")}
        apart = "clearly differs" if "unclear" in calls else "can be tested over these rounds"
        how = f"neither cost nor p50 latency {apart}, so " + (
            f"the higher point {label} decides" if c["difference"] else "the specialist is kept"
        )
    return (
        f"it ties {other} on {label} ({_versus(c, specialist_first=mine)}) and {how}; ties on "
        f"{label} are broken by cost, then p50 latency"
    )


def _oriented(c: dict[str, Any], figure: str, specialist_first: bool) -> str:
    """`ratio 0.26 [0.25, 0.27]`: the winner's figure over the loser's, with its interval."""
    r = c["timing"][figure]
    flip = (lambda v: v) if specialist_first else (lambda v: 1 / v)
    low, high = sorted((flip(r["low"]), flip(r["high"])))
    interval = f"[{fmt.factor(low)}, {fmt.factor(high)}]"
    return f"ratio {fmt.factor(flip(r['ratio']))} {interval}{_apart(r)}"


def _runner_up_text(results: dict[str, Any], choice: Recommendation, label: str) -> str:
    """`; runner-up: X (accuracy 0.900; 3.91x the cost per 1k requests, $0.0090; ...)`, its
    figures against the deployed system's."""
    best, other = choice.best, choice.runner_up
    if other is None:
        return ""
    parts = [f"{label} {fmt.score(other.value)}"]
    for what, attr, show in (
        ("the cost per 1k requests", "usd_per_1k", fmt.usd),
        ("the p50 latency", "p50_ms", fmt.ms),
    ):
        mine, theirs = getattr(best, attr), getattr(other, attr)
        if mine and theirs is not None:
            parts.append(f"{_share(theirs, mine)} {what}, {show(theirs)}")
    return f"; runner-up: {_called(results, other)} ({'; '.join(parts)})"


def _share(value: float, reference: float) -> str:
    """`3.91x`, or `1/2,200` where the value is under a tenth of the reference (`0.00x` says
    nothing)."""
    if value and value / reference < 0.1:
        return f"1/{fmt.factor(reference / value)}"
    return fmt.ratio(value, reference)


def _ruled_out(
    results: dict[str, Any],
    candidates: list[Candidate],
    choice: Recommendation,
    limits: ConstraintsConfig,
    label: str,
) -> list[str]:
    """`X (accuracy 0.950, p50 latency 1,480 ms > 1,000 ms)` for each system ruled out."""
    return [
        f"{_called(results, c)} ({label} {fmt.score(c.value)}, {', '.join(over_text(c, limits))})"
        for c in candidates
        if c.name in choice.excluded
    ]


def _called(results: dict[str, Any], c: Candidate) -> str:
    """`the specialist`, a system's name, or what a cascade does: `the specialist, escalating
    14% of items to X (cascade Y)`."""
    system = next((s for s in results["systems"] if s["name"] == c.name), None)
    if system and system.get("cascade"):
        info = system["cascade"]
        return (
            f"{_as_first(results, info['first'])}, escalating {info['test']['escalated']:.0%} of "
            f"items to {info['fallback']} (cascade {c.name})"
        )
    return "the specialist" if c.name == specialist(results)["name"] else c.name


def cautions(results: dict[str, Any]) -> list[str]:
    """What may have disturbed the timings, system by system, naming the figures it touches."""
    info = results["timing"]
    notes = J.cautions(results)
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
