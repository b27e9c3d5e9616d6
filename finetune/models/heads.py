"""Which head a recipe trains on its base model, and the record of it in a run (`head.json`).

`causal-lm`: the model writes the answer after a prompt (`finetune/tasks/prompts.py`), trained with
TRL's SFTTrainer, for every task type. `seq2seq-lm`: an encoder-decoder (T5, BART) reads the
prompt and its decoder writes the answer, trained with transformers' Trainer on the answer's
cross-entropy, for every task type. `sequence-classification`: a classification head reads
the input text alone and scores the task's labels; `token-classification`: a head tags each
word of the text with IOB2 tags (`finetune/tasks/tagging.py`), for extraction; both trained with
transformers' Trainer. The head comes from the recipe (`model.head`), the task and what the
base model is (`models.model_role`): `auto` gives an encoder base a sequence-classification
head for classification and a token-classification head for extraction, an encoder-decoder
its seq2seq head, and a decoder its language-model head. Training records the head with its labels in the run; evaluation picks
the specialist's kind from that record (a run without one is a causal LM: runs trained
before heads existed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.files import write_json

CAUSAL_LM = "causal-lm"
SEQ2SEQ_LM = "seq2seq-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
TOKEN_CLASSIFICATION = "token-classification"
CLASSIFIER_HEADS = (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)
HEAD_FILE = "head.json"
# The transformers class that loads a model with each head, and the task each classifier serves.
AUTO_CLASS = {
    CAUSAL_LM: "AutoModelForCausalLM",
    SEQ2SEQ_LM: "AutoModelForSeq2SeqLM",
    SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
    TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
}
HEAD_TASK = {SEQUENCE_CLASSIFICATION: "classification", TOKEN_CLASSIFICATION: "extraction"}


def auto_class(head: str) -> Any:
    import transformers

    return getattr(transformers, AUTO_CLASS[head])


def resolved_head(head: str, role: str | None, task: str = "classification") -> str:
    """`model.head` with `auto` decided by the base model's role (None: not known, a decoder)
    and the task: an encoder classifies sequences, or tags tokens for extraction; an
    encoder-decoder writes the answer with its decoder."""
    if head != "auto":
        return head
    if role == "seq2seq":
        return SEQ2SEQ_LM
    if role != "encoder":
        return CAUSAL_LM
    return TOKEN_CLASSIFICATION if task == "extraction" else SEQUENCE_CLASSIFICATION


def head_problems(recipe: Any, role: str | None) -> list[tuple[str, str]]:
    """Why the recipe's head does not fit its base model, task or settings, as (key, message)."""
    head = resolved_head(recipe.model.head, role, recipe.task.type)
    if (head == SEQ2SEQ_LM) != (role == "seq2seq") and role is not None:
        return [("model.head", _writer_mismatch(recipe.model.base, role, head))]
    if head == SEQ2SEQ_LM:
        return _seq2seq_problems(recipe)
    if role == "encoder" and head == CAUSAL_LM:
        return [
            (
                "model.head",
                f"{recipe.model.base!r} is an encoder (BERT family), which has no language-model head "
                "to write answers with; use head: sequence-classification or token-classification "
                "(or auto), or a decoder base model",
            )
        ]
    return _classifier_problems(recipe, role, head) if head in CLASSIFIER_HEADS else []


def _writer_mismatch(base: str, role: str, head: str) -> str:
    if role == "seq2seq":
        return (
            f"{base!r} is an encoder-decoder (T5, BART): its decoder writes the answer, "
            f"which is head: seq2seq-lm (or auto); found {head!r}"
        )
    what = "an encoder (BERT family)" if role == "encoder" else "a decoder"
    return (
        f"head: seq2seq-lm needs an encoder-decoder base model (T5, Flan-T5, BART), but "
        f"{base!r} is {what}; use head: auto"
    )


def _seq2seq_problems(recipe: Any) -> list[tuple[str, str]]:
    return [
        (
            f"train.{key}",
            "joins several examples into one row, but an encoder-decoder reads one prompt "
            "per row and writes its answer apart; set it to false",
        )
        for key in ("packing", "padding_free")
        if getattr(recipe.train, key)
    ]


def _classifier_problems(recipe: Any, role: str | None, head: str) -> list[tuple[str, str]]:
    base, task, needed = recipe.model.base, recipe.task.type, HEAD_TASK[head]
    problems = []
    if task != needed:
        problems.append(
            (
                "task.type",
                f"{base!r} is an encoder: it trains a {head} head, which needs task.type: "
                f"{needed}; found {task!r}. Use a decoder base model (e.g. smollm2-135m-instruct) for "
                f"{task} tasks",
            )
            if role == "encoder"
            else (
                "model.head",
                f"{head} needs task.type: {needed}; found {task!r}. Use head: causal-lm (or auto)",
            )
        )
    if recipe.model.quantization != "none":
        problems.append(
            (
                "model.quantization",
                f"a {head} head trains on unquantized weights; found quantization "
                f"{recipe.model.quantization!r}. Use quantization: none",
            )
        )
    for key in ("packing", "padding_free"):
        if getattr(recipe.train, key):
            problems.append(
                (
                    f"train.{key}",
                    f"joins several examples into one row, but a {head} head reads "
                    "one text per row; set it to false",
                )
            )
    return problems + (_baseline_problems(recipe) if role == "encoder" else [])


def _baseline_problems(recipe: Any) -> list[tuple[str, str]]:
    """A `model: base` baseline prompts the base model to write the answer: an encoder cannot."""
    base = recipe.model.base
    return [
        (
            f"eval.baselines.{i}.model",
            f"{b.model!r} is the untuned base model prompted to write the answer, but {base!r} is an "
            "encoder with no language-model head to write one; name a decoder model instead (a registry "
            "name such as smollm2-135m-instruct, a local directory or a Hub id), or leave this baseline out",
        )
        for i, b in enumerate(recipe.eval.baselines)
        # A baseline of a kind of its own (`run:`, `endpoint:`, `engine:`) names its own model.
        if b.model in ("base", base) and b.kind_field() is None
    ]


def save_head(run_dir: str | Path, head: str, labels: list[str]) -> Path:
    """Record the run's head; `labels` are the classifier's outputs in order (its `id2label`)."""
    labels = list(labels) if head in CLASSIFIER_HEADS else []
    return write_json(Path(run_dir) / HEAD_FILE, {"head": head, "labels": labels})


def _record(run_dir: str | Path) -> dict[str, Any]:
    """The run's head.json; a run from before heads were recorded trained a causal LM."""
    path = Path(run_dir) / HEAD_FILE
    return json.loads(path.read_text()) if path.is_file() else {"head": CAUSAL_LM, "labels": []}


def run_head(run_dir: str | Path) -> str:
    """The head a run trained."""
    return _record(run_dir)["head"]


def run_labels(run_dir: str | Path) -> list[str]:
    """The classifier outputs a run recorded, in order (empty for a causal LM)."""
    return _record(run_dir)["labels"]
