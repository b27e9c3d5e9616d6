"""Which labels an instruction names: a leaf both the recipe's checks and the prompts read."""

from __future__ import annotations

import re
from typing import Any


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
