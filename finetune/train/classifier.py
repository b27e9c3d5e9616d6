"""The sequence-classification objective: a classification head over the input text alone,
trained on its cross-entropy with transformers' Trainer.

An example is its text with the tokenizer's special tokens, cut to `model.max_length` at the
`model.truncation` end as evaluation cuts it (`prompts.encode_text`), and the index of its label
in `task.labels`, which is also the head's `id2label`. Batches are padded per batch; the
validation loss is the same cross-entropy on the validation split. With LoRA the adapters and
the new head are trained (`model.load_classifier_for_training`), with `full` every weight.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from finetune.data import PreparedData
from finetune.errors import FinetuneError
from finetune.heads import SEQUENCE_CLASSIFICATION
from finetune.prompts import text_format
from finetune.recipe import Recipe
from finetune.train.dataset import encode_text_split
from finetune.train.objective import Splits, checked_splits, common_arguments, explained
from finetune.train.sampler import SeededSampling


class ClassifierTrainer(SeededSampling, Trainer):
    """transformers' Trainer, with length-grouped batches in an order fixed by the seed."""


class SequenceClassificationObjective:
    """The input text alone, the loss the head's cross-entropy over `task.labels`."""

    head = SEQUENCE_CLASSIFICATION

    def encode(self, recipe: Recipe, prepared: PreparedData, tokenizer: Any) -> Splits:
        padded(tokenizer, recipe)
        train = encode_text_split(recipe, "train", tokenizer)
        validation = encode_text_split(recipe, "validation", tokenizer)
        return checked_splits(recipe, prepared, text_format(recipe.task), train, validation)

    def build_trainer(self, recipe, output_dir, source, tokenizer, splits, callbacks, fresh_start):
        from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

        from finetune.train.model import load_classifier_for_training

        has_eval = splits.validation is not None
        args = common_arguments(recipe, output_dir, has_eval=has_eval, eval_on_start=fresh_start)
        try:
            model = load_classifier_for_training(
                recipe, source, tokenizer.pad_token_id, typical_length=splits.train.typical_length
            )
        except ValueError as exc:
            raise explained(exc) from exc
        trainer = ClassifierTrainer(
            model=model,
            args=TrainingArguments(**args),
            train_dataset=splits.train.dataset,
            eval_dataset=splits.validation.dataset if has_eval else None,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # our progress display replaces its dict dumps
        return trainer


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
