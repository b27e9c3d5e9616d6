"""Task metrics by name: the registry the evaluator scores with and the recipe validator checks.

`METRICS[task_type][name](golds, preds, labels=None)` scores a whole test set and returns a
float in [0, 1]. Every metric is computed from per-item counts (`indexed_metric`), so a
bootstrap can rescore thousands of resamples without re-reading any text.

Conventions, each taken from a widely used reference implementation:

- classification `macro_f1`: unweighted mean of per-label F1 over `labels` (default: the
  sorted union of golds and preds), with scikit-learn's `zero_division=0`: a label with no true
  positive scores F1 = 0, including a label that never occurs at all. Pass the task's label set:
  with the default, a stray prediction such as "maybe" becomes a label with F1 = 0 and pulls
  the mean down, exactly as scikit-learn does.
- extraction: an entity is `{"text": str, "type": str}`, with `start`/`end` character offsets
  into the item's text where it has a place there. Entities with offsets match on exact span
  and type, as seqeval's default does on token spans; entities without match as multisets of
  (text, type) pairs after case folding and collapsing whitespace. A generated entity names
  no place, so `entities.locate` gives it one before scoring; text the input does not contain
  stays without offsets and matches nothing that has them. An encoder's predicted spans keep their own offsets. `micro_f1` is 2TP / (2TP + FP + FN) summed over all items; `macro_f1` is the mean, over the
  entity types that occur in golds or predictions, of per-type F1. With no entity anywhere both
  are 1.0 (nothing to find, nothing wrongly found), as `item_scores` scores an empty item.
  `labels` is accepted for uniformity and ignored.
- qa: `exact_match` and `token_f1` use SQuAD normalization (lowercase, drop punctuation, drop
  a/an/the, collapse whitespace); token F1 is 1.0 when both normalized answers are empty and
  0.0 when only one is (the SQuAD v2 script). `rouge_l` is the LCS F-measure (beta = 1) with
  `rouge_score`'s default tokenizer without stemming: lowercase, and every run of characters
  outside [a-z0-9] separates tokens (so non-ASCII letters are dropped, as there); 0.0 when
  either side has no tokens. `labels` is ignored.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from finetune.tasks.entities import Entity, entity_key

_Table = dict[str, np.ndarray]  # per-item rows of counts or scores, one array per column
_Aggregate = Callable[[_Table, int], float]  # (column sums over the chosen items, item count)


class Metric(Protocol):
    def __call__(
        self, golds: Sequence[Any], preds: Sequence[Any], labels: Sequence[str] | None = None
    ) -> float: ...


# ---------------------------------------------------------------------------- classification


def _label_list(golds: Sequence[str], preds: Sequence[str], labels: Sequence[str] | None):
    if labels is None:
        return sorted(set(golds) | set(preds))
    return list(dict.fromkeys(labels))


def _classification_table(golds, preds, labels) -> _Table:
    index = {label: k for k, label in enumerate(_label_list(golds, preds, labels))}
    gold = np.zeros((len(golds), len(index)))
    pred = np.zeros_like(gold)
    for row, (g, p) in enumerate(zip(golds, preds, strict=True)):
        if g in index:
            gold[row, index[g]] = 1
        if p in index:
            pred[row, index[p]] = 1
    tp = gold * pred
    correct = np.array([g == p for g, p in zip(golds, preds, strict=True)], dtype=float)
    return {"correct": correct, "tp": tp, "fp": pred - tp, "fn": gold - tp}


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2TP / (2TP + FP + FN), which is 2PR / (P + R); 0 where there is nothing to count."""
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(np.shape(tp)), where=denominator > 0)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(
        numerator, denominator, out=np.zeros(np.shape(numerator)), where=denominator > 0
    )


def _accuracy(totals: _Table, n: int) -> float:
    return float(totals["correct"] / n)


def _label_macro_f1(totals: _Table, n: int) -> float:
    if totals["tp"].size == 0:
        raise ValueError("macro_f1 needs at least one label; labels is empty")
    return float(_f1(totals["tp"], totals["fp"], totals["fn"]).mean())


# -------------------------------------------------------------------------------- extraction


def _entity_counts(entities: Sequence[Entity]) -> Counter[tuple]:
    return Counter(entity_key(e) for e in entities)


