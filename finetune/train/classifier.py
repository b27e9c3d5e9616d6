"""The classifier objectives, trained on their cross-entropy with transformers' Trainer.

Sequence classification: an example is its text with the tokenizer's special tokens, cut to
`model.max_length` at the `model.truncation` end as evaluation cuts it (`prompts.encode_text`),
and the index of its label in `task.labels`, which is also the head's `id2label`. Token
classification: an example is the text's words with an IOB2 label on the first sub-word token
of each (`tagging.encode_tagged`); the outputs are `O` and the `B-`/`I-` tags of each entity
type: `task.labels` when the recipe names the types, else every type in the training and
validation splits, sorted. Batches are padded per batch; the validation loss is the same
cross-entropy on the validation split. With LoRA the adapters and the new head are trained
(`model.load_classifier_for_training`), with `full` every weight.
"""

from __future__ import annotations

from typing import Any

from finetune.data import PreparedData, load_split
from finetune.errors import FinetuneError
from finetune.models.heads import SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION
from finetune.recipe import Recipe
from finetune.tasks.prompts import text_format
from finetune.tasks.tagging import bio_labels, require_fast
from finetune.train.dataset import encode_tagged_split, encode_text_split
from finetune.train.objective import Splits, checked_splits, explained, seeded_trainer


class SequenceClassificationObjective:
    """The input text alone, the loss the head's cross-entropy over `task.labels`."""

    head = SEQUENCE_CLASSIFICATION

    def encode(self, recipe: Recipe, prepared: PreparedData, tokenizer: Any) -> Splits:
        padded(tokenizer, recipe)
        train = encode_text_split(recipe, "train", tokenizer)
        validation = encode_text_split(recipe, "validation", tokenizer)
        return checked_splits(
            recipe, prepared, text_format(recipe.task), train, validation, recipe.task.labels
        )

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def build_trainer(self, recipe, output_dir, source, tokenizer, splits, callbacks, fresh_start):
        from finetune.train.model import load_classifier_for_training

        try:
            model = load_classifier_for_training(
                recipe,
                source,
                tokenizer.pad_token_id,
                labels=splits.labels,
                head=self.head,
                typical_length=splits.train.typical_length,
            )
        except ValueError as exc:
            raise explained(exc) from exc
        collator = self.collator(tokenizer)
        return seeded_trainer(
            recipe, output_dir, model, tokenizer, splits, callbacks, fresh_start, collator
        )


class TokenClassificationObjective(SequenceClassificationObjective):
    """The text's words, the loss the head's cross-entropy over IOB2 tags at each word's first token."""

    head = TOKEN_CLASSIFICATION

    def encode(self, recipe: Recipe, prepared: PreparedData, tokenizer: Any) -> Splits:
        require_fast(padded(tokenizer, recipe), recipe.model.base)
        labels = bio_labels(tag_types(recipe))
        train = encode_tagged_split(recipe, "train", tokenizer, labels)
        validation = encode_tagged_split(recipe, "validation", tokenizer, labels)
        return checked_splits(recipe, prepared, text_format(recipe.task), train, validation, labels)

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)  # pads labels with -100


def tag_types(recipe: Recipe) -> list[str]:
    """The entity types the tagger learns: `task.labels`, else those in the train and
    validation splits (sorted); a type outside `task.labels` is refused by name."""
    found = {
        entity["type"]
        for split in ("train", "validation")
        for row in load_split(recipe, split)
        for entity in row["entities"]
    }
    if not recipe.task.labels:
        return sorted(found)
    unknown = sorted(found - set(recipe.task.labels))
    if unknown:
        raise FinetuneError(
            f"task.labels: the data has entity types {unknown} that task.labels "
            f"{list(recipe.task.labels)} does not list; add them, or leave task.labels empty "
            "to take every type in the data"
        )
    return list(recipe.task.labels)


def padded(tokenizer: Any, recipe: Recipe) -> Any:
    """The tokenizer with a padding token: a decoder's often has none, and then pads with its
    end-of-sequence token (it is never in a classifier's input, so padding stays recognizable)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise FinetuneError(
                f"model.base: the tokenizer of {recipe.model.base!r} has neither a padding nor an "
                "end-of-sequence token to pad batches with; use head: causal-lm or another base model"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
