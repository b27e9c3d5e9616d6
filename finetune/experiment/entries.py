"""What an experiment's report is built from: one `Entry` per system and evaluated cell, read
from the cells' `results.json` and predictions, and grouped by training size and specialist
kind.

A specialist kind is a cell's values other than its training size and seed (and the keys that
vary together with the size); the TF-IDF classifier each cell fits on its training rows is a
kind of its own. General systems are scored on the same test items in every cell, so each is
taken once."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.experiment.cells import Cell, source
from finetune.experiment.judged import judged_view
from finetune.experiment.schema import Experiment
from finetune.report.decision import Candidate
from finetune.systems import registry

# The cost figures a system is weighed on: (Candidate attribute, axis label, name).
FRONTS = (
    ("p50_ms", "p50 latency (ms)", "p50 latency"),
    ("usd_per_1k", "cost per 1k requests (USD)", "cost per 1k requests"),
    ("memory_gb", "peak memory (GB)", "peak memory"),
)


SIZE_KEY = "data.max_train_examples"


SEED_KEYS = ("seed",)


GENERAL = "general"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # the curve it belongs to; "general" for a general system
    train_examples: int | None
    seed: int | None
    metric: dict[str, float]  # value, low, high of the primary metric
    candidate: Candidate
    correct: dict[str, bool]  # item id -> right on the primary metric
    short: str = ""  # a label short enough for a plot
    # Each general system's correctness in the cell this entry comes from, by name: what the
    # entry is paired with (a few-shot system's examples are drawn by the cell's seed).
    against: dict[str, dict[str, bool]] = field(default_factory=dict)
    labelling_usd: float | None = None  # what its training labels cost; 0 for a general system
    teacher: dict | None = None  # a taught specialist against its teacher (results' `teacher`)


def entries(experiment: Experiment, cells: list[Cell]) -> tuple[str, list[Entry]]:
    """The primary metric and every system of the evaluated cells, each once: a general system
    that answered differently in some cells (its shots drawn by another seed) once per variant."""
    found: dict[Any, Entry] = {}
    variants: dict[str, list[tuple[int, dict[str, bool], dict]]] = defaultdict(list)
    seeded, metric = any(k in SEED_KEYS for k in _varied(experiment)), ""
    for cell in cells:
        results_path = cell.run_dir() / "eval" / "results.json"
        if not results_path.is_file():
            continue
        results = json.loads(results_path.read_text())
        correct = _correct(cell.run_dir() / "eval" / "predictions.jsonl")
        if experiment.judge_against is not None:
            results, correct = judged_view(results, cell.run_dir(), experiment.judge_against)
        metric = results["metrics"][0]
        size = json.loads((cell.run_dir() / "train_summary.json").read_text())["train_examples"]
        seed = cell.recipe.seed
        at = f" @ {size}" + (f", seed {seed}" if seeded else "")
        generals = {
            s["name"]: s
            for s in results["systems"]
            if s["role"] == "baseline" and registry.kind(s["kind"]).general
        }
        against = {name: correct[name] for name in generals}
        for name, system in generals.items():
            if all(right != correct[name] for _, right, _ in variants[name]):
                variants[name].append((seed, correct[name], system))
        for system in results["systems"]:
            name = system["name"]
            if name in generals:
                continue
            curve = _curve(experiment, cell, system)
            key = (curve, size, seed)
            entry = _entry(curve + at, curve, size, seed, metric, system, correct[name], against)
            found.setdefault(key, _with_labelling(entry, cell, results, system))
    general = [
        _entry(
            name if len(vs) == 1 else f"{name} [seed {seed}]",
            GENERAL,
            None,
            None,
            metric,
            system,
            right,
            {},
            labelling_usd=0.0,  # a general system is used as it comes
        )
        for name, vs in variants.items()
        for seed, right, system in vs
    ]
    return metric, [*found.values(), *general]


def _with_labelling(entry: Entry, cell: Cell, results: dict, system: dict) -> Entry:
    """The entry with what its training labels cost, the teacher's labelling (from the cell's
    evaluation) or the human labels at the recipe's price, and its candidate likewise; a
    taught specialist also with its call against the teacher."""
    taught = results.get("teacher")
    if taught is not None and taught.get("labelling"):
        usd = taught["labelling"]["cost"]["usd"]
    else:
        usd = entry.train_examples * cell.recipe.eval.prices.per_human_label
    return dataclasses.replace(
        entry,
        labelling_usd=usd,
        teacher=taught if system["role"] == "specialist" else None,
        candidate=dataclasses.replace(entry.candidate, labelling_usd=usd),
    )


def _varied(experiment: Experiment) -> set[str]:
    return set(experiment.axes) | {k for group in experiment.paired for k in group}


def per_size(found: list[Entry]) -> list[Entry]:
    """The systems a deployment chooses between: each specialist kind at each training size,
    its seeds' runs as one (mean metric, median p50, cost and memory), and each general system.
    Picking the luckiest seed's run by its test score would overstate what that recipe gives."""
    groups: dict[Any, list[Entry]] = defaultdict(list)
    for e in found:
        groups[e.name if e.kind == GENERAL else (e.kind, e.train_examples)].append(e)
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        first, values = runs[0], [e.metric["value"] for e in runs]
        name = f"{first.kind} @ {first.train_examples} (mean of {len(runs)} seeds)"
        candidate = Candidate(
            name,
            statistics.mean(values),
            **{a: _median(getattr(e.candidate, a) for e in runs) for a, _, _ in FRONTS},
            labelling_usd=_median(e.labelling_usd for e in runs),
        )
        metric = {"value": candidate.value, "low": min(values), "high": max(values)}
        metric["seeds"] = len(runs)  # low and high: the range over seeds, not an interval
        short = f"{first.kind} @ {first.train_examples}"
        out.append(
            Entry(
                name,
                first.kind,
                first.train_examples,
                None,
                metric,
                candidate,
                {},
                short,
                labelling_usd=candidate.labelling_usd,
            )
        )
    return out


