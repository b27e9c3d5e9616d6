"""The encoder kind: a run's sequence classifier (an encoder such as BERT with a classification
head, or a decoder given one), scoring each test text alone.

A LoRA run is served as the causal specialist is (`common.serving_form`): by default its
adapter, and the head trained whole beside it, merged into float32 weights and rounded once
to the recipe's dtype; a full run loads its `model/`. Inputs are the texts cut to
`model.max_length` tokens as training cut them (`prompts.encode_text`); batches are padded,
and the prediction is the label with the highest logit, with every label's log-softmax kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.hardware import weight_dtype
from finetune.models import (
    ModelSource,
    check_fits,
    load_classifier,
    load_tokenizer,
    resolve,
    weights_bytes_needed,
)
from finetune.models.heads import SEQUENCE_CLASSIFICATION
from finetune.recipe import Recipe
from finetune.runs import check_same_base
from finetune.systems.base import Context, Inference, Kind, Loaded, Plan, System
from finetune.systems.common import (
    disk_bytes,
    encoded_plan,
    label_predictions,
    merged_in_float32,
    parameter_sizes,
    serving_form,
)
from finetune.tasks.prompts import encode_text

log = logging.getLogger(__name__)


class Encoder(Kind):
    """The `Kind` of a run's sequence classifier; its key is the specialist's."""

    name = "encoder"
    head = SEQUENCE_CLASSIFICATION
    role = "sequence classifier"

    def labels(self, recipe: Recipe, run_dir: Path) -> list[str]:
        """The head's outputs in order."""
        return list(recipe.task.labels)

    def load(self, recipe: Recipe, run_dir: Path, key: str) -> Loaded:

        source, labels = resolve(recipe.model.base), self.labels(recipe, run_dir)
        if (run_dir / "model").is_dir():  # full fine-tuning: the run holds the whole model
            full = ModelSource(str(run_dir / "model"), "local", str(run_dir / "model"), {})
            model = _load(recipe, full, labels, self.head)
            description, serving = f"{source.ref} fine-tuned (full), {self.role}", "as loaded"
            loaded = Loaded(model, load_tokenizer(full), description, self, disk_bytes(full, None))
        else:
            check_same_base(run_dir, source.identity)
            model, serving = _attach_adapter(recipe, source, run_dir / "adapter", labels, self.head)
            merged = " (merged)" if serving.startswith("merged") else ""
            description = f"{source.ref} + LoRA adapter{merged}, {self.role}"
            tokenizer = load_tokenizer(
                ModelSource(source.ref, "local", str(run_dir / "adapter"), {})
            )
            loaded = Loaded(
                model, tokenizer, description, self, disk_bytes(source, run_dir / "adapter")
            )
        _check_labels(run_dir, loaded.model, labels)
        # A decoder classifies at its last token that is not padding, the run's padding token.
        loaded.model.config.pad_token_id = loaded.tokenizer.pad_token_id
        loaded.serving, loaded.identity = serving, source
        loaded.model.eval()
        return loaded

    def plan(
        self, recipe: Recipe, system: System, key: str, loaded: Loaded, context: Context
    ) -> Plan:
        encoded = [
            encode_text(
                loaded.tokenizer,
                item["text"],
                max_length=recipe.model.max_length,
                truncation=recipe.model.truncation,
            )
            for item in context.items
        ]
        return encoded_plan(system, key, "text only", _inference(recipe, loaded.tokenizer), encoded)

    def sizes(self, model: Any) -> tuple[int, int, int]:
        return parameter_sizes(model)

    def instance_bytes(self, recipe: Recipe, key: str) -> int | None:
        try:
            return weights_bytes_needed(
                resolve(recipe.model.base),
                dtype=weight_dtype(recipe.model.dtype),
                trust_remote_code=recipe.model.trust_remote_code,
                head=self.head,
            )
        except Exception as exc:  # an estimate only: a model it cannot size loads per use
            log.warning("cannot estimate the size of %s (%s); it loads per use", key, exc)
            return None


def _attach_adapter(
    recipe: Recipe, source: ModelSource, adapter: Path, labels: list[str], head: str
) -> tuple[Any, str]:
    """The base classifier with the run's adapter and head, and the form it is served in (as
    the causal kind's: merged in float32 and rounded once, or unmerged in float32)."""
    import torch
    from peft import PeftModel

    dtype = weight_dtype(recipe.model.dtype)
    base = _load(recipe, source, labels, head, dtype=torch.float32)
    if serving_form(recipe) == "adapter":
        return PeftModel.from_pretrained(base, str(adapter)), "adapter unmerged, in float32"
    return merged_in_float32(base, adapter, dtype)


def _load(
    recipe: Recipe, source: ModelSource, labels: list[str], head: str, *, dtype: Any = None
) -> Any:
    dtype = dtype or weight_dtype(recipe.model.dtype)
    trust = recipe.model.trust_remote_code
    if recipe.model.check_memory:
        check_fits(source, dtype=dtype, trust_remote_code=trust, head=head)
    return load_classifier(
        source,
        labels,
        head=head,
        dtype=dtype,
        trust_remote_code=trust,
        allow_pickle=recipe.model.allow_pickle,
    )


def _check_labels(run_dir: Path, model: Any, labels: list[str]) -> None:
    """The head's outputs must be the recipe's labels in the recipe's order."""
    config = model.config
    found = [config.id2label[i] for i in range(config.num_labels)]
    if found != list(labels):
        raise FinetuneError(
            f"{run_dir}: the classifier's labels are {found}, but the run's labels are "
            f"{list(labels)}; evaluate with the run's own recipe"
        )


def _inference(recipe: Recipe, tokenizer: Any) -> Inference:
    labels = list(recipe.task.labels)

    def classify(model, inputs, batch_size, share_prefix, on_batch=None):
        # No prompt is shared between texts, so `share_prefix` has nothing to reuse.
        rows = []
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            rows.extend(label_logprobs(model, tokenizer, batch))
            if on_batch:
                on_batch(len(batch))
        predictions, details, _ = label_predictions(labels, rows)
        return predictions, details, [0] * len(inputs)

    return Inference(0, classify)


def label_logprobs(model: Any, tokenizer: Any, batch: list[list[int]]) -> Any:
    """Log-softmax over the labels for each input of one padded batch, as a numpy array."""
    import torch

    padded = tokenizer.pad({"input_ids": batch}, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**{k: v.to(model.device) for k, v in padded.items()}).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
