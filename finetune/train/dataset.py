"""Training and validation examples as token ids with a completion mask, for TRL's SFTTrainer.

Examples are encoded here with the shared prompt format (`finetune.prompts.encode`), so the
trainer sees exactly the tokens evaluation will score; SFTTrainer turns the completion
mask into labels (-100 on prompt tokens) and packs when asked. The validation split is
ordered longest first, so its batches carry little padding (validation loss is a mean over
fixed examples: their order only groups them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from finetune.data import load_split
from finetune.prompts import PromptFormat, encode, target_text
from finetune.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedSplit:
    dataset: Any  # datasets.Dataset with input_ids and completion_mask
    examples: int
    tokens: int
    truncated: int
    typical_length: int = 0  # the 90th percentile of the examples' lengths, in tokens


def encode_split(
    recipe: Recipe, split: str, fmt: PromptFormat, tokenizer: Any
) -> EncodedSplit | None:
    """The split's examples as a tokenized Dataset; None when the split is empty."""
    from datasets import Dataset

    rows = load_split(recipe, split)
    if not rows:
        return None
    columns: dict[str, list] = {"input_ids": [], "completion_mask": []}
    truncated = 0
    for row in rows:
        enc = encode(
            fmt,
            tokenizer,
            row["text"],
            target_text(recipe.task.type, row),
            max_length=recipe.model.max_length,
            truncation=recipe.model.truncation,
        )
        columns["input_ids"].append(enc.input_ids)
        columns["completion_mask"].append(enc.completion_mask)
        truncated += enc.truncated
    if truncated:
        log.warning(
            "%s: %d of %d examples were longer than model.max_length (%d tokens); their input text was cut at the %s",
            split,
            truncated,
            len(rows),
            recipe.model.max_length,
            recipe.model.truncation,
        )
    lengths = sorted(map(len, columns["input_ids"]))
    typical = lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))]
    dataset = Dataset.from_dict(columns)
    if split == "validation":
        # Padded to the longest in each batch: similar lengths together cut a third of the work.
        order = sorted(range(len(rows)), key=lambda i: -len(columns["input_ids"][i]))
        dataset = dataset.select(order)
    return EncodedSplit(dataset, len(rows), sum(lengths), truncated, typical)
