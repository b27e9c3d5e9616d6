"""The tfidf kind, the statistical baseline: a TF-IDF + logistic-regression classifier fitted on the run's training
rows, and the majority-class floor every classification result is read against.

Both are what a practitioner tries before any neural model. The classifier (scikit-learn,
settings in `eval.tfidf`) is fitted when the evaluation loads it, in seconds, on the same
training rows the specialist was given; it predicts the most probable label and keeps every
label's log-probability, as the other classifiers do. The floor is the training split's most
common label answered for every item.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from finetune.data import load_split
from finetune.deps import require
from finetune.recipe import Recipe
from finetune.systems.base import Context, Inference, Kind, Loaded, Plan, System
from finetune.tasks.types import LABELS, task_type

_FITTED: dict[str, Any] = {}  # the fitted pipeline by training rows and settings, per process


class Tfidf(Kind):
    """The `Kind` of the TF-IDF classifier, which joins every classification evaluation
    unless `eval.tfidf.enabled` is off; its key is `tfidf:<name>`."""

    name = "tfidf"
    general = False

    def extra_systems(self, recipe: Recipe) -> list[System]:
        tfidf = recipe.eval.tfidf
        if tfidf.enabled and task_type(recipe.task).request == LABELS:
            return [System(tfidf.name, "baseline", "tfidf", kind=self.name)]
        return []

    def load(self, recipe: Recipe, run_dir: Path, key: str) -> Loaded:

        rows = load_split(recipe, "train")
        pipeline = fitted(recipe, rows)
        size = len(pickle.dumps(pipeline))
        description = describe(recipe, len(rows))
        return Loaded(
            pipeline, None, description, self, {"model": size}, identity=_key(recipe, rows)
        )

    def plan(
        self, recipe: Recipe, system: System, key: str, loaded: Loaded, context: Context
    ) -> Plan:
        texts = [item["text"] for item in context.items]
        words = [len(text.split()) for text in texts]
        return Plan(
            system, key, "tf-idf features", _inference(recipe), texts, words, [False] * len(texts)
        )

    def sizes(self, model: Any) -> tuple[int, int, int]:
        logreg = model.named_steps["logreg"]
        weights = logreg.coef_.nbytes + logreg.intercept_.nbytes
        return weights, logreg.coef_.size + logreg.intercept_.size, 0

    def instance_bytes(self, recipe: Recipe, key: str) -> int | None:
        return 0  # a sparse vocabulary and one weight per feature and label: always kept loaded


def fitted(recipe: Recipe, rows: list[dict]) -> Any:
    """The pipeline fitted on `rows`, fitted once per process for the same rows and settings."""
    digest = _key(recipe, rows)
    if digest not in _FITTED:
        pipeline = build(recipe)
        pipeline.fit([r["text"] for r in rows], [r["label"] for r in rows])
        _FITTED[digest] = pipeline
    return _FITTED[digest]


def _key(recipe: Recipe, rows: list[dict]) -> str:
    """What a fitted pipeline depends on: its settings, the seed and the training rows."""
    facts = [recipe.eval.tfidf.model_dump(), recipe.seed, [(r["text"], r["label"]) for r in rows]]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()


def build(recipe: Recipe) -> Any:
    """An unfitted scikit-learn pipeline: word and/or character TF-IDF, then logistic regression."""
    require("sklearn", package="scikit-learn", needed_for="eval.tfidf")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    s = recipe.eval.tfidf
    common = {"min_df": s.min_df, "sublinear_tf": s.sublinear_tf, "max_features": s.max_features}
    parts = []
    if s.word_ngrams:
        parts.append(("word", TfidfVectorizer(ngram_range=tuple(s.word_ngrams), **common)))
    if s.char_ngrams:
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(s.char_ngrams), **common)
        parts.append(("char", vectorizer))
    logreg = LogisticRegression(
        C=s.c,
        class_weight=None if s.class_weight == "none" else s.class_weight,
        max_iter=2000,
        random_state=recipe.seed,
    )
    return Pipeline([("features", FeatureUnion(parts)), ("logreg", logreg)])


def describe(recipe: Recipe, rows: int) -> str:
    s = recipe.eval.tfidf
    grams = []
    if s.word_ngrams:
        grams.append(f"word {s.word_ngrams[0]}-{s.word_ngrams[1]}-grams")
    if s.char_ngrams:
        grams.append(f"char {s.char_ngrams[0]}-{s.char_ngrams[1]}-grams")
    return f"TF-IDF ({' + '.join(grams)}) + logistic regression (C={s.c:g}), fitted on {rows:,} training rows"


def _inference(recipe: Recipe) -> Inference:
    labels = list(recipe.task.labels)

    def classify(model, texts, batch_size, share_prefix, on_batch=None):
        columns = [list(model.classes_).index(x) if x in model.classes_ else None for x in labels]
        predictions, details = [], []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            for row in model.predict_log_proba(batch):
                scores = [None if c is None else round(float(row[c]), 5) for c in columns]
                best = int(np.argmax([-np.inf if x is None else x for x in scores]))
                predictions.append(labels[best])
                details.append({"label_logprobs": dict(zip(labels, scores, strict=True))})
            if on_batch:
                on_batch(len(batch))
        return predictions, details, [0] * len(texts)

    return Inference(0, classify)
