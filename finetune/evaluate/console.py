"""What an evaluation prints as it goes: each system's primary metric, the floor, and the
timing rounds' medians."""

from __future__ import annotations

from typing import Any

from finetune.evaluate import timing
from finetune.evaluate.results import Outcome, metric_names
from finetune.recipe import Recipe
from finetune.tasks import metrics as M


def say_outcome(
    console: Any, recipe: Recipe, outcome: Outcome, golds: list[Any], reused: bool = False
) -> None:
    if console is None:
        return
    task = recipe.task.type
    name = metric_names(recipe)[0]
    value = M.compute(
        task, name, golds, outcome.predictions, labels=list(recipe.task.labels) or None
    )
    truncated = sum(outcome.truncated)
    note = f"; {truncated} input(s) truncated to model.max_length" if truncated else ""
    say(
        console,
        f"{outcome.system.name}: {name} {value:.3f} on {len(golds)} items in "
        f"{outcome.seconds:.0f} s{note}" + (" (kept from an earlier evaluation)" if reused else ""),
    )


def say_floor(console: Any, results: dict[str, Any]) -> None:
    floor = results["floor"]
    if floor:
        metric = results["metrics"][0]
        say(
            console,
            f"floor: always '{floor['label']}' (majority class of train) scores {metric} "
            f"{floor['metrics'][metric]['value']:.3f}",
        )


def say_cascades(console: Any, results: dict[str, Any]) -> None:
    """Each cascade: its threshold, the share it escalates and its primary metric."""
    metric = results["metrics"][0]
    for s in results["systems"]:
        c = s.get("cascade")
        if c:
            say(
                console,
                f"cascade {s['name']}: {c['confidence']} below {c['threshold']:.3f} goes to "
                f"{c['fallback']} ({c['validation']['escalated']:.1%} of validation items, "
                f"{c['test']['escalated']:.1%} of test items); {metric} "
                f"{s['metrics'][metric]['value']:.3f}",
            )


def say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text, markup=False, highlight=False)


def say_timing(console: Any, rounds: timing.Rounds) -> None:
    """Per system: median p50 latency and throughput over the rounds; then any busy round."""
    early = " (stopped early: eval.timing.max_minutes spent)" if rounds.stopped_early else ""
    lines = [f"timing: {rounds.done} of {rounds.requested} rounds in {rounds.seconds:.0f} s{early}"]
    for name in dict.fromkeys(r.name for r in rounds.records):
        records = rounds.of(name)
        p50 = timing.summary([r.p50 for r in records])
        speed = timing.summary([r.throughput for r in records])
        busy = [r.round for r in records if r.load.busy]
        note = f"; machine busy in round(s) {', '.join(map(str, busy))}" if busy else ""
        lines.append(
            f"  {name}: p50 {p50['median']:.1f} ms [{p50['low']:.1f}-{p50['high']:.1f}], "
            f"{speed['median']:.1f} items/s [{speed['low']:.1f}-{speed['high']:.1f}]{note}"
        )
    say(console, "\n".join(lines))


def say_judge(console: Any, results: dict[str, Any]) -> None:
    """The judge's win rate against each baseline, its sanity figure and consistency."""
    j = results.get("judge")
    if not j:
        return
    lines = [f"judge {j['judge']}:"]
    for p in j["pairs"]:
        rate = (
            "-"
            if p["win_rate"] is None
            else f"{p['win_rate']:.3f} [{p['low']:.3f}, {p['high']:.3f}]"
        )
        lines.append(
            f"  specialist vs {p['baseline']}: win rate {rate} ({p['wins']} wins, {p['ties']} "
            f"ties, {p['losses']} losses, {p['unparsable']} unparsable)"
        )
    s = j["sanity"]
    if s and s["pairs"]:
        verdict = "passed" if s["passed"] else f"FAILED: below {s['threshold']:.0%}"
        lines.append(
            f"  sanity: preferred the reference in {s['preferred']} of {s['pairs']} pairs "
            f"({s['rate']:.0%}, {verdict})"
        )
    if j["consistency"] is not None:
        lines.append(f"  position consistency {j['consistency']:.0%}")
    say(console, "\n".join(lines))
