"""Entities in extraction answers: parsing a model's JSON list, and placing each entity in the
item's text.

An entity is `{"text": str, "type": str}`, with `start`/`end` character offsets into the item's
text where it has a place there. A generated entity names no place, so `locate` gives it one:
the occurrence of its text in the input (case and spacing aside) that is a gold span of its
type if there is one, else the first not yet taken; text the input does not contain stays
without offsets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

Entity = dict[str, str]


def fold(text: str) -> str:
    """Case-folded, with runs of spacing collapsed: how entity texts and types compare."""
    return " ".join(text.casefold().split())


def entity_key(entity: Entity) -> tuple:
    """(span, start, end, type) for a located entity, else (text, folded text, type); the type
    is the last element, the per-type column."""
    if "start" in entity:
        return ("span", entity["start"], entity["end"], fold(entity["type"]))
    return ("text", fold(entity["text"]), fold(entity["type"]))


def _occurrences(text: str, needle: str) -> list[tuple[int, int]]:
    """(start, end) of each place `text` holds `needle`, case and runs of spacing aside."""
    words = needle.split()
    if not words:
        return []
    pattern = r"\s+".join(map(re.escape, words))
    return [m.span() for m in re.finditer(pattern, text, flags=re.IGNORECASE)]


def _located(text: str, entities: Sequence[Entity], golds: Sequence[Entity]) -> list[Entity]:
    """`entities` with offsets given to those without (see the module docstring)."""
    gold_spans = {entity_key(g) for g in golds if "start" in g}
    taken = {(e["start"], e["end"]) for e in entities if "start" in e}
    out = []
    for entity in entities:
        free = (
            []
            if "start" in entity
            else [span for span in _occurrences(text, entity["text"]) if span not in taken]
        )
        if not free:
            out.append(entity)
            continue
        kind = fold(entity["type"])
        span = next((s for s in free if ("span", *s, kind) in gold_spans), free[0])
        taken.add(span)
        out.append({**entity, "start": span[0], "end": span[1]})
    return out


def locate(
    task_type: str, texts: Sequence[str], golds: Sequence[Any], preds: Sequence[Any] | None = None
) -> list[Any]:
    """Extraction: each item's entities given the place they name in its text (`preds` placed
    against the located `golds`; without `preds`, the golds themselves). Other tasks: unchanged."""
    if task_type != "extraction":
        return list(golds if preds is None else preds)
    if preds is None:
        return [_located(t, g, []) for t, g in zip(texts, golds, strict=True)]
    return [_located(t, p, g) for t, g, p in zip(texts, golds, preds, strict=True)]


def _json_lists(text: str) -> Iterator[list]:
    """Candidate JSON lists in `text`: first `[` to last `]`, then each list that starts at a `[`."""
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        try:
            value = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, list):
                yield value
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\[", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, list):
            yield value


def _is_entity(entry: Any) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(key), str) and entry[key].strip() for key in ("text", "type")
    )


def parsable(text: str) -> bool:
    """Whether the answer holds a JSON list at all (an empty one included)."""
    return isinstance(text, str) and next(_json_lists(text), None) is not None


def parse_entities(text: str) -> list[Entity]:
    """Entities from a model's answer: a JSON list of `{"text", "type"}` objects.

    Text around the list (a preamble, a code fence) is tolerated; entries that are not objects
    with non-empty string `text` and `type` are dropped; anything unparsable gives `[]`.
    """
    if not isinstance(text, str):
        return []
    for candidate in _json_lists(text):
        entities = [{"text": e["text"], "type": e["type"]} for e in candidate if _is_entity(e)]
        if entities:
            return entities
    return []