def _extraction_table(golds, preds, labels) -> _Table:
    gold_sets = [_entity_counts(item) for item in golds]
    pred_sets = [_entity_counts(item) for item in preds]
    types = sorted({key[-1] for counts in gold_sets + pred_sets for key in counts})
    column = {kind: k for k, kind in enumerate(types)}
    tp, fp, fn = (np.zeros((len(golds), len(types))) for _ in range(3))
    for row, (gold, pred) in enumerate(zip(gold_sets, pred_sets, strict=True)):
        for key, count in gold.items():
            matched = min(count, pred[key])
            tp[row, column[key[-1]]] += matched
            fn[row, column[key[-1]]] += count - matched
        for key, count in pred.items():
            fp[row, column[key[-1]]] += count - min(count, gold[key])
    return {"tp": tp, "fp": fp, "fn": fn}


def _entity_micro_f1(totals: _Table, n: int) -> float:
    tp, fp, fn = (float(totals[k].sum()) for k in ("tp", "fp", "fn"))
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _entity_macro_f1(totals: _Table, n: int) -> float:
    seen = (totals["tp"] + totals["fp"] + totals["fn"]) > 0
    if not seen.any():
        return 1.0
    return float(_f1(totals["tp"], totals["fp"], totals["fn"])[seen].mean())


# -------------------------------------------------------------------------------------- qa

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def _squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _exact_match_item(gold: str, pred: str) -> float:
    return float(_squad_normalize(gold) == _squad_normalize(pred))


def _token_f1_item(gold: str, pred: str) -> float:
    gold_tokens, pred_tokens = _squad_normalize(gold).split(), _squad_normalize(pred).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    return _harmonic(same / len(pred_tokens), same / len(gold_tokens))


def _harmonic(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_l_item(gold: str, pred: str) -> float:
    gold_tokens = _NON_ALPHANUMERIC.sub(" ", gold.lower()).split()
    pred_tokens = _NON_ALPHANUMERIC.sub(" ", pred.lower()).split()
    if not gold_tokens or not pred_tokens:
        return 0.0
    lcs = _lcs_length(gold_tokens, pred_tokens)
    return _harmonic(lcs / len(pred_tokens), lcs / len(gold_tokens))


_QA_ITEM: dict[str, Callable[[str, str], float]] = {
    "exact_match": _exact_match_item,
    "token_f1": _token_f1_item,
    "rouge_l": _rouge_l_item,
}


def _qa_column(name: str, golds: Sequence[str], preds: Sequence[str]) -> np.ndarray:
    return np.array([_QA_ITEM[name](g, p) for g, p in zip(golds, preds, strict=True)], dtype=float)


def _mean_of(column: str) -> _Aggregate:
    return lambda totals, n: float(totals[column] / n)


# -------------------------------------------------------------------------------- registry

_AGGREGATES: dict[str, dict[str, _Aggregate]] = {
    "classification": {"accuracy": _accuracy, "macro_f1": _label_macro_f1},
    "extraction": {"micro_f1": _entity_micro_f1, "macro_f1": _entity_macro_f1},
    "qa": {name: _mean_of(name) for name in _QA_ITEM},
}

DEFAULT_METRICS: dict[str, list[str]] = {
    "classification": ["accuracy", "macro_f1"],
    "extraction": ["micro_f1", "macro_f1"],
    "qa": ["exact_match", "token_f1", "rouge_l"],
}


def _table(task_type: str, name: str, golds, preds, labels) -> _Table:
    if len(golds) != len(preds):
        raise ValueError(
            f"golds and preds must pair up item by item; found {len(golds)} golds and "
            f"{len(preds)} preds"
        )
    if task_type == "classification":
        return _classification_table(golds, preds, labels)
    if task_type == "extraction":
        return _extraction_table(golds, preds, labels)
    return {name: _qa_column(name, golds, preds)}


def _aggregate(task_type: str, name: str) -> _Aggregate:
    message = unknown_metric_message(task_type, name)
    if message is not None:
        raise ValueError(message)
    return _AGGREGATES[task_type][name]


def _flatten(table: _Table, n: int) -> tuple[np.ndarray, dict[str, tuple[slice, tuple]]]:
    """All columns side by side in one (items x columns) matrix: one product sums them all,
    several times faster than indexing each column's rows on every resample."""
    layout, blocks, start = {}, [], 0
    for key, rows in table.items():
        width = int(np.prod(rows.shape[1:]))
        layout[key] = (slice(start, start + width), rows.shape[1:])
        blocks.append(rows.reshape(n, width))
        start += width
    return np.column_stack(blocks), layout


def indexed_metric(
    task_type: str,
    name: str,
    golds: Sequence[Any],
    preds: Sequence[Any],
    labels: Sequence[str] | None = None,
) -> Callable[[np.ndarray], float]:
    """`f(idx)`: the metric on the items at `idx` (repeats allowed), for bootstrap resampling.

    Per-item counts are computed once, so each call only sums rows. `f(idx)` equals `compute`
    on `[golds[i] for i in idx]` and `[preds[i] for i in idx]`, except that the classification
    label set is fixed from all items (every resample averages over the same labels).
    """
    aggregate = _aggregate(task_type, name)
    n = len(golds)
    matrix, layout = _flatten(_table(task_type, name, golds, preds, labels), n)

    def statistic(idx: np.ndarray) -> float:
        idx = np.asarray(idx, dtype=np.intp)
        if idx.size == 0:
            raise ValueError(f"cannot compute {name} on no items")
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"item indices must lie in [0, {n}); found {idx.min()}..{idx.max()}")
        # column sums over the resample = (how often each item was drawn) @ per-item rows
        sums = np.bincount(idx, minlength=n) @ matrix
        totals = {key: sums[columns].reshape(shape) for key, (columns, shape) in layout.items()}
        return aggregate(totals, idx.size)

    return statistic


