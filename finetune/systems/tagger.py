"""The tagger kind: a run's token classifier (an encoder with a token-classification head),
which tags each word of a test text in IOB2 and answers the entities those tags spell.

Loaded and served as the encoder kind's sequence classifier is (a LoRA adapter merged in
float32 by default, a full run's `model/`), with the outputs the run recorded in `head.json`.
Each text is read as training read it (`tagging.encode_tagged`); a word's tag is the argmax at
its first sub-word token, words cut off by `model.max_length` are `O`, and the tags decode to
entities with character offsets (`tagging.decode_tags`), so they are scored on exact span and
type against the gold spans, as every extraction system is (`metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.models.heads import TOKEN_CLASSIFICATION, run_labels
from finetune.recipe import Recipe
from finetune.systems.base import Context, Inference, Plan, System
from finetune.systems.encoder import Encoder
from finetune.tasks.tagging import decode_tags, encode_tagged, require_fast, words


class Tagger(Encoder):
    """The `Kind` of a run's token classifier; its key is the specialist's."""

    name = "tagger"
    head = TOKEN_CLASSIFICATION
    role = "token classifier (IOB2)"

    def labels(self, recipe: Recipe, run_dir: Path) -> list[str]:
        return run_labels(run_dir)

    def plan(self, recipe: Recipe, system: System, key: str, loaded: Any, context: Context) -> Plan:

        tokenizer = require_fast(loaded.tokenizer, recipe.model.base)
        encoded = [
            encode_tagged(
                tokenizer,
                item["text"],
                None,
                {},
                max_length=recipe.model.max_length,
                truncation=recipe.model.truncation,
            )
            for item in context.items
        ]
        inputs = [
            (item["text"], e.input_ids, e.word_ids)
            for item, e in zip(context.items, encoded, strict=True)
        ]
        return Plan(
            system,
            key,
            "words tagged in IOB2",
            _inference(tokenizer, loaded.model.config.id2label),
            inputs,
            [len(e.input_ids) for e in encoded],
            [e.truncated for e in encoded],
        )


def _inference(tokenizer: Any, id2label: dict[int, str]) -> Inference:

    def tag(model, inputs, batch_size, share_prefix, on_batch=None):
        # No prompt is shared between texts, so `share_prefix` has nothing to reuse.
        predictions, details = [], []
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size]
            for (text, _, word_ids), best in zip(
                batch, _argmax(model, tokenizer, batch), strict=True
            ):
                tags = _word_tags(text, word_ids, best, id2label)
                predictions.append(decode_tags(text, words(text), tags))
                details.append({"word_tags": tags})
            if on_batch:
                on_batch(len(batch))
        return predictions, details, [0] * len(inputs)

    return Inference(0, tag)


def _argmax(model: Any, tokenizer: Any, batch: list[tuple]) -> list[list[int]]:
    """The best label of every token of each input in one padded batch."""
    import torch

    # Padded on the right, so each token keeps the position its word ids were counted at.
    ids = [ids for _, ids, _ in batch]
    padded = tokenizer.pad({"input_ids": ids}, padding_side="right", return_tensors="pt")
    with torch.inference_mode():
        logits = model(**{k: v.to(model.device) for k, v in padded.items()}).logits
    return logits.argmax(dim=-1).cpu().tolist()


def _word_tags(text: str, word_ids: list, best: list[int], id2label: dict) -> list[str]:
    """Each word's tag: the label at its first token; `O` for a word the input cut off."""

    tags = ["O"] * len(words(text))
    seen = set()
    for position, word in enumerate(word_ids):
        if word is not None and word not in seen:
            seen.add(word)
            tags[word] = id2label[best[position]]
    return tags
