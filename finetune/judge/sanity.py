"""The judge's sanity check: does it prefer a reference answer to a corrupted one?

On the test items, each reference answer is set against a corruption of it, in both orders and
without the reference in the prompt (it is one of the answers): `other_reference`, another
item's reference (the items in a seeded cycle, each taking the next one's); `first_sentence`,
the reference cut after its first sentence (items whose reference is one sentence are skipped).
A pair counts as passed only when the judge prefers the reference in both orders, so a judge
that always answers A passes none. A usable judge passes at least `eval.judge.min_sanity`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from finetune.judge.games import UNPARSABLE, WIN, Game, both_orders, outcome, parse_verdict
from finetune.recipe import Recipe

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def corrupted(corruption: str, references: list[str], seed: int) -> list[str | None]:
    """Each item's corrupted reference, or None where the corruption leaves it as it is."""
    if corruption == "first_sentence":
        cut = [_SENTENCE_END.split(r.strip(), maxsplit=1)[0] for r in references]
        return [c if c != r.strip() else None for c, r in zip(cut, references, strict=True)]
    n = len(references)
    if n < 2:
        return [None] * n
    cycle = np.random.default_rng(seed).permutation(n)
    after = {int(cycle[k]): int(cycle[(k + 1) % n]) for k in range(n)}
    other = [references[after[i]] for i in range(n)]
    return [o if o.strip() != r.strip() else None for o, r in zip(other, references, strict=True)]


def sanity_games(recipe: Recipe, items: list[dict], references: list[str]) -> list[Game]:
    """Every sanity pair's two games: the reference first, then swapped."""
    judge, games = recipe.eval.judge, []
    for corruption in judge.sanity:
        bad = corrupted(corruption, references, recipe.seed)
        for item, good, worse in zip(items, references, bad, strict=True):
            if worse is not None:
                template, question = judge.prompt_without_reference, item["text"]
                games += both_orders(
                    item["id"], corruption, template, question, (good, worse), None
                )
    return games


def sanity_entry(recipe: Recipe, games: list[Game], reply: Any) -> dict[str, Any] | None:
    """The share of pairs in which the judge preferred the reference in both orders, overall
    and by corruption, against `eval.judge.min_sanity`; None without a check."""
    if not recipe.eval.judge.sanity:
        return None
    by: dict[str, dict[str, int]] = {}
    for straight, swapped in zip(games[::2], games[1::2], strict=True):
        seen = outcome(parse_verdict(reply(straight)), parse_verdict(reply(swapped)))
        counts = by.setdefault(straight.pair, {"pairs": 0, "preferred": 0, "unparsable": 0})
        counts["pairs"] += 1
        counts["preferred"] += seen == WIN
        counts["unparsable"] += seen == UNPARSABLE
    pairs = sum(c["pairs"] for c in by.values())
    preferred = sum(c["preferred"] for c in by.values())
    rate = preferred / pairs if pairs else None
    threshold = recipe.eval.judge.min_sanity
    return {
        "pairs": pairs,
        "preferred": preferred,
        "unparsable": sum(c["unparsable"] for c in by.values()),
        "rate": rate,
        "threshold": threshold,
        "passed": rate is not None and rate >= threshold,
        "by_corruption": {
            name: {**c, "rate": c["preferred"] / c["pairs"] if c["pairs"] else None}
            for name, c in by.items()
        },
    }