def _median(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def missing_cells(cells: list[Cell]) -> list[str]:
    missing = [c for c in cells if not (c.run_dir() / "eval" / "results.json").is_file()]
    if not missing:
        return []
    listed = ", ".join(str(c.index) for c in missing)
    return [
        f"Not evaluated, so not in this report: {len(missing)} of {len(cells)} cells "
        f"({listed}; see Cells). Run the experiment again to finish them."
    ]


def _entry(name, kind, size, seed, metric, system, correct, against, labelling_usd=None):
    peak = system.get("peak_memory_bytes")
    candidate = Candidate(
        name,
        system["metrics"][metric]["value"],
        p50_ms=(system.get("latency_ms") or {}).get("p50"),
        usd_per_1k=(system.get("cost_per_1k") or {}).get("usd"),
        memory_gb=peak / 1e9 if peak else None,
        labelling_usd=labelling_usd,
    )
    metrics = system["metrics"][metric]
    return Entry(name, kind, size, seed, metrics, candidate, correct, name, against, labelling_usd)


def _correct(predictions: Path) -> dict[str, dict[str, bool]]:
    by_system: dict[str, dict[str, bool]] = defaultdict(dict)
    for line in predictions.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for name, p in row["predictions"].items():
            by_system[name][row["id"]] = p.get("score") == 1.0
    return by_system


def size_keys(experiment: Experiment) -> set[str]:
    """The training-size key and every key that varies together with it (a paired group)."""
    keys = {SIZE_KEY}
    for group in experiment.paired:
        if SIZE_KEY in group:
            keys |= set(group)
    return keys


def _curve(experiment: Experiment, cell: Cell, system: dict) -> str:
    """The curve a cell's system belongs to. The specialist's is its kind; a cascade's, its
    name with its specialist's kind; the TF-IDF classifier's, its name with where its labels
    came from: the same rows give the same classifier in every cell that trains on them."""
    parts = _parts(experiment, cell)
    if system["role"] == "specialist":
        return "specialist" + _listed(parts)
    if system["role"] == "cascade":
        return system["name"] + _listed(parts)
    return system["name"] + _listed([p for p in parts if p.startswith("labels=")])


def _listed(parts: list[str]) -> str:
    return f" ({', '.join(parts)})" if parts else ""


def _parts(experiment: Experiment, cell: Cell) -> list[str]:
    """`r=4, base=all-minilm-l6-v2, labels=teacher`: one value per axis other than size and
    seed (a paired group by its first key), each key by its last part, then the labels' source."""
    sizing, seen, parts = size_keys(experiment) | set(SEED_KEYS), set(), []
    for group in [{k: None} for k in experiment.axes] + list(experiment.paired):
        first = next(iter(group))
        if first in sizing or first in seen:
            continue
        seen |= set(group)
        parts.append(f"{first.rsplit('.', 1)[-1]}={cell.values[first]}")
    if (labels := source(cell.values)) is not None:
        parts.append(f"labels={labels}")
    return parts


def _sizing(experiment: Experiment, cell: Cell) -> str:
    keys = size_keys(experiment) | set(SEED_KEYS)
    return ", ".join(f"{k}={v}" for k, v in cell.values.items() if k in keys) or "the recipe"


def curves_by_kind(found: list[Entry]) -> dict[str, dict[int, list[Entry]]]:
    curves: dict[str, dict[int, list[Entry]]] = defaultdict(lambda: defaultdict(list))
    for e in found:
        if e.kind != GENERAL:
            curves[e.kind][e.train_examples].append(e)
    return curves
