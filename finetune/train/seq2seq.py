"""The encoder-decoder objective (T5, Flan-T5, BART): the prompt in, the answer out.

An example is the prompt in the run's prompt format (plain for T5's and BART's tokenizers,
which have no chat template), cut to `model.max_length` as evaluation cuts it, as the encoder's
input, and the answer alone as the decoder's labels (`prompts.encode_target`). The loss is the
model's own cross-entropy over the answer tokens (padding ignored), with transformers' Trainer;
the model shifts the labels right into its decoder's input. Every task type trains this way,
and evaluation scores or generates the same decoder output (`systems/seq2seq.py`). LoRA
trains adapters on the frozen base, `full` every weight.
"""

from __future__ import annotations

from typing import Any

from finetune.data import PreparedData
from finetune.models.heads import SEQ2SEQ_LM
from finetune.recipe import Recipe
from finetune.train.dataset import encode_seq2seq_split
from finetune.train.objective import Splits, explained, prompt_splits, seeded_trainer


class Seq2SeqObjective:
    """The prompt as the encoder's input, the loss the decoder's cross-entropy on the answer."""

    head = SEQ2SEQ_LM

    def encode(self, recipe: Recipe, prepared: PreparedData, tokenizer: Any) -> Splits:
        return prompt_splits(recipe, prepared, tokenizer, encode_seq2seq_split)

    def build_trainer(self, recipe, output_dir, source, tokenizer, splits, callbacks, fresh_start):
        from transformers import DataCollatorForSeq2Seq

        try:
            model = _model(recipe, source, splits.train.typical_length)
        except ValueError as exc:
            raise explained(exc) from exc
        # Labels padded with -100, which the loss skips and the model's shift turns to padding.
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
        return seeded_trainer(
            recipe, output_dir, model, tokenizer, splits, callbacks, fresh_start, collator
        )


def _model(recipe: Recipe, source: Any, typical_length: int) -> Any:
    """The seq2seq base, wrapped with LoRA adapters for `train.method: lora`."""
    from finetune.train.model import load_base_for_training, lora_config

    model = load_base_for_training(recipe, source, typical_length=typical_length, head=SEQ2SEQ_LM)
    config = lora_config(recipe, task_type="SEQ_2_SEQ_LM")
    if config is None:
        return model
    from peft import get_peft_model

    model = get_peft_model(model, config)
    if recipe.train.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed layers need a grad input
    return model
