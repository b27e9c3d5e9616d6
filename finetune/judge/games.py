"""Games: one comparison of two answers to an item, asked in both orders.

A `Game` is what the judge is asked once: a prompt with answer A and answer B. Each pair of
answers is asked twice, the second time with A and B swapped (`both_orders`); the two verdicts,
read from the first answer's side, give the item's outcome (`outcome`): the same verdict twice
is that verdict, two different ones are a tie (MT-Bench's rule), and an unparsable verdict in
either order leaves the item unjudged: counted, never guessed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

A, B, TIE = "A", "B", "C"
# Outcomes from the first answer's side.
WIN, LOSS, DRAW, UNPARSABLE = "win", "loss", "tie", "unparsable"

_VERDICT = re.compile(r"\[\[([ABC])\]\]")


@dataclass(frozen=True)
class Game:
    item: str  # the test item's id
    pair: str  # what is compared: a baseline's name, or a sanity check's corruption
    swapped: bool  # False: the first answer is A; True: it is B
    prompt: str

    @property
    def key(self) -> str:
        """What the judge's reply is kept under: the prompt's digest, so a changed answer, prompt
        or template is asked again and an unchanged one never is."""
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:32]


def parse_verdict(reply: str | None) -> str | None:
    """`A`, `B` or `C` when the reply holds exactly one of `[[A]]`, `[[B]]`, `[[C]]` (repeated
    or not); None for no verdict or two different ones."""
    found = set(_VERDICT.findall(reply or ""))
    return found.pop() if len(found) == 1 else None


def render(template: str, question: str, first: str, second: str, reference: str | None):
    """The prompt with the answers in this order; `reference` only where the template reads it."""
    fields = {"question": question, "answer_a": first, "answer_b": second}
    if reference is not None:
        fields["reference"] = reference
    return template.format_map(fields)


def both_orders(
    item: str, pair: str, template: str, question: str, answers: tuple[str, str], reference
) -> list[Game]:
    """The two games of one pair of answers (first, second): as given, then swapped."""
    first, second = answers
    return [
        Game(item, pair, False, render(template, question, first, second, reference)),
        Game(item, pair, True, render(template, question, second, first, reference)),
    ]


def side(verdict: str | None, swapped: bool) -> str | None:
    """A verdict read from the first answer's side: `win`, `loss`, `tie`, or None unparsable."""
    if verdict is None:
        return None
    if verdict == TIE:
        return DRAW
    first_is_a = not swapped
    return WIN if (verdict == A) == first_is_a else LOSS


def outcome(straight: str | None, swapped: str | None) -> str:
    """The item's outcome from its two verdicts (as parsed, `A`/`B`/`C` or None)."""
    one, two = side(straight, False), side(swapped, True)
    if one is None or two is None:
        return UNPARSABLE
    return one if one == two else DRAW
