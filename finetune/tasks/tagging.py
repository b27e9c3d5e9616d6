"""The token classifier's input format: words tagged in IOB2, aligned to sub-word tokens, and
decoded back to character spans.

A text's words are its whitespace-separated pieces (`words`), as the built-in token/tag data
was written. Each word gets the tag of the entity it falls in: `B-<type>` for the entity's
first word, `I-<type>` for the rest, `O` outside (`word_tags`). The tokenizer splits words into
sub-word tokens; the first token of each word carries the word's label and the rest are
ignored in the loss (label -100), as in transformers' token-classification examples
(`encode_tagged`). Texts longer than `model.max_length` are cut at the `model.truncation`
end, and the words cut off are tagged `O` when predicting. Predicted word tags decode to entities with character
offsets as seqeval reads IOB2 by default (`decode_tags`): an `I-` tag that continues nothing
starts an entity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from finetune.errors import FinetuneError
from finetune.tasks.entities import locate

IGNORED = -100  # the label PyTorch's cross-entropy skips
_WORD = re.compile(r"\S+")


def bio_labels(types: list[str]) -> list[str]:
    """The head's outputs: `O`, then `B-` and `I-` of each entity type, in order."""
    return ["O", *(f"{prefix}-{kind}" for kind in types for prefix in ("B", "I"))]


def entity_types(labels: list[str]) -> list[str]:
    """The entity types of a head's outputs (`bio_labels` inverted)."""
    return list(dict.fromkeys(label[2:] for label in labels if label != "O"))


def words(text: str) -> list[tuple[int, int]]:
    """(start, end) of each whitespace-separated word."""
    return [m.span() for m in _WORD.finditer(text)]


def word_tags(text: str, entities: list[dict], spans: list[tuple[int, int]]) -> list[str]:
    """The IOB2 tag of each word: the entity it overlaps (by character offsets), or `O`.

    Entities without offsets are placed at the first occurrence of their text, as the
    evaluation places them (`entities.locate`)."""

    tags = ["O"] * len(spans)
    for entity in locate("extraction", [text], [entities])[0]:
        if "start" not in entity:
            continue  # its text is not in the input: nothing to tag
        inside = [i for i, (s, e) in enumerate(spans) if s < entity["end"] and e > entity["start"]]
        for n, i in enumerate(inside):
            tags[i] = f"{'B' if n == 0 else 'I'}-{entity['type']}"
    return tags


def decode_tags(text: str, spans: list[tuple[int, int]], tags: list[str]) -> list[dict]:
    """Entities `{text, type, start, end}` of the tagged words (seqeval's default reading:
    `I-X` after `O` or after another type starts an entity)."""
    entities: list[dict] = []
    open_kind = None
    for (start, end), tag in zip(spans, tags, strict=True):
        prefix, kind = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if prefix == "I" and kind == open_kind:
            entities[-1]["end"] = end
            continue
        open_kind = kind
        if kind is not None:
            entities.append({"type": kind, "start": start, "end": end})
    return [{"text": text[e["start"] : e["end"]], **e} for e in entities]


@dataclass(frozen=True)
class Tagged:
    """One text as the token classifier reads it: token ids, each token's word (None for
    special tokens), the training labels, and whether words were cut off."""

    input_ids: list[int]
    word_ids: list[int | None]
    labels: list[int]
    truncated: bool


def encode_tagged(
    tokenizer: Any,
    text: str,
    tags: list[str] | None,
    label_ids: dict[str, int],
    *,
    max_length: int,
    truncation: str = "left",
) -> Tagged:
    """The text's words through the tokenizer, the first token of each word labelled with its
    tag's id and every other token ignored (`tags` None: for prediction, all ignored)."""
    pieces = [text[s:e] for s, e in words(text)]
    side, tokenizer.truncation_side = tokenizer.truncation_side, truncation
    try:
        encoding = tokenizer(
            pieces, is_split_into_words=True, truncation=True, max_length=max_length
        )
    finally:
        tokenizer.truncation_side = side
    word_ids = encoding.word_ids()
    labels, seen = [], set()
    for word in word_ids:
        first = word is not None and word not in seen
        seen.add(word)
        labels.append(label_ids[tags[word]] if first and tags is not None else IGNORED)
    kept = {w for w in word_ids if w is not None}
    return Tagged(encoding["input_ids"], word_ids, labels, truncated=len(kept) < len(pieces))


def require_fast(tokenizer: Any, base: str) -> Any:
    """The token classifier needs each token's word, which only fast tokenizers report."""
    if not getattr(tokenizer, "is_fast", False):
        raise FinetuneError(
            f"model.base: the tokenizer of {base!r} is not a fast (Rust) tokenizer, so it cannot "
            "say which word each token came from; a token-classification head needs that. Use a "
            "base model with a tokenizer.json, or head: causal-lm"
        )
    return tokenizer
