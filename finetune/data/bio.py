"""Token/tag files in IOB2 (CoNLL style): one `token<TAB>tag` line per token, a blank line between
sentences, turned into text plus entities with character offsets.

Pure functions, so the builders that read such files and the tests share them. A bad line raises
`TagError` with its position in the sentence; the builder turns that into a `file:line: reason` row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from itertools import accumulate

TAG = re.compile(r"O|([BI])-([A-Za-z][\w-]*)")
I_RULE = "an I- tag must continue a B- or I- tag of the same type"


class TagError(ValueError):
    """A bad token/tag line: `index` is its position in the sentence, `reason` what is wrong."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def blocks(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """(1-based number of the first line, lines) of each block between blank lines.

    A line of only whitespace counts as blank: WNUT's files separate tweets with a lone tab.
    """
    block: list[str] = []
    first = 0
    for number, line in enumerate(lines, 1):
        if line.strip():
            first = first if block else number
            block.append(line)
        elif block:
            yield first, block
            block = []
    if block:
        yield first, block


def decode_lines(lines: list[str]) -> tuple[str, list[dict]]:
    """Text and entities of one sentence's `token<TAB>tag` lines; raises `TagError`."""
    tokens, tags = [], []
    for index, line in enumerate(lines):
        token, tab, tag = line.partition("\t")
        if not tab or not tag.strip():
            raise TagError(index, f"line without a tag: expected 'token<TAB>tag', found {line!r}")
        if not token.strip():
            raise TagError(index, f"empty token before tag {tag!r}")
        tokens.append(token)
        tags.append(tag)
    return decode_bio(tokens, tags)


def decode_bio(tokens: list[str], tags: list[str]) -> tuple[str, list[dict]]:
    """Join tokens with single spaces and decode IOB2 tags into `{text, type, start, end}` entities.

    `text[start:end]` is the entity's text. Raises `TagError` at the first tag that is not
    `O`, `B-<type>` or `I-<type>`, or at an I- tag that does not continue an entity of its type.
    """
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    starts = list(accumulate((len(t) + 1 for t in tokens[:-1]), initial=0))
    spans = _spans(tags)
    text = " ".join(tokens)
    return text, [
        _entity(text, kind, starts[first], starts[last] + len(tokens[last]))
        for kind, first, last in spans
    ]


def _spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first token, last token) of each entity, in order."""
    spans: list[tuple[str, int, int]] = []
    for index, tag in enumerate(tags):
        match = TAG.fullmatch(tag)
        if match is None:
            raise TagError(index, f"unknown tag {tag!r}: expected O, B-<type> or I-<type>")
        prefix, kind = match.groups()
        if prefix == "B":
            spans.append((kind, index, index))
        elif prefix == "I":
            if not spans or spans[-1][0] != kind or spans[-1][2] != index - 1:
                raise TagError(index, _dangling(tags, index))
            spans[-1] = (kind, spans[-1][1], index)
    return spans


def _dangling(tags: list[str], index: int) -> str:
    if index == 0:
        return f"tag {tags[0]!r} starts the sentence; {I_RULE}"
    return f"tag {tags[index]!r} follows {tags[index - 1]!r}; {I_RULE}"


def _entity(text: str, kind: str, start: int, end: int) -> dict:
    return {"text": text[start:end], "type": kind, "start": start, "end": end}
