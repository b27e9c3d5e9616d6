"""Labels in text: which labels an instruction names (read by the recipe's checks and the
prompts), which label a generated answer names, and the majority label of a set of rows."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

_EDGES = string.whitespace + string.punctuation + "“”‘’«»"


def unnamed_labels(task: Any) -> list[str]:
    """The labels a classification task's instruction does not name, as whole words in any case:
    a model prompted with it alone is never told it may answer them."""
    if task.type != "classification":
        return []
    return [
        label
        for label in task.labels
        if not re.search(rf"(?<!\w){re.escape(label)}(?!\w)", task.instruction, re.IGNORECASE)
    ]


def normalized(text: str) -> str:
    """Case folded, with surrounding whitespace and punctuation removed."""
    return text.strip(_EDGES).casefold()


def label_of(answer: str, labels: Sequence[str]) -> str | None:
    """The label a generated answer names exactly after normalization; None: invalid."""
    wanted = normalized(answer)
    return next((label for label in labels if normalized(label) == wanted), None)


def majority_label(rows: list[dict]) -> tuple[str, float]:
    """The most common training label (ties: the first in sorted order) and its share of rows."""
    counts = Counter(r["label"] for r in rows)
    label = min(counts, key=lambda x: (-counts[x], x))
    return label, counts[label] / len(rows)
