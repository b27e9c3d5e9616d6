"""A pair's statistics from its items' outcomes: counts, win rate with an interval, a sign
test, position consistency and length bias.

- Win rate: wins plus half the ties over the items judged (unparsable ones left out and
  counted), with a percentile bootstrap interval over items (`stats.bootstrap_ci`): the items
  are resampled, each carrying both answers and both verdicts, so the interval is paired.
- Sign test: exact, two-sided, on the decisive items (`stats.sign_test`).
- Position consistency: of the items whose two verdicts both parsed, the share on which the
  swapped order gave the same verdict; `first_position`: the share of decisive verdicts that
  picked the answer shown first, 0.5 for a judge without position bias.
- Length: mean words of each side's answers, and of the decisive items whose answers differ
  in length, the share won by the longer answer.
- Length-controlled win rate (optional): a logistic regression of the outcome (a tie is half a
  win and half a loss) on tanh(word difference / its standard deviation), read at no
  difference: AlpacaEval's length control without its per-instruction term, which needs many
  systems on the same instructions. Its interval refits the regression on each resample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.deps import require
from finetune.judge.games import DRAW, LOSS, UNPARSABLE, WIN
from finetune.stats import bootstrap_ci, sign_test

SCORE = {WIN: 1.0, DRAW: 0.5, LOSS: 0.0}


def words(text: str) -> int:
    return len(str(text).split())


def pair_scores(
    outcomes: list[str],
    verdicts: list[tuple[str | None, str | None]],
    answers: list[tuple[str, str]],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """One pair's figures, from the first answer's side. `verdicts`: each item's two parsed
    verdicts (straight, swapped); `answers`: (first, second); `settings`: samples, confidence,
    seed and length_controlled."""
    judged = [i for i, o in enumerate(outcomes) if o != UNPARSABLE]
    counts = {k: outcomes.count(k) for k in (WIN, DRAW, LOSS, UNPARSABLE)}
    scores = np.array([SCORE[outcomes[i]] for i in judged])
    delta = np.array([words(answers[i][0]) - words(answers[i][1]) for i in judged], dtype=float)
    entry = {
        "items": len(outcomes),
        "judged": len(judged),
        "wins": counts[WIN],
        "ties": counts[DRAW],
        "losses": counts[LOSS],
        "unparsable": counts[UNPARSABLE],
        "sign_test_p": sign_test(counts[WIN], counts[LOSS]),
        **_positions(verdicts),
        **_win_rate(scores, settings),
        "length": _length(answers, scores, delta),
        "length_controlled": None,
    }
    if settings.get("length_controlled") and len(judged):
        entry["length_controlled"] = _length_controlled(scores, delta, settings)
    return entry


def _win_rate(scores: np.ndarray, settings: dict[str, Any]) -> dict[str, Any]:
    if not len(scores):
        return {"win_rate": None, "low": None, "high": None}
    low, high = bootstrap_ci(
        lambda idx: float(scores[idx].mean()),
        len(scores),
        samples=settings["samples"],
        confidence=settings["confidence"],
        seed=settings["seed"],
    )
    return {"win_rate": float(scores.mean()), "low": low, "high": high}


def _positions(verdicts: list[tuple[str | None, str | None]]) -> dict[str, Any]:
    """Position consistency over items with both verdicts parsed, and the share of decisive
    verdicts that picked the answer shown first (A)."""
    both = [(one, two) for one, two in verdicts if one is not None and two is not None]
    # The same verdict on both orders: A then B (the first answer twice), B then A, or C twice.
    same = [one == {"A": "B", "B": "A", "C": "C"}[two] for one, two in both]
    decisive = [v for pair in verdicts for v in pair if v in ("A", "B")]
    return {
        "both_parsed": len(same),
        "inconsistent": len(same) - sum(same),
        "consistency": sum(same) / len(same) if same else None,
        "first_position": decisive.count("A") / len(decisive) if decisive else None,
    }


def _length(answers: list[tuple[str, str]], scores: np.ndarray, delta: np.ndarray) -> dict:
    """Mean words of each side, and whether the decisive items went to the longer answer."""
    decisive = (scores != 0.5) & (delta != 0)
    longer_won = ((scores == 1.0) == (delta > 0))[decisive]
    return {
        "first_words": float(np.mean([words(a) for a, _ in answers])) if answers else None,
        "second_words": float(np.mean([words(b) for _, b in answers])) if answers else None,
        "decisive_with_length_difference": int(decisive.sum()),
        "longer_won": float(longer_won.mean()) if longer_won.size else None,
    }


def _length_controlled(scores: np.ndarray, delta: np.ndarray, settings: dict) -> dict[str, Any]:
    spread = float(delta.std())
    x = np.tanh(delta / spread) if spread > 0 else np.zeros_like(delta)
    low, high = bootstrap_ci(
        lambda idx: at_equal_length(scores[idx], x[idx]),
        len(scores),
        samples=settings["samples"],
        confidence=settings["confidence"],
        seed=settings["seed"],
    )
    return {"win_rate": at_equal_length(scores, x), "low": low, "high": high}


def at_equal_length(scores: np.ndarray, x: np.ndarray) -> float:
    """The fitted win probability at x = 0 of a logistic regression of the outcomes on x (L2,
    C = 1, on the slope only): sigmoid of the intercept."""
    require("sklearn", package="scikit-learn", needed_for="eval.judge.length_controlled")
    from sklearn.linear_model import LogisticRegression

    # A tie is half a win and half a loss: each item is a win row and a loss row, weighted.
    features = np.concatenate([x, x]).reshape(-1, 1)
    targets = np.concatenate([np.ones_like(scores), np.zeros_like(scores)])
    weights = np.concatenate([scores, 1 - scores])
    if weights[: len(scores)].sum() == 0 or weights[len(scores) :].sum() == 0:
        return float(scores.mean())  # all wins or all losses: nothing for length to explain
    keep = weights > 0
    model = LogisticRegression(C=1.0)
    model.fit(features[keep], targets[keep], sample_weight=weights[keep])
    return float(1 / (1 + np.exp(-model.intercept_[0])))
