"""The model being trained: the base loaded for the recipe's method and head, and its adapter config.

LoRA trains adapters on a frozen base (bf16 where fast, or 8-/4-bit through bitsandbytes);
full fine-tuning trains every weight in float32 master weights. The base is a causal LM, an
encoder-decoder (seq2seq LM) or a model given a classifier head; a classifier's new head is
trained whole beside the adapters.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune.deps import require
from finetune.hardware import training_attention, use_bf16_autocast, weight_dtype
from finetune.models import ModelSource, load_classifier, load_language_model, source_role
from finetune.models.heads import (
    CAUSAL_LM,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    head_problems,
    resolved_head,
)
from finetune.recipe import Problem, Recipe, RecipeError

log = logging.getLogger(__name__)


def trained_head(recipe: Recipe, recipe_path: str | Path, source: ModelSource) -> str:
    """The head this recipe trains on `source`, checked again now that the base model is at hand
    (validation cannot tell an encoder from a Hub id it has not fetched)."""
    role = source_role(source, trust_remote_code=recipe.model.trust_remote_code)
    problems = head_problems(recipe, role)
    if problems:
        raise RecipeError([Problem(str(recipe_path), key, message) for key, message in problems])
    return resolved_head(recipe.model.head, role, recipe.task.type)


def load_base_for_training(
    recipe: Recipe,
    source: ModelSource,
    *,
    typical_length: int | None = None,
    head: str = CAUSAL_LM,
) -> Any:
    """The base model with its writing `head` (a causal or a seq2seq LM) in the dtype and
    quantization the recipe asks for, ready for PEFT or full training; `typical_length`
    (tokens) informs the attention kernel `train.attention: auto` picks."""
    kwargs = _attention(recipe, typical_length)
    quantization = recipe.model.quantization
    if quantization != "none":
        require("bitsandbytes", needed_for=f"model.quantization: {quantization}")
        kwargs["quantization_config"] = bnb_config(recipe)
    model = load_language_model(
        source,
        head=head,
        dtype=weight_dtype(recipe.model.dtype, method=recipe.train.method),
        trust_remote_code=recipe.model.trust_remote_code,
        allow_pickle=recipe.model.allow_pickle,
        **kwargs,
    )
    if quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.train.gradient_checkpointing
        )
    return model


PEFT_TASK = {SEQUENCE_CLASSIFICATION: "SEQ_CLS", TOKEN_CLASSIFICATION: "TOKEN_CLS"}


def load_classifier_for_training(
    recipe: Recipe,
    source: ModelSource,
    pad_token_id: int,
    *,
    labels: list[str],
    head: str = SEQUENCE_CLASSIFICATION,
    typical_length: int | None = None,
) -> Any:
    """The base with a classification `head` for `labels`: for `lora` wrapped with adapters,
    and every module the checkpoint did not hold (the new head; BERT's pooler when it was saved
    without one) trained whole, since frozen random weights would never learn."""
    from transformers import set_seed

    set_seed(recipe.seed)  # the new head's initial weights, drawn before the Trainer seeds
    model, info = load_classifier(
        source,
        labels,
        head=head,
        dtype=weight_dtype(recipe.model.dtype, method=recipe.train.method),
        trust_remote_code=recipe.model.trust_remote_code,
        allow_pickle=recipe.model.allow_pickle,
        output_loading_info=True,
        **_attention(recipe, typical_length),
    )
    # Decoders classify at their last token that is not padding: they must know the padding.
    model.config.pad_token_id = pad_token_id
    new_modules = _new_modules(info)
    log.info("new in this model, trained from scratch: %s", ", ".join(new_modules))
    if recipe.train.method != "lora":
        return model
    from peft import get_peft_model

    config = lora_config(recipe, task_type=PEFT_TASK[head], modules_to_save=new_modules)
    model = get_peft_model(model, config)
    # PEFT keeps adapters in float32 but the modules it trains whole in the base's dtype: in
    # bf16 a head's small updates would mostly round away. float32 master weights, as `full`.
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    if recipe.train.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed layers need a grad input
    return model


def _new_modules(info: dict[str, Any]) -> list[str]:
    """The modules transformers initialized afresh: missing from the checkpoint, or shaped otherwise."""
    mismatched = (k if isinstance(k, str) else k[0] for k in info["mismatched_keys"])
    return sorted({key.rpartition(".")[0] for key in {*info["missing_keys"], *mismatched}})


def _attention(recipe: Recipe, typical_length: int | None) -> dict[str, Any]:
    attention = training_attention(recipe.train.attention, recipe.model.dtype, typical_length)
    return {} if attention is None else {"attn_implementation": attention}


def bnb_config(recipe: Recipe) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    if recipe.model.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    q = recipe.model.qlora
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
    )


def lora_config(
    recipe: Recipe, *, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None
) -> Any | None:
    """The PEFT LoraConfig for `train.method: lora`, None for full fine-tuning. With `SEQ_CLS`,
    PEFT trains the classifier whole (`modules_to_save`) and puts no adapter on it (and
    likewise with `TOKEN_CLS`)."""
    if recipe.train.method != "lora":
        return None
    from peft import LoraConfig

    lora = recipe.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules
        if isinstance(lora.target_modules, str)
        else list(lora.target_modules),
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        bias="none",
        task_type=task_type,
        modules_to_save=modules_to_save or None,
    )


def adapter_inputs_kept(model: Any, recipe: Recipe) -> Any:
    """Leave each LoRA layer's input in the compute dtype while training under bf16 autocast.

    PEFT casts every adapter's input to the adapter's float32, and autocast casts it straight
    back to bf16 for the matmul: the same values (bf16 -> float32 -> bf16 is exact), but a new
    copy of the input per adapted layer (q, k and v each make their own), kept for the backward
    pass. On the sentiment recipe those copies were 233 of the 810 MiB a batch saved for
    backward. Without the casts autocast's matmul reads the input itself.
    """
    from peft.helpers import disable_input_dtype_casting

    active = recipe.train.method == "lora" and use_bf16_autocast(recipe.model.dtype)
    return disable_input_dtype_casting(model, active=active)


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit packed weights counted at their logical size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def compile_decoder_layers(model: Any) -> int:
    """Compile each decoder layer in place (regional compilation); the number compiled.

    The layers share their code, so torch.compile builds one graph, with dynamic shapes for
    the varying batch lengths, and reuses it for every layer: ~30 s on CPU where compiling
    the whole model takes minutes.
    """
    names = set(getattr(without_peft(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers and hasattr(model, "enable_input_require_grads"):
        # With frozen embeddings the first layer's input would not require grad and every
        # other layer's would: two graphs to compile instead of one.
        model.enable_input_require_grads()
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def without_peft(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (the model itself when not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
