"""Training and validation examples as token ids, for the trainer of each head.

For a causal LM, examples are encoded with the shared prompt format (`finetune.tasks.prompts.encode`)
with a completion mask, so the trainer sees exactly the tokens evaluation will score; TRL's
SFTTrainer turns the mask into labels (-100 on prompt tokens) and packs when asked. For an
encoder-decoder, an example is the same prompt as the encoder's input and the answer alone as
the decoder's labels. For a sequence classifier, an example is its text alone (`finetune.tasks.prompts.encode_text`, as
evaluation reads it) and the index of its label in `task.labels`; for a token classifier, its
words tagged in IOB2 with the first sub-word token of each labelled (`finetune.tasks.tagging`). The
validation split is
ordered longest first, so its batches carry little padding (validation loss is a mean over
fixed examples: their order only groups them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from finetune.data import load_split
from finetune.errors import FinetuneError
from finetune.recipe import Recipe
from finetune.tasks.prompts import PromptFormat, encode, encode_target, encode_text, target_text
from finetune.tasks.tagging import encode_tagged, word_tags, words

log = logging.getLogger(__name__)

WEIGHT = "weight"  # a decoder row's weight in the loss (`loss.weighted_nll`)
SOFT_LABELS = "soft_labels"  # a classifier row's target distribution over `task.labels`


@dataclass(frozen=True)
class EncodedSplit:
    dataset: Any  # datasets.Dataset: input_ids with completion_mask (causal LM) or labels
    examples: int  # the split's rows (a soft-target row's labels, one row per label, count once)
    tokens: int
    truncated: int
    typical_length: int = 0  # the 90th percentile of the examples' lengths, in tokens


def encode_split(
    recipe: Recipe, split: str, fmt: PromptFormat, tokenizer: Any
) -> EncodedSplit | None:
    """The split's examples as a tokenized Dataset; None when the split is empty."""
    rows = load_split(recipe, split)
    if not rows:
        return None
    columns: dict[str, list] = {"input_ids": [], "completion_mask": [], WEIGHT: []}
    truncated = 0
    for row in rows:
        for answer, weight in _answers(recipe, row):
            enc = encode(
                fmt,
                tokenizer,
                row["text"],
                answer,
                max_length=recipe.model.max_length,
                truncation=recipe.model.truncation,
            )
            columns["input_ids"].append(enc.input_ids)
            columns["completion_mask"].append(enc.completion_mask)
            columns[WEIGHT].append(weight)
            truncated += enc.truncated
    if not any("soft_targets" in row for row in rows):
        del columns[WEIGHT]
    return _as_split(recipe, split, columns, truncated)


def _answers(recipe: Recipe, row: dict) -> list[tuple[str, float]]:
    """The answers a decoder learns for a row, each with its weight: its one answer, or with a
    teacher's soft targets every label, weighted by the teacher's probability of it."""
    soft = row.get("soft_targets")
    if soft is None:
        return [(target_text(recipe.task.type, row), 1.0)]
    return [(label, soft[label]) for label in recipe.task.labels]


def encode_seq2seq_split(
    recipe: Recipe, split: str, fmt: PromptFormat, tokenizer: Any
) -> EncodedSplit | None:
    """The split's prompts as an encoder-decoder reads them, each with its answer as the
    decoder's labels (`prompts.encode_target`); None when the split is empty."""
    rows = load_split(recipe, split)
    if not rows:
        return None
    if any("soft_targets" in row for row in rows):
        raise FinetuneError(
            "data.teacher.targets: soft targets train classifier heads and decoders; an "
            "encoder-decoder learns the teacher's label itself: set targets: hard"
        )
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    truncated = 0
    for row in rows:
        prompt = encode(
            fmt,
            tokenizer,
            row["text"],
            None,
            max_length=recipe.model.max_length,
            truncation=recipe.model.truncation,
        )
        answer = target_text(recipe.task.type, row)
        columns["input_ids"].append(prompt.input_ids)
        columns["labels"].append(
            encode_target(tokenizer, answer, max_length=recipe.model.max_length)
        )
        truncated += prompt.truncated
    return _as_split(recipe, split, columns, truncated)


def encode_text_split(recipe: Recipe, split: str, tokenizer: Any) -> EncodedSplit | None:
    """The split's texts alone with their label indices, for a sequence classifier; None when empty."""
    rows = load_split(recipe, split)
    if not rows:
        return None
    encoded = [
        encode_text(
            tokenizer,
            row["text"],
            max_length=recipe.model.max_length,
            truncation=recipe.model.truncation,
        )
        for row in rows
    ]
    labels = list(recipe.task.labels)
    columns = {
        "input_ids": [e.input_ids for e in encoded],
        "labels": [labels.index(row["label"]) for row in rows],
    }
    if any("soft_targets" in row for row in rows):
        # Every row's target distribution: a teacher's, or its human label's (one-hot).
        columns[SOFT_LABELS] = [
            [row.get("soft_targets", {row["label"]: 1.0}).get(label, 0.0) for label in labels]
            for row in rows
        ]
    return _as_split(recipe, split, columns, sum(e.truncated for e in encoded))


def encode_tagged_split(
    recipe: Recipe, split: str, tokenizer: Any, labels: list[str]
) -> EncodedSplit | None:
    """The split's texts with a label per token (`tagging.encode_tagged`); None when empty."""

    rows = load_split(recipe, split)
    if not rows:
        return None
    label_ids = {label: i for i, label in enumerate(labels)}
    encoded = [
        encode_tagged(
            tokenizer,
            row["text"],
            word_tags(row["text"], row["entities"], words(row["text"])),
            label_ids,
            max_length=recipe.model.max_length,
            truncation=recipe.model.truncation,
        )
        for row in rows
    ]
    columns = {"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]}
    return _as_split(recipe, split, columns, sum(e.truncated for e in encoded))


def _as_split(recipe: Recipe, split: str, columns: dict[str, list], truncated: int) -> EncodedSplit:
    from datasets import Dataset

    count = len(columns["input_ids"])
    if truncated:
        log.warning(
            "%s: %d of %d examples were longer than model.max_length (%d tokens); their input text was cut at the %s",
            split,
            truncated,
            count,
            recipe.model.max_length,
            recipe.model.truncation,
        )
    lengths = sorted(map(len, columns["input_ids"]))
    typical = lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))]
    dataset = Dataset.from_dict(columns)
    if split == "validation":
        # Padded to the longest in each batch: similar lengths together cut a third of the work.
        order = sorted(range(count), key=lambda i: -len(columns["input_ids"][i]))
        dataset = dataset.select(order)
    # A row per label (soft targets) is a share of one example: its weights sum to 1.
    examples = round(sum(columns[WEIGHT])) if WEIGHT in columns else count
    return EncodedSplit(dataset, examples, sum(lengths), truncated, typical)
