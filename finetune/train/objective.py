"""What each head learns from and which Trainer teaches it: the interface every objective
implements, and what they share; one module per objective, picked by head in `trainer.py`.

`train()` (trainer.py) runs one flow for every head: data, run directory, checkpoints and
resume, tracking, callbacks, outputs and summary. What differs sits behind `Objective`: how
examples become tokens (`encode`) and which Trainer trains which model (`build_trainer`).
`CausalLMObjective` (causal_lm.py) is supervised fine-tuning on prompt + answer with TRL's
SFTTrainer; `Seq2SeqObjective` (seq2seq.py) an encoder-decoder that reads the prompt and writes the answer;
`SequenceClassificationObjective` and `TokenClassificationObjective` (classifier.py) a head
that classifies the text, or tags its words; these three with transformers' Trainer. All take
the same training arguments (`common_arguments`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from finetune.data import PreparedData
from finetune.errors import FinetuneError
from finetune.hardware import has_cuda, use_bf16_autocast
from finetune.models import ModelSource
from finetune.recipe import Recipe
from finetune.tasks.prompts import PromptFormat, prompt_format
from finetune.train.dataset import SOFT_LABELS, EncodedSplit
from finetune.train.distributed import world_size


@dataclass(frozen=True)
class Splits:
    """The run's input format (stored as prompt.json) and its encoded train and validation splits."""

    fmt: PromptFormat
    train: EncodedSplit
    validation: EncodedSplit | None
    labels: list[str]  # a classifier's outputs in order (its id2label); empty for a causal LM


class Objective(Protocol):
    head: str

    def encode(self, recipe: Recipe, prepared: PreparedData, tokenizer: Any) -> Splits: ...

    def build_trainer(
        self,
        recipe: Recipe,
        output_dir: Path,
        source: ModelSource,
        tokenizer: Any,
        splits: Splits,
        callbacks: list[Any],
        fresh_start: bool,
    ) -> Any:
        """The Trainer for the model loaded from `source`, writing checkpoints to `output_dir`."""
        ...


def checked_splits(
    recipe: Recipe,
    prepared: PreparedData,
    fmt: PromptFormat,
    train: EncodedSplit | None,
    validation: EncodedSplit | None,
    labels: list[str] = (),
) -> Splits:
    """The splits, refused when there is nothing to train on or early stopping has nothing to watch."""
    if train is None:
        raise FinetuneError(f"data: the train split of {prepared.path} is empty")
    if validation is None and recipe.train.early_stopping_patience:
        raise FinetuneError(
            "train.early_stopping_patience needs a validation split; set data.split.validation above 0"
        )
    return Splits(fmt, train, validation, list(labels))


def prompt_splits(
    recipe: Recipe, prepared: PreparedData, tokenizer: Any, encode: Callable[..., Any]
) -> Splits:
    """Train and validation encoded by `encode(recipe, split, fmt, tokenizer)` in the run's
    prompt format, checked: the prompted heads' (decoder, encoder-decoder) splits."""
    fmt = prompt_format(tokenizer, recipe.task)
    train = encode(recipe, "train", fmt, tokenizer)
    validation = encode(recipe, "validation", fmt, tokenizer)
    return checked_splits(recipe, prepared, fmt, train, validation)


def epochs_for(recipe: Recipe, examples: int) -> float:
    """`train.epochs`, raised so that `examples` rows give `train.min_steps` optimizer steps."""
    t = recipe.train
    if t.min_steps is None or t.max_steps is not None or examples == 0:
        return t.epochs
    per_step = t.batch_size * t.gradient_accumulation_steps * world_size()
    steps_per_epoch = math.ceil(examples / per_step)
    return max(t.epochs, t.min_steps / steps_per_epoch)


def common_arguments(
    recipe: Recipe, output_dir: Path, splits: Splits, *, eval_on_start: bool
) -> dict[str, Any]:
    """The training arguments every head's Trainer takes (transformers' `TrainingArguments`)
    for these splits: validation when there is a split for it, passes counted in the rows a
    pass iterates."""
    t = recipe.train
    has_eval, examples = splits.validation is not None, len(splits.train.dataset)
    return dict(
        output_dir=str(output_dir),
        seed=recipe.seed,
        data_seed=recipe.seed,
        num_train_epochs=epochs_for(recipe, examples),
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        # transformers reads a float below 1 as a fraction of the steps, and 1 as "one step".
        warmup_steps=min(t.warmup_ratio, 0.999),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=use_bf16_autocast(recipe.model.dtype),
        fp16=False,
        activation_checkpointing=t.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_every,
        eval_on_start=has_eval and eval_on_start,
        prediction_loss_only=True,  # validation reports the loss; no logits kept
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=2,  # the best checkpoint is always kept besides the latest
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        restore_callback_states_from_checkpoint=True,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not has_cuda(),
        dataloader_num_workers=0,
    )


def seeded_trainer(
    recipe: Recipe,
    output_dir: Path,
    model: Any,
    tokenizer: Any,
    splits: Splits,
    callbacks: list[Any],
    fresh_start: bool,
    collator: Any,
) -> Any:
    """transformers' Trainer (seeded batches, `sampler.SeededTrainer`) for the heads TRL does
    not train: `model` on the splits, batched by `collator`, with the common arguments."""
    from transformers import PrinterCallback, TrainingArguments

    from finetune.train.loss import SoftLabelTrainer
    from finetune.train.sampler import SeededTrainer

    has_eval = splits.validation is not None
    args = common_arguments(recipe, output_dir, splits, eval_on_start=fresh_start)
    soft = SOFT_LABELS in splits.train.dataset.column_names  # a teacher's soft targets
    trainer = (SoftLabelTrainer if soft else SeededTrainer)(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=splits.train.dataset,
        eval_dataset=splits.validation.dataset if has_eval else None,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our progress display replaces its dict dumps
    return trainer


def explained(exc: ValueError) -> Exception:
    """PEFT and TRL configuration errors, reworded to name the recipe key that fixes them."""
    text = str(exc)
    if "Target modules" in text or "target_modules" in text:
        return FinetuneError(f"lora.target_modules: {text}")
    return exc
