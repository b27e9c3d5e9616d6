"""The specialist's answers judged against each baseline's, on the evaluation's test items.

`judge_answers` builds every game (each pair of answers in both orders, then the sanity
check's), has the judge reply to those not replied to yet (`ask.replies`), and returns the
results' `judge` section with one row per item and pair for `judgments.jsonl`.
"""

from __future__ import annotations

from typing import Any

from finetune.judge.ask import Replies, replies
from finetune.judge.games import Game, both_orders, outcome, parse_verdict
from finetune.judge.sanity import sanity_entry, sanity_games
from finetune.judge.scores import pair_scores
from finetune.recipe import Recipe

SPECIALIST = "specialist"


def judged_against(recipe: Recipe) -> list[str]:
    """The baselines the specialist is judged against: `eval.judge.against`, else all."""
    return list(recipe.eval.judge.against) or [b.name for b in recipe.eval.baselines]


def judge_answers(
    recipe: Recipe,
    run_dir: Any,
    items: list[dict],
    answers: dict[str, list[str]],
    console: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the results' `judge` section, a row per item and pair). `answers`: each system's
    answers to `items` by name, the specialist's under `specialist`."""
    references = [item["answer"] for item in items]
    pairs = {
        name: _pair_games(recipe, items, answers, name, references)
        for name in judged_against(recipe)
    }
    sanity = sanity_games(recipe, items, references)
    every = [g for games in pairs.values() for g in games] + sanity
    got = replies(recipe, run_dir, every, console)
    entries, rows = [], []
    for name, games in pairs.items():
        entry, item_rows = _pair_entry(recipe, name, games, answers, got)
        entries.append(entry)
        rows += item_rows
    kept = [got.by_key.get(key, {}) for key in {g.key for g in every}]
    section = {
        "judge": recipe.eval.judge.system.name,
        "reference_guided": _reference_guided(recipe, references),
        "pairs": entries,
        "sanity": sanity_entry(recipe, sanity, got.reply),
        "consistency": _overall_consistency(entries),
        "games": len(kept),  # prompts: a pair of equal answers is one prompt in both orders
        "asked": got.asked,  # of them, sent to the judge by this evaluation
        "failed": sum("failed" in entry for entry in kept),
        "truncated": sum(bool(entry.get("truncated")) for entry in kept),
        "cost": judging_cost(recipe, every, got),
        "replies": str(got.path),
    }
    return section, rows


def _reference_guided(recipe: Recipe, references: list[str]) -> bool:
    return recipe.eval.judge.reference == "auto" and any(r.strip() for r in references)


def _pair_games(recipe, items, answers, name, references) -> list[Game]:
    """The specialist's answer (first) against the baseline's, on every item, both orders."""
    judge, games = recipe.eval.judge, []
    for i, item in enumerate(items):
        reference = references[i] if judge.reference == "auto" and references[i].strip() else None
        template = judge.prompt if reference is not None else judge.prompt_without_reference
        pair = (answers[SPECIALIST][i], answers[name][i])
        games += both_orders(item["id"], name, template, item["text"], pair, reference)
    return games


def _pair_entry(recipe, name, games, answers, got: Replies) -> tuple[dict, list[dict]]:
    straight, swapped = games[::2], games[1::2]
    verdicts = [
        (parse_verdict(got.reply(a)), parse_verdict(got.reply(b)))
        for a, b in zip(straight, swapped, strict=True)
    ]
    outcomes = [outcome(a, b) for a, b in verdicts]
    pairs = list(zip(answers[SPECIALIST], answers[name], strict=True))
    ev = recipe.eval
    settings = {
        "samples": ev.bootstrap_samples,
        "confidence": ev.confidence,
        "seed": recipe.seed,
        "length_controlled": ev.judge.length_controlled,
    }
    entry = {"baseline": name, **pair_scores(outcomes, verdicts, pairs, settings)}
    rows = [
        {
            "id": game.item,
            "against": name,
            "outcome": result,
            "specialist_first": got.reply(game),
            "baseline_first": got.reply(other),
        }
        for game, other, result in zip(straight, swapped, outcomes, strict=True)
    ]
    return entry, rows


def _overall_consistency(entries: list[dict[str, Any]]) -> float | None:
    """Position consistency over every pair's items with both verdicts parsed."""
    both = sum(e["both_parsed"] for e in entries)
    return sum(e["both_parsed"] - e["inconsistent"] for e in entries) / both if both else None


def judging_cost(recipe: Recipe, games: list[Game], got: Replies) -> dict[str, Any]:
    """What the judge's replies to these games cost: by its token prices where `eval.prices`
    names it, else by the machine's time."""
    prices, name = recipe.eval.prices, recipe.eval.judge.system.name
    entries = [got.by_key[k] for k in {g.key for g in games} if k in got.by_key]
    seconds = sum(e.get("seconds", 0.0) for e in entries)
    tokens = [sum(e.get(k, 0) for e in entries) for k in ("input_tokens", "output_tokens")]
    priced = prices.token_prices(name)
    if priced is not None:
        usd = (tokens[0] * priced[0] + tokens[1] * priced[1]) / 1e6
        basis = f"token prices of {name}"
    else:
        usd = seconds * prices.machine_per_hour / 3600
        basis = f"machine time at ${prices.machine_per_hour:g}/h"
    return {
        "usd": usd,
        "basis": basis,
        "seconds": seconds,
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
    }
