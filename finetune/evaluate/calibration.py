"""How far a system's label scores can be trusted as probabilities.

- `label_scores`: each item's per-label log-likelihoods as the system stored them, in the
  recipe's label order (a label it did not score is -inf, an item it failed is all NaN).
- `probabilities`: those scores normalized over the labels, divided by a temperature first.
- `fit_temperature`: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
  Networks"): the one scalar T that minimizes the negative log-likelihood of the gold labels
  on held-out items. It never changes which label wins.
- `reliability`: equal-width confidence bins, each with its items' mean confidence and
  accuracy, and the expected calibration error (the bins' |accuracy - confidence| weighted by
  their share of items).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 10
# Temperatures searched, as log T: from about 1/20 (sharpen) to about 20 (soften).
LOG_T_BOUNDS = (-3.0, 3.0)


def label_scores(details: list[dict[str, Any]], labels: list[str]) -> np.ndarray | None:
    """An (items, labels) matrix of the stored log-likelihoods; None when the system stored
    none (it answers by generating text)."""
    if not any("label_logprobs" in d for d in details):
        return None
    out = np.full((len(details), len(labels)), np.nan)
    for i, d in enumerate(details):
        scores = d.get("label_logprobs")
        if scores:
            out[i] = [scores.get(label, -np.inf) for label in labels]
    return out


def probabilities(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of `scores / temperature` over the labels, row by row; a row with no finite
    score (an item the system failed) is all NaN."""
    out = np.full(scores.shape, np.nan)
    ok = np.isfinite(scores).any(axis=1)
    z = scores[ok] / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))  # -inf scores give 0
    out[ok] = e / e.sum(axis=1, keepdims=True)
    return out


def nll(scores: np.ndarray, gold: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the gold labels (indices) over the scored items."""
    p = probabilities(scores, temperature)
    ok = ~np.isnan(p).any(axis=1)
    picked = p[ok, gold[ok]]
    return float(-np.mean(np.log(np.clip(picked, 1e-300, None))))


def fit_temperature(scores: np.ndarray, gold: np.ndarray) -> float:
    """The temperature that minimizes `nll` on these items (1.0 when no item is scored)."""
    from scipy.optimize import minimize_scalar

    if np.isnan(scores).all():
        return 1.0
    found = minimize_scalar(
        lambda log_t: nll(scores, gold, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(found.x))


def top_confidence(p: np.ndarray) -> np.ndarray:
    """The top label's probability; 0 for an item the system failed."""
    return np.where(np.isnan(p), 0.0, p).max(axis=1)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Equal-width bins over [0, 1] (the last one closed): items, mean confidence and accuracy
    of each non-empty bin, and the expected calibration error over all of them."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=False), 0, bins - 1)
    rows, ece, n = [], 0.0, len(confidence)
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
        ece += mask.sum() / n * abs(acc - conf)
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "items": int(mask.sum()),
                "confidence": conf,
                "accuracy": acc,
            }
        )
    return {"ece": float(ece), "bins": rows}
