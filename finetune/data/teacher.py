"""Training rows labelled by a teacher (`data.teacher`): which rows it is asked about, where its
answers are kept, which of them are kept for training and why the others are not, and the
card that says so.

The teacher itself runs a stage higher (`finetune.teach`: it is a system, and systems sit above
the data). This module reads what it wrote: one JSON line per answered row in
`<prepared>/teacher/<system>-<rows>-<key>.jsonl`, appended as the teacher goes, the last line
for an id winning. The key digests everything that shapes an answer (the baseline's settings,
the task's prompt and labels, the scoring settings), so a changed teacher starts a new file and
an unchanged one is never asked twice.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.data.read import DataError, Rejected, raise_for_rejects, read_file, unlabelled
from finetune.data.split import normalize
from finetune.files import read_jsonl
from finetune.recipe import Recipe
from finetune.tasks import metrics as M
from finetune.tasks.types import probabilities, task_type

# Why a row the teacher was asked about is not trained on, in the order they are checked.
FAILED, INVALID, UNSURE, BALANCE = (
    "request failed",
    "invalid answer",
    "below min_confidence",
    "balance",
)
HELD_OUT = "repeats a validation or test text"


@dataclass
class Selection:
    """The teacher-labelled rows kept for training, and how many were dropped, by reason."""

    kept: list[dict]
    dropped: collections.Counter = field(default_factory=collections.Counter)
    missing: list[str] = field(default_factory=list)  # ids the teacher has not answered yet


def teacher_key(recipe: Recipe) -> str:
    """A digest of everything that shapes the teacher's answers."""
    baseline = next(b for b in recipe.eval.baselines if b.name == recipe.data.teacher.system)
    what = {
        "baseline": baseline.model_dump(exclude={"name"}),
        "task": recipe.task.model_dump(),
        "scoring": [recipe.eval.length_normalize, recipe.eval.max_new_tokens],
        "max_length": recipe.model.max_length,
        "seed": recipe.seed,  # which in-context examples a teacher with shots is shown
        "version": 1,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def labels_path(recipe: Recipe, prepared: Path) -> Path:
    """Where the teacher's answers for this recipe's dataset are kept."""
    teacher = recipe.data.teacher
    slug = re.sub(r"[^\w.-]+", "_", teacher.system)
    return prepared / "teacher" / f"{slug}-{teacher.rows}-{teacher_key(recipe)[:12]}.jsonl"


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_answers(path: Path) -> dict[str, dict]:
    """The teacher's answers by row id (the last written for an id), a torn last line dropped."""
    if not path.is_file():
        return {}
    return {a["id"]: a for a in read_jsonl(path, torn_tail_ok=True)}


def _for_text(answer: dict | None, row: dict) -> bool:
    """Whether `answer` answers this row's text (not a text that had its id before)."""
    return answer is not None and answer["text_sha"] == text_digest(row["text"])


def answered(answer: dict | None, row: dict) -> bool:
    """Whether `answer` is a paid-for answer to this row's text: a failed request is asked
    again, and so is a row whose text changed under its id."""
    return _for_text(answer, row) and "failed" not in answer


@dataclass
class Asked:
    """The rows the teacher labels, its answers so far, and the unlabelled rows left out for
    repeating a held-out text (never labelled: the student would be trained on test items)."""

    rows: list[dict]
    answers: dict[str, dict]
    path: Path
    held_out_repeats: int = 0


def asked(recipe: Recipe, prepared: Path, human_train: list[dict]) -> Asked:
    """The training split's rows (their human labels kept aside, to score the teacher), or
    those of `data.unlabelled`, with the teacher's answers to them so far."""
    path = labels_path(recipe, prepared)
    if recipe.data.teacher.rows == "train":
        return Asked(human_train, read_answers(path), path)
    held = [*read_jsonl(prepared / "validation.jsonl"), *read_jsonl(prepared / "test.jsonl")]
    seen = {normalize(r["text"]) for r in held}
    rows = _unlabelled_rows(recipe)
    taken = [r for r in rows if normalize(r["text"]) not in seen]
    _check_ids_apart(taken, human_train)
    cap = recipe.data.teacher.max_rows
    taken = taken[:cap] if cap else taken
    return Asked(taken, read_answers(path), path, held_out_repeats=len(rows) - len(taken))


def _check_ids_apart(rows: list[dict], human_train: list[dict]) -> None:
    ids = {r["id"] for r in human_train}
    both = [r["id"] for r in rows if r["id"] in ids]
    if both:
        raise DataError(
            f"data.unlabelled: {len(both)} row id(s) are also training rows' ids (first: "
            f"{both[0]!r}); give the file ids of its own, or none (then `<file>-<line>`)"
        )


def _unlabelled_rows(recipe: Recipe) -> list[dict]:
    rows = list(unlabelled(read_file(recipe.data.unlabelled), recipe))
    bad = [r for r in rows if isinstance(r, Rejected)]
    if bad and recipe.data.on_bad_row == "error":
        raise_for_rejects(bad)
    return [r for r in rows if not isinstance(r, Rejected)]


def select(recipe: Recipe, rows: list[dict], answers: dict[str, dict]) -> Selection:
    """The rows relabelled with the teacher's answers, those it failed, answered invalidly or
    too unsurely dropped, and each label cut to the rarest's count if `balance` asks."""
    teacher, target = recipe.data.teacher, task_type(recipe.task).target
    selection = Selection([])
    for row in rows:
        answer = answers.get(row["id"])
        if not _for_text(answer, row):
            selection.missing.append(row["id"])
        elif reason := _refused(recipe, answer):
            selection.dropped[reason] += 1
        else:
            selection.kept.append(_relabelled(recipe, row, answer, target))
    if teacher.balance:
        selection.kept = _balanced(selection.kept, selection.dropped)
    return selection


def _refused(recipe: Recipe, answer: dict) -> str | None:
    if "failed" in answer:
        return FAILED
    if answer.get("invalid"):
        return INVALID
    floor = recipe.data.teacher.min_confidence
    if floor and answer.get("confidence") is None:
        raise DataError(
            f"data.teacher.min_confidence: the teacher {recipe.data.teacher.system!r} gives no "
            "label probabilities (it generates its answer); set it to 0, or score the labels"
        )
    return UNSURE if floor and answer["confidence"] < floor else None


def _relabelled(recipe: Recipe, row: dict, answer: dict, target: str) -> dict:
    """The row as the student sees it: the teacher's answer as its target; the human one, if
    the row had one, kept aside under `human` (read only to score the teacher)."""
    teacher = recipe.data.teacher
    out = {"id": row["id"], "text": row["text"], target: answer["answer"]}
    out["teacher"] = {"confidence": answer.get("confidence")}
    if target in row:
        out["teacher"]["human"] = row[target]
    if teacher.targets == "soft":
        out["soft_targets"] = soft_targets(recipe, answer)
    return out


def soft_targets(recipe: Recipe, answer: dict) -> dict[str, float]:
    """The teacher's label distribution: its label scores over `temperature`, normalized."""
    scores = answer.get("label_logprobs")
    if not scores:
        raise DataError(
            f"data.teacher.targets: soft targets need label scores, and the teacher "
            f"{recipe.data.teacher.system!r} generated its answer; set targets: hard"
        )
    t = recipe.data.teacher.temperature
    return probabilities({k: v / t for k, v in scores.items()})


def _balanced(kept: list[dict], dropped: collections.Counter) -> list[dict]:
    """As many rows of each label as the rarest label given has, the most confident first
    (ties in the rows' order); the rest dropped for balance, the order of the kept kept."""
    by_label = collections.defaultdict(list)
    for i, row in enumerate(kept):
        by_label[row["label"]].append((-(row["teacher"]["confidence"] or 0.0), i))
    count = min(len(v) for v in by_label.values()) if by_label else 0
    chosen = {i for ranked in by_label.values() for _, i in sorted(ranked)[:count]}
    dropped[BALANCE] += len(kept) - len(chosen)
    return [row for i, row in enumerate(kept) if i in chosen]


def teacher_split(recipe: Recipe, prepared: Path, human_train: list[dict]) -> list[dict]:
    """The training split a teacher made: the rows it labelled and kept, after the human
    rows with `rows: unlabelled`; refused while any row is still to be labelled."""
    todo = asked(recipe, prepared, human_train)
    selection = select(recipe, todo.rows, todo.answers)
    if selection.missing:
        raise DataError(
            f"data.teacher: {len(selection.missing)} of {len(todo.rows)} rows are not labelled "
            f"yet (first: {selection.missing[0]!r}); run `finetune teach RECIPE` first "
            "(`finetune train` and experiments run it for you)"
        )
    if recipe.data.teacher.rows == "train":
        return selection.kept
    return [*human_train, *selection.kept]


def teacher_quality(recipe: Recipe, scored: list[tuple[dict, Any]]) -> dict | None:
    """The teacher's primary metric against the human answers: `scored` pairs each row (its
    human answer under the task's target) with the teacher's answer; None when it is empty."""
    if not scored:
        return None
    metric = (recipe.eval.metrics or M.DEFAULT_METRICS[recipe.task.type])[0]
    golds = task_type(recipe.task).golds([row for row, _ in scored])
    preds = [answer for _, answer in scored]
    value = M.compute(
        recipe.task.type, metric, golds, preds, labels=list(recipe.task.labels) or None
    )
    return {"metric": metric, "value": value, "rows": len(scored)}


def teacher_card(recipe: Recipe, todo: Asked) -> dict[str, Any]:
    """What the teacher did with the rows it was asked (`asked`): how many it labelled, kept
    and dropped by reason, the labels it gave, its time and cost, and its quality where the
    human answers are known, over every answered row (a failed or invalid one counts as wrong)
    and over the rows kept."""
    teacher, kind = recipe.data.teacher, task_type(recipe.task)
    selection = select(recipe, todo.rows, todo.answers)
    target = kind.target
    answered_rows = [r for r in todo.rows if r["id"] in todo.answers]
    every = [(r, todo.answers[r["id"]].get("answer", kind.empty())) for r in answered_rows]
    kept = [
        ({"text": r["text"], target: r["teacher"]["human"]}, r[target])
        for r in selection.kept
        if "human" in r["teacher"]
    ]
    return {
        "teacher": teacher.system,
        "rows": teacher.rows,
        "answers_file": str(todo.path),
        "asked": len(todo.rows),
        "labelled": len(todo.rows) - len(selection.missing),
        "kept": len(selection.kept),
        "dropped": dict(selection.dropped),
        "held_out_repeats": todo.held_out_repeats,
        "settings": teacher.model_dump(exclude={"system", "rows"}),
        "labels": dict(collections.Counter(str(r[target]) for r in selection.kept))
        if recipe.task.labels
        else None,
        "cost": unit_cost(recipe, [todo.answers[r["id"]] for r in answered_rows]),
        "quality": teacher_quality(recipe, [(r, a) for r, a in every if target in r]),
        "quality_kept": teacher_quality(recipe, kept),
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The teacher's card as Markdown, beside its answers file."""
    cost, quality = card["cost"], card["quality"]
    lines = [
        f"# Teacher labels: {card['teacher']}",
        "",
        f"- rows: {card['rows']}; asked {card['asked']}, labelled {card['labelled']}, "
        f"kept {card['kept']}",
        f"- dropped: {', '.join(f'{k} {v}' for k, v in card['dropped'].items()) or 'none'}",
        f"- left out for repeating a held-out text: {card['held_out_repeats']}",
        f"- labelling: {cost['seconds']:.1f} s, ${cost['usd']:.4f} ({cost['basis']}), "
        f"{cost['input_tokens']:,} input and {cost['output_tokens']:,} output tokens",
    ]
    if card["labels"] is not None:
        lines.append(f"- labels kept: {', '.join(f'{k} {v}' for k, v in card['labels'].items())}")
    if quality:
        lines.append(
            f"- teacher {quality['metric']} against the human labels: {quality['value']:.3f} "
            f"on {quality['rows']} rows"
        )
    return "\n".join(lines) + "\n"


def unit_cost(recipe: Recipe, answers: list[dict]) -> dict[str, Any]:
    """What labelling cost: the teacher's seconds, and USD by its token prices where the price
    table names it, else by machine time."""
    prices, name = recipe.eval.prices, recipe.data.teacher.system
    seconds = sum(a.get("seconds", 0.0) for a in answers)
    tokens_in = sum(a.get("input_tokens", 0) for a in answers)
    tokens_out = sum(a.get("output_tokens", 0) for a in answers)
    if (tokens := prices.token_prices(name)) is not None:
        usd, basis = (tokens_in * tokens[0] + tokens_out * tokens[1]) / 1e6, "token prices"
    else:
        usd, basis = seconds * prices.machine_per_hour / 3600, "machine time"
    return {
        "seconds": seconds,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "usd": usd,
        "basis": basis,
    }
