"""Deterministic stratified splits, dataset fingerprints, and the train/test leakage check.

The split orders each stratum by a hash of (seed, id), so it depends on the seed and the
rows but not on the order the rows arrive in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from typing import Any

from finetune.recipe import Recipe

SPLITS = ("train", "validation", "test")
NEAR_DUP_JACCARD = 0.6
SHINGLE = 5


def rank(seed: int, example_id: str) -> str:
    """The order of rows for the split and for capped training sets: a hash of (seed, id)."""
    return hashlib.sha256(f"{seed}:{example_id}".encode()).hexdigest()


def split_seed(recipe: Recipe) -> int:
    """The seed of the split: `data.split_seed`, else the recipe's seed."""
    return recipe.data.split_seed if recipe.data.split_seed is not None else recipe.seed


def stratified_split(examples: list[dict], recipe: Recipe) -> dict[str, list[dict]]:
    """Split each label group by the recipe's fractions (QA and extraction: one group)."""
    fractions = recipe.data.split
    seed = split_seed(recipe)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for group in _ranked_label_groups(examples, seed):
        n_test = round(len(group) * fractions.test)
        n_val = round(len(group) * fractions.validation)
        splits["test"] += group[:n_test]
        splits["validation"] += group[n_test : n_test + n_val]
        splits["train"] += group[n_test + n_val :]
    return {name: sorted(rows, key=lambda e: rank(seed, e["id"])) for name, rows in splits.items()}


def carve_validation(train: list[dict], recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """Take a validation split out of an explicit train file, stratified the same way."""
    share = recipe.data.split.validation / max(
        recipe.data.split.train + recipe.data.split.validation, 1e-9
    )
    rest, validation = [], []
    for group in _ranked_label_groups(train, split_seed(recipe)):
        n_val = round(len(group) * share)
        validation += group[:n_val]
        rest += group[n_val:]
    return rest, validation


def nested_order(rows: list[dict], seed: int) -> list[dict]:
    """The rows in the order a capped training set takes them: each label's rows ranked by
    (seed, id) and interleaved by their share, so that every prefix keeps each label's share to
    within one row and a smaller prefix is part of every larger one."""
    groups = _ranked_label_groups(rows, seed)
    keyed = [
        ((k + 0.5) / len(group), g, row)
        for g, group in enumerate(groups)
        for k, row in enumerate(group)
    ]
    return [row for _, _, row in sorted(keyed, key=lambda t: (t[0], t[1]))]


def _ranked_label_groups(examples: list[dict], seed: int) -> list[list[dict]]:
    """Examples grouped by label (labels in sorted order), each group ordered by rank."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for example in sorted(examples, key=lambda e: rank(seed, e["id"])):
        groups[example.get("label", "")].append(example)
    return [groups[label] for label in sorted(groups)]


def fingerprint(splits: dict[str, list[dict]], recipe: Recipe) -> str:
    """sha256 over the split contents and the parameters that produced them."""
    digest = hashlib.sha256()
    params = {
        "seed": split_seed(recipe),
        "split": recipe.data.split.model_dump(),
        "dedupe": recipe.data.dedupe,
        "labels": recipe.task.labels,
        "label_map": recipe.data.label_map,
    }
    digest.update(json.dumps(params, sort_keys=True).encode())
    for name in SPLITS:
        for example in splits[name]:
            digest.update(f"{name}\0".encode())
            digest.update(json.dumps(example, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def _shingles(text: str) -> set[str]:
    words = normalize(text).split()
    if len(words) < SHINGLE:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def leakage(splits: dict[str, list[dict]]) -> dict[str, Any]:
    """Exact (after normalization) and near (5-gram Jaccard >= 0.6) duplicates of held-out rows in train."""
    exact_index: dict[str, list[str]] = defaultdict(list)
    shingle_index: dict[str, set[int]] = defaultdict(set)
    train = splits["train"]
    train_shingles = [_shingles(e["text"]) for e in train]
    for i, example in enumerate(train):
        exact_index[normalize(example["text"])].append(example["id"])
        for s in train_shingles[i]:
            shingle_index[s].add(i)
    report: dict[str, Any] = {}
    for name in ("validation", "test"):
        exact, near = [], []
        for example in splits[name]:
            key = normalize(example["text"])
            if key in exact_index:
                exact.append({"id": example["id"], "train_ids": exact_index[key]})
                continue
            matches = _near_matches(_shingles(example["text"]), shingle_index, train_shingles)
            if matches:
                near.append(
                    {
                        "id": example["id"],
                        "train_ids": [train[i]["id"] for i, _ in matches],
                        "jaccard": round(matches[0][1], 3),
                    }
                )
        report[name] = {"exact": exact, "near": near}
    return report


def _near_matches(
    shingles: set[str], index: dict[str, set[int]], train_shingles: list[set[str]]
) -> list[tuple[int, float]]:
    counts: dict[int, int] = defaultdict(int)
    for s in shingles:
        for i in index.get(s, ()):
            counts[i] += 1
    found = []
    for i, shared in counts.items():
        jaccard = shared / len(shingles | train_shingles[i])
        if jaccard >= NEAR_DUP_JACCARD:
            found.append((i, jaccard))
    return sorted(found, key=lambda m: -m[1])


def drop_leaked(splits: dict[str, list[dict]], report: dict[str, Any]) -> int:
    """Remove train rows that duplicate a held-out row; returns how many were removed."""
    leaked = {
        tid
        for name in ("validation", "test")
        for kind in ("exact", "near")
        for hit in report[name][kind]
        for tid in hit["train_ids"]
    }
    before = len(splits["train"])
    splits["train"] = [e for e in splits["train"] if e["id"] not in leaked]
    return before - len(splits["train"])
