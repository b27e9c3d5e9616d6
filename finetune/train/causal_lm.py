"""Supervised fine-tuning of a causal LM on prompt + answer in the shared prompt format, the
loss on the answer, with TRL's SFTTrainer (the LoRA, DoRA, full and 4/8-bit paths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.data import PreparedData
from finetune.models.heads import CAUSAL_LM
from finetune.recipe import Recipe
from finetune.train.dataset import WEIGHT, encode_split
from finetune.train.objective import Splits, common_arguments, explained, prompt_splits


class CausalLMObjective:
    """Prompt + answer in the shared prompt format, the loss on the answer (TRL's SFTTrainer)."""

    head = CAUSAL_LM

    def encode(self, recipe: Recipe, prepared: PreparedData, tokenizer: Any) -> Splits:
        return prompt_splits(recipe, prepared, tokenizer, encode_split)

    def build_trainer(self, recipe, output_dir, source, tokenizer, splits, callbacks, fresh_start):
        from transformers import PrinterCallback

        from finetune.train.loss import SupervisedSFTTrainer, WeightedCollator
        from finetune.train.model import load_base_for_training, lora_config

        has_eval = splits.validation is not None
        args = sft_config(recipe, output_dir, splits, eval_on_start=fresh_start)
        try:
            trainer = SupervisedSFTTrainer(
                model=load_base_for_training(
                    recipe, source, typical_length=splits.train.typical_length
                ),
                args=args,
                train_dataset=splits.train.dataset,
                eval_dataset=splits.validation.dataset if has_eval else None,
                processing_class=tokenizer,
                peft_config=lora_config(recipe),
                callbacks=callbacks,
            )
        except ValueError as exc:
            raise explained(exc) from exc
        trainer.remove_callback(PrinterCallback)  # our progress display replaces its dict dumps
        if WEIGHT in splits.train.dataset.column_names:  # a teacher's soft targets
            trainer.data_collator = WeightedCollator(trainer.data_collator, args.padding_free)
        return trainer


def sft_config(
    recipe: Recipe, output_dir: Path, splits: Splits, *, eval_on_start: bool = True
) -> Any:
    """TRL's SFTConfig for the recipe. Every TRL default that differs on CPU is set explicitly."""
    from trl import SFTConfig

    t = recipe.train
    return SFTConfig(
        **common_arguments(recipe, output_dir, splits, eval_on_start=eval_on_start),
        # Examples arrive cut to model.max_length (`encode`); TRL refuses a max_length it
        # would not enforce, which is the case for padding-free batches without packing.
        max_length=None if t.padding_free and not t.packing else recipe.model.max_length,
        packing=t.packing,
        padding_free=t.padding_free,
        completion_only_loss=t.completion_only,
    )
