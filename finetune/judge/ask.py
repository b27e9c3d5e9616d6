"""The judge as a system: its games asked through the one systems interface, its replies kept.

The judge is `eval.judge.system`, a baseline entry, run by its kind as any baseline is
(`systems.answers`): a recipe of its own (`judge_recipe`) names it as the only baseline and
asks for a generated answer to a prompt that is the whole game, so an engine, an endpoint (with
its cache, retries, concurrency and spend cap) or a local model judges alike.

Replies are appended, a chunk at a time, to `<tracking.runs_dir>/judgments/<judge>.jsonl`
under each prompt's digest, and a game already replied to is never asked again: a second
evaluation, another run's evaluation of the same answers, or a killed one resumed asks only
what is missing. A failed request is kept as failed, left unjudged and asked again next time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.files import append_jsonl, cut_torn_tail, read_jsonl
from finetune.judge.games import Game
from finetune.progress import progress
from finetune.recipe import Recipe
from finetune.systems.answers import answer_items, chunks
from finetune.systems.base import Context
from finetune.systems.pool import loaded_model
from finetune.systems.registry import instance_key, kind_of, systems_of

JUDGMENTS_DIR = "judgments"
CHUNK = 16  # games per chunk: what a kill can lose


@dataclass
class Replies:
    by_key: dict[str, dict[str, Any]]  # a game's key -> its kept reply (or failure)
    asked: int  # games sent to the judge by this call
    seconds: float  # the judge's time on them
    path: Path

    def reply(self, game: Game) -> str | None:
        """The judge's reply to the game; None where its request failed."""
        entry = self.by_key.get(game.key) or {}
        return entry.get("reply")


def judge_recipe(recipe: Recipe) -> Recipe:
    """The recipe the judge runs under: it is the only baseline, and its prompt is the game."""
    judge = recipe.eval.judge
    task = recipe.task.model_copy(update={"instruction": "", "template": "{input}"})
    model = recipe.model.model_copy(update={"max_length": judge.max_length})
    ev = recipe.eval.model_copy(
        update={
            "baselines": [judge.system],
            "max_new_tokens": judge.max_new_tokens,
            "cascades": [],
            "judge": None,
        }
    )
    data = recipe.data.model_copy(update={"teacher": None})
    return recipe.model_copy(update={"task": task, "model": model, "eval": ev, "data": data})


def judgments_path(recipe: Recipe) -> Path:
    """Where this judge's replies are kept: one file per judge and reply settings."""
    judge = recipe.eval.judge
    settings = [judge.system.model_dump(), judge.max_new_tokens, judge.max_length]
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", judge.system.name).strip("-") or "judge"
    return Path(recipe.tracking.runs_dir) / JUDGMENTS_DIR / f"{name}-{digest}.jsonl"


def kept_replies(path: Path) -> dict[str, dict[str, Any]]:
    """Each game's latest entry in the file (a failure is followed by its retry)."""
    if not path.is_file():
        return {}
    return {entry["key"]: entry for entry in read_jsonl(path, torn_tail_ok=True)}


def replies(recipe: Recipe, run_dir: Path, games: list[Game], console: Any = None) -> Replies:
    """The judge's reply to every game: kept ones (unless `eval.reuse` is false), the others
    asked now, in chunks, each appended before the next."""
    path = judgments_path(recipe)
    kept = kept_replies(path) if recipe.eval.reuse else {}
    unique = {g.key: g for g in games}
    pending = [g for k, g in unique.items() if "reply" not in kept.get(k, {})]
    start = time.perf_counter()
    if pending:
        cut_torn_tail(path)
        with named_as_judge():
            _ask(judge_recipe(recipe), run_dir, path, pending, console)
        kept |= {k: e for k, e in kept_replies(path).items() if k in unique}
    return Replies(kept, len(pending), time.perf_counter() - start, path)


def check_judge(recipe: Recipe, run_dir: Path) -> None:
    """The judge's kind's checks that can fail fast (an endpoint's key and host), before an
    evaluation spends anything."""
    if recipe.eval.judge is not None:
        judging = judge_recipe(recipe)
        _, key = _judge_system(judging)
        with named_as_judge():
            kind_of(key, run_dir, judging).check(judging, key)


@contextlib.contextmanager
def named_as_judge() -> Iterator[None]:
    """Errors that name the judge's settings by their key in its own recipe (the only
    baseline there) name them as the user wrote them, under `eval.judge.system`."""
    try:
        yield
    except FinetuneError as exc:
        exc.args = tuple(
            a.replace("eval.baselines.0.", "eval.judge.system.") if isinstance(a, str) else a
            for a in exc.args
        )
        raise


def _judge_system(recipe: Recipe) -> tuple[Any, str]:
    """The judge's system and instance key in its own recipe."""
    (system,) = [s for s in systems_of(recipe) if s.role == "baseline"]
    return system, instance_key(recipe, system)


def _ask(recipe: Recipe, run_dir: Path, path: Path, games: list[Game], console: Any) -> None:
    system, key = _judge_system(recipe)
    kind_of(key, run_dir, recipe).check(recipe, key)
    context = Context(run_dir, [], [])
    with loaded_model(recipe, run_dir, key) as loaded, progress(console, unit="games") as bar:
        task = bar.add_task(f"judging with {system.name}", total=len(games))
        advance = functools.partial(bar.advance, task)
        for batch in chunks(iter(games), CHUNK):
            items = [{"id": g.key, "text": g.prompt} for g in batch]
            start = time.perf_counter()
            out = answer_items(recipe, system, key, loaded, context, items, advance)
            each = (time.perf_counter() - start) / len(batch)
            append_jsonl(
                path,
                [
                    _entry(row, tokens_in, tokens_out, each)
                    for row, tokens_in, tokens_out in zip(
                        out.rows, out.input_tokens, out.output_tokens, strict=True
                    )
                ],
            )


def _entry(row: dict, tokens_in: int, tokens_out: int, seconds: float) -> dict[str, Any]:
    entry = {"key": row["id"], "seconds": seconds}
    if "failed" in row:
        return {**entry, "failed": row["failed"]}
    extra = {"truncated": True} if row.get("truncated") else {}
    return {
        **entry,
        "reply": row["answer"],
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        **extra,
    }
