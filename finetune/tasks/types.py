"""The task types, and the one place that says what each asks of a system and how it reads
and scores the answers.

A kind of system (`finetune.systems`) answers requests, never task types:
- `LABELS`: every label's log-likelihood as the answer after the prompt; the likeliest label
  is the prediction;
- `GENERATE`: a greedy answer, which the task reads (`TaskType.read`): extraction parses its
  entities, QA takes the text;
- a token classifier's tags, which only an extraction specialist trained as a tagger gives.

Classification asks for label likelihoods; extraction and QA ask for generated answers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from finetune.tasks import metrics as M
from finetune.tasks.entities import locate, parsable, parse_entities
from finetune.tasks.labels import label_of

LABELS = "labels"
GENERATE = "generate"


@dataclass(frozen=True)
class TaskType:
    name: str
    request: str  # LABELS or GENERATE: what every system is asked for
    target: str  # the item field holding the gold answer

    def empty(self) -> Any:
        """What an item predicts when its request failed: scored wrong, never dropped."""
        return ""

    def read(self, text: str, labels: list[str]) -> tuple[Any, dict[str, Any]]:
        """A generated answer as a prediction, with the details kept beside it (an empty
        answer is marked invalid: counted, scored as it is, never taught)."""
        answer = text.strip()
        return answer, ({} if answer else {"invalid": True})

    def target_text(self, example: dict[str, Any]) -> str:
        """The answer a model should write for an example."""
        return example[self.target]

    def golds(self, items: list[dict]) -> list[Any]:
        """The items' gold answers, placed in their texts where the task has places."""
        texts = [item["text"] for item in items]
        return locate(self.name, texts, [item[self.target] for item in items])

    def placed(self, texts: list[str], golds: list[Any], predictions: list[Any]) -> list[Any]:
        """Predictions given the places in the texts that scoring compares (extraction)."""
        return locate(self.name, texts, golds, predictions)

    def per_class(self, golds: list, preds: list, labels: list[str] | None) -> list:
        return []

    def confusion(self, golds: list, preds: list, labels: list[str] | None) -> Any:
        return None

    def paired_test(self) -> bool:
        """Whether two systems are compared item by item on right and wrong (McNemar)."""
        return False

    def output(self, prediction: Any, details: dict[str, Any]) -> dict[str, Any]:
        """One predicted row's fields, as `finetune predict` writes them: the answer under the
        name the data gives it (`label`, `entities`, `answer`), then the system's details."""
        return {self.target: prediction, **details}


class Classification(TaskType):
    def read(self, text: str, labels: list[str]) -> tuple[Any, dict[str, Any]]:
        label = label_of(text, labels)
        return (label, {"raw": text}) if label else ("", {"raw": text, "invalid": True})

    def per_class(self, golds: list, preds: list, labels: list[str] | None) -> list:
        return M.per_class(golds, preds, labels)

    def confusion(self, golds: list, preds: list, labels: list[str] | None) -> Any:
        return M.confusion_matrix(golds, preds, labels)

    def paired_test(self) -> bool:
        return True

    def output(self, prediction: Any, details: dict[str, Any]) -> dict[str, Any]:
        """The label, and every label's probability: the label log-likelihoods normalized over
        the labels (None where the system gave none, as a generated answer does)."""
        scores = details.get("label_logprobs")
        return {"label": prediction, "probabilities": probabilities(scores), **details}


class Extraction(TaskType):
    def empty(self) -> Any:
        return []

    def read(self, text: str, labels: list[str]) -> tuple[Any, dict[str, Any]]:
        """The entities of a JSON list; an answer with no JSON list in it is marked invalid
        (`[]` is a valid answer: no entities)."""
        details = {"raw": text} if parsable(text) else {"raw": text, "invalid": True}
        return parse_entities(text), details

    def target_text(self, example: dict[str, Any]) -> str:
        # Character offsets, where a dataset has them, are for span-level scoring; the model is
        # taught to write what it can: each entity's text and type.
        entities = [{"text": e["text"], "type": e["type"]} for e in example["entities"]]
        return json.dumps(entities, ensure_ascii=False)


def probabilities(logprobs: dict[str, float] | None) -> dict[str, float] | None:
    """Log-likelihoods over the labels as probabilities that sum to 1 (a softmax), to 6 places."""
    if not logprobs:
        return None
    top = max(logprobs.values())
    weights = {label: math.exp(value - top) for label, value in logprobs.items()}
    total = sum(weights.values())
    return {label: round(w / total, 6) for label, w in weights.items()}


TASK_TYPES: dict[str, TaskType] = {
    "classification": Classification("classification", LABELS, "label"),
    "extraction": Extraction("extraction", GENERATE, "entities"),
    "qa": TaskType("qa", GENERATE, "answer"),
}


def task_type(task: Any) -> TaskType:
    """The task type of a recipe's `task` section (or of its type's name)."""
    return TASK_TYPES[task if isinstance(task, str) else task.type]
