"""`finetune serve RUN --fallback NAME`: the run's evaluated cascade, served.

The specialist answers every text; a text whose confidence (read from the specialist's label
scores as the evaluation read it: its signal and fitted temperature) is below the cascade's
threshold goes to the fallback, one of the run's baselines (an endpoint, or an engine or
local model loaded here), which then answers it. The threshold is the one `finetune eval`
chose on validation items for the cascade from the specialist to NAME (`eval.cascades`), or
`--threshold`. Every answer says who gave it (`answered_by`), the specialist's confidence,
and whether it was escalated. The fallback has its own worker (`Batcher`), so escalated
texts from concurrent requests run as one batch while the specialist goes on with new ones.
If the fallback fails or its queue is full, the specialist's answer is given with
`fallback_error` saying why: a cascade degrades to its first system, never to an error.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError, did_you_mean
from finetune.evaluate import EVAL_DIR, RESULTS_FILE
from finetune.evaluate.calibration import label_scores
from finetune.evaluate.cascade import confidence
from finetune.recipe import Recipe
from finetune.systems.answers import Answers
from finetune.systems.base import SPECIALIST


@dataclass(frozen=True)
class Route:
    """Where a text goes: to `fallback` when its confidence is below `threshold`."""

    fallback: str
    threshold: float
    temperature: float = 1.0
    signal: str = "probability"
    cascade: str | None = None  # the evaluated cascade it follows; None for --threshold alone


def route_for(
    run_dir: Path, recipe: Recipe, fallback: str, threshold: float | None = None
) -> Route:
    """The route of the run's evaluated cascade from the specialist to `fallback`; with
    `threshold`, that threshold (and the cascade's signal and temperature, if there is one)."""
    systems = [b.name for b in recipe.eval.baselines]
    if fallback not in systems:
        raise FinetuneError(
            f"--fallback: the run has no baseline {fallback!r}.{did_you_mean(fallback, systems)} "
            f"Its baselines: {', '.join(systems) or 'none'}"
        )
    found = _evaluated(run_dir, fallback)
    if found is None and threshold is None:
        raise FinetuneError(
            f"--fallback: {run_dir} has no evaluated cascade from the specialist to {fallback!r}; "
            f"add one to eval.cascades and run `finetune eval`, or give --threshold"
        )
    if found is None:
        return Route(fallback, threshold)
    name, info = found
    return Route(
        fallback,
        info["threshold"] if threshold is None else threshold,
        info["temperature"],
        info["confidence"],
        name,
    )


def _evaluated(run_dir: Path, fallback: str) -> tuple[str, dict[str, Any]] | None:
    path = run_dir / EVAL_DIR / RESULTS_FILE
    if not path.is_file():
        return None
    for s in json.loads(path.read_text())["systems"]:
        c = s.get("cascade")
        if c and c["first"] == SPECIALIST and c["fallback"] == fallback:
            return s["name"], c
    return None


@dataclass
class Escalation:
    """A served run's route and its fallback's worker; counts what it escalated."""

    route: Route
    labels: list[str]
    batcher: Any  # the fallback's `Batcher`
    escalated: int = 0
    failed: int = 0
    # Both workers count: the specialist's when it routes, the fallback's when it answers.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def follow(
        self, first: concurrent.futures.Future, items: list[dict]
    ) -> concurrent.futures.Future:
        """The request's answers once the specialist's are in and the unsure ones replaced."""
        out: concurrent.futures.Future = concurrent.futures.Future()
        first.add_done_callback(lambda f: self._route(f, items, out))
        return out

    def _route(self, first: concurrent.futures.Future, items: list[dict], out) -> None:
        if first.exception() is not None:
            out.set_exception(first.exception())
            return
        answers = first.result()
        scores = label_scores(answers.rows, self.labels)
        conf = confidence(self.route.signal, scores, self.route.temperature)
        rows = [
            {**row, "answered_by": SPECIALIST, "confidence": round(float(c), 6), "escalated": False}
            for row, c in zip(answers.rows, conf, strict=True)
        ]
        sent = [i for i, c in enumerate(conf) if c < self.route.threshold]
        with self._lock:
            self.escalated += len(sent)
        if not sent:
            out.set_result(Answers(rows, answers.input_tokens, answers.output_tokens))
            return
        for i in sent:
            rows[i]["escalated"] = True
        try:
            later = self.batcher.submit([items[i] for i in sent])
        except Exception as exc:  # its queue is full: the specialist's answers stand
            self._keep_first(rows, sent, exc)
            out.set_result(Answers(rows, answers.input_tokens, answers.output_tokens))
            return
        later.add_done_callback(lambda f: self._merge(f, answers, rows, sent, out))

    def _merge(self, later, answers: Answers, rows: list, sent: list[int], out) -> None:
        inputs, outputs = list(answers.input_tokens), list(answers.output_tokens)
        if later.exception() is not None:
            self._keep_first(rows, sent, later.exception())
        else:
            theirs = later.result()
            for k, i in enumerate(sent):
                mine = rows[i]
                if "failed" in theirs.rows[k]:  # its request failed after retries
                    self._keep_first(rows, [i], theirs.rows[k]["failed"])
                    continue
                rows[i] = {
                    **theirs.rows[k],
                    "id": mine["id"],
                    "answered_by": self.route.fallback,
                    "confidence": mine["confidence"],
                    "escalated": True,
                }
                inputs[i] += theirs.input_tokens[k]
                outputs[i] += theirs.output_tokens[k]
        out.set_result(Answers(rows, inputs, outputs))

    def _keep_first(self, rows: list, sent: list[int], exc: BaseException | str) -> None:
        with self._lock:
            self.failed += len(sent)
        for i in sent:
            rows[i]["fallback_error"] = f"{self.route.fallback}: {exc}"

    def counts(self) -> dict[str, Any]:
        return {
            "fallback": self.route.fallback,
            "threshold": self.route.threshold,
            "escalated": self.escalated,
            "fallback_failed": self.failed,
            "fallback_pending": self.batcher.pending,
        }