def compute(
    task_type: str,
    name: str,
    golds: Sequence[Any],
    preds: Sequence[Any],
    labels: Sequence[str] | None = None,
) -> float:
    """Metric `name` of a `task_type` task on paired golds and predictions, in [0, 1]."""
    return indexed_metric(task_type, name, golds, preds, labels)(np.arange(len(golds)))


def _metric(task_type: str, name: str) -> Metric:
    def metric(golds, preds, labels=None) -> float:
        return compute(task_type, name, golds, preds, labels)

    metric.__name__ = f"{task_type}_{name}"
    metric.__doc__ = f"{name} of a {task_type} task: `compute({task_type!r}, {name!r}, ...)`."
    return metric


METRICS: dict[str, dict[str, Metric]] = {
    task_type: {name: _metric(task_type, name) for name in names}
    for task_type, names in _AGGREGATES.items()
}


def metric_names(task_type: str) -> list[str]:
    if task_type not in METRICS:
        raise ValueError(f"unknown task type '{task_type}'; valid: {', '.join(METRICS)}")
    return list(METRICS[task_type])


def unknown_metric_message(task_type: str, name: str) -> str | None:
    """None when `name` is a metric of `task_type`, else what is wrong and what is valid."""
    if task_type not in METRICS:
        return f"unknown task type '{task_type}'; valid: {', '.join(METRICS)}"
    valid = metric_names(task_type)
    if name in valid:
        return None
    message = f"unknown metric '{name}' for a {task_type} task; valid: {', '.join(valid)}"
    close = difflib.get_close_matches(name, valid, n=1)
    return f"{message} (did you mean {close[0]}?)" if close else message


# ---------------------------------------------------------------------- per-item and tables


def item_scores(task_type: str, golds: Sequence[Any], preds: Sequence[Any]) -> list[float]:
    """Per-item quality for paired tests: classification 1.0/0.0 correctness, qa token F1,
    extraction entity F1 of the item (1.0 when gold and prediction are both empty)."""
    metric_names(task_type)  # raises on an unknown task type
    if task_type == "qa":
        return _table("qa", "token_f1", golds, preds, None)["token_f1"].tolist()
    table = _table(task_type, "", golds, preds, None)
    if task_type == "classification":
        return table["correct"].tolist()
    tp, fp, fn = (table[k].sum(axis=1) for k in ("tp", "fp", "fn"))
    empty = tp + fp + fn == 0
    return np.where(empty, 1.0, _f1(tp, fp, fn)).tolist()


def per_class(
    golds: Sequence[str], preds: Sequence[str], labels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Precision, recall, F1 (`zero_division=0`) and gold support of each label, in order."""
    table = _table("classification", "", golds, preds, labels)
    tp, fp, fn = (table[k].sum(axis=0) for k in ("tp", "fp", "fn"))
    precision, recall, f1 = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _f1(tp, fp, fn)
    return [
        {
            "label": label,
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(tp[k] + fn[k]),
        }
        for k, label in enumerate(_label_list(golds, preds, labels))
    ]


def confusion_matrix(
    golds: Sequence[str], preds: Sequence[str], labels: Sequence[str]
) -> list[list[int]]:
    """Counts with rows = gold label and columns = predicted label, both in `labels` order.

    Items whose prediction (or gold) is not in `labels` have no cell and are left out, so a
    row can sum to less than that label's support when the model wrote something off-list.
    """
    if len(golds) != len(preds):
        raise ValueError(f"found {len(golds)} golds and {len(preds)} preds; they must pair up")
    index = {label: k for k, label in enumerate(dict.fromkeys(labels))}
    matrix = [[0] * len(index) for _ in index]
    for gold, pred in zip(golds, preds, strict=True):
        if gold in index and pred in index:
            matrix[index[gold]][index[pred]] += 1
    return matrix
