"""Each system's evaluation, kept and reused: its predictions, its peak memory and its timing
rounds, stored under a key of everything its answers depend on, so that any evaluation that
includes the same system on the same items (another cell of an experiment, a re-run with one
more baseline, another experiment) takes them instead of evaluating it again.

The key hashes what the system is (its kind, the model's identity, how it is loaded and
served, the run that trained it), exactly what it is given (every test item's id and planned
input, in order: prompts, shots and truncation included), how answers are read (task, labels,
scoring and generation settings, weight dtype, device) and the versions of the software that
computes them. Its name in a recipe is not part of it. Measurements belong to a machine:
memory is reused only on a machine with the same description, and timing only there and with
the same timing settings; elsewhere the system is measured again and its predictions reused.

Entries are `<runs_dir>/systems/<key>.json`, written atomically. A remote system is not kept
here (its answers are in the endpoint response cache). `eval.reuse: false` evaluates afresh.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.evaluate import timing
from finetune.evaluate.machine_load import LoadSample
from finetune.files import write_json
from finetune.recipe import Recipe
from finetune.systems.base import SPECIALIST, Context, Loaded, Plan

log = logging.getLogger(__name__)
FORMAT = 1  # bump when what an entry holds, or how answers are computed, changes meaning
STORE_DIR = "systems"
# The evaluation settings that change a system's answers (the rest change only statistics).
ANSWER_SETTINGS = {"batch_size", "length_normalize", "max_new_tokens", "specialist_form", "tfidf"}
# The software that computes answers: another version may answer differently.
ANSWER_PACKAGES = ("finetune", "torch", "transformers", "peft", "scikit-learn", "llama-cpp-python")


@dataclass
class Kept:
    """What is kept of one system: `quality` (its outcome, predictions as the system gave them),
    `memory` ({machine, method, bytes}) and `timing` ({machine, settings, evaluation,
    evaluated_at, resident, records}); None where not (yet) measured."""

    key: str
    quality: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    changed: bool = field(default=False, compare=False)

    def memory_on(self, machine: str, method: str) -> int | None:
        m = self.memory
        return m["bytes"] if m and m["machine"] == machine and m["method"] == method else None

    def timing_on(self, machine: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        t = self.timing
        return t if t and t["machine"] == machine and t["settings"] == settings else None


class Store:
    """The kept evaluations under one runs directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def of(cls, recipe: Recipe) -> Store | None:
        """The recipe's store; None when `eval.reuse` is off."""
        if not recipe.eval.reuse:
            return None
        return cls(Path(recipe.tracking.runs_dir) / STORE_DIR)

    def lookup(self, key: str | None) -> Kept | None:
        """The kept entry, empty when there is none; None for a system that is not kept."""
        if key is None:
            return None
        path = self.root / f"{key}.json"
        if not path.is_file():
            return Kept(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:  # a damaged entry is evaluated again
            log.warning("%s: unreadable (%s); the system is evaluated again", path, exc)
            return Kept(key)
        if data.get("format") != FORMAT:
            return Kept(key)
        return Kept(key, data.get("quality"), data.get("memory"), data.get("timing"))

    def save(self, kept: Kept) -> None:
        if not kept.changed:
            return
        write_json(
            self.root / f"{kept.key}.json",
            {
                "format": FORMAT,
                "key": kept.key,
                "saved_at": now(),
                "quality": kept.quality,
                "memory": kept.memory,
                "timing": kept.timing,
            },
        )


def system_key(recipe: Recipe, plan: Plan, loaded: Loaded, context: Context) -> str | None:
    """The content key of a planned system; None for a remote one."""
    if plan.infer.remote:
        return None
    from finetune.hardware import has_cuda, weight_dtype_name

    # The recipe's quantization applies to its own base only: a baseline named by model loads
    # as `base` in one cell and by reference in another, the same system either way.
    quantized = plan.key in (SPECIALIST, "base") and recipe.model.quantization != "none"
    facts = {
        "format": FORMAT,
        "kind": type(loaded.kind).__name__,
        "model": loaded.description,
        "identity": _plain(loaded.identity),
        "serving": loaded.serving,
        "trained": _run_digest(context.run_dir if plan.key == SPECIALIST else loaded.trained_in),
        "baseline": _baseline_settings(recipe, plan),
        "style": plan.style,
        "items": [item["id"] for item in context.items],
        "inputs": _digest(_plain(plan.inputs)),
        "truncated": plan.truncated,
        "reserve": plan.infer.reserve,
        "task": {"type": recipe.task.type, "labels": list(recipe.task.labels)},
        "eval": recipe.eval.model_dump(mode="json", include=ANSWER_SETTINGS),
        "weights": {
            "dtype": weight_dtype_name(recipe.model.dtype),
            "quantization": recipe.model.model_dump(mode="json", include={"quantization", "qlora"})
            if quantized
            else None,
            "device": "cuda" if has_cuda() else "cpu",
        },
        "software": _versions(),
    }
    return _digest(facts)[:32]


def machine() -> str:
    """What measurements are tied to: the device and how many cores this process may use."""
    import os

    from finetune.hardware import describe_device

    return f"{describe_device()}; {len(os.sched_getaffinity(0))} usable cores"


def timing_settings(recipe: Recipe) -> dict[str, Any]:
    """The settings a kept timing must have been measured with to be reused."""
    return {
        "rounds": recipe.eval.timing.rounds,
        "latency_items": recipe.eval.latency_items,
        "throughput_items": recipe.eval.timing.throughput_items,
        "batch_size": recipe.eval.batch_size,
    }


def timing_entry(
    rounds: timing.Rounds, name: str, machine: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """One system's timing rounds of this evaluation, as kept."""
    return {
        "machine": machine,
        "settings": settings,
        "evaluation": rounds.evaluation,
        "evaluated_at": rounds.evaluated_at,
        "resident": name in rounds.resident,
        "records": [_record_json(r) for r in rounds.of(name)],
    }


def records_of(entry: dict[str, Any], name: str) -> list[timing.Record]:
    """A kept timing entry's rounds, under the name the system has in this evaluation."""
    return [
        timing.Record(
            r["round"],
            r["position"],
            name,
            timing.Measurement(r["latencies_ms"], r["throughput_seconds"], r["throughput_items"]),
            LoadSample(**r["load"]),
        )
        for r in entry["records"]
    ]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _record_json(record: timing.Record) -> dict[str, Any]:
    m = record.measurement
    return {
        "round": record.round,
        "position": record.position,
        "latencies_ms": m.latencies_ms,
        "throughput_seconds": m.throughput_seconds,
        "throughput_items": m.throughput_items,
        "load": dataclasses.asdict(record.load),
    }


def _baseline_settings(recipe: Recipe, plan: Plan) -> dict[str, Any] | None:
    """The baseline's settings but its name and model reference: the model is in the key as
    its identity, so `model: base` and the base's own name are one system."""
    if plan.system.role == "specialist":
        return None
    for baseline in recipe.eval.baselines:
        if baseline.name == plan.system.name:
            return baseline.model_dump(mode="json", exclude={"name", "model"})
    return {"kind": plan.system.kind}


def _run_digest(run_dir: Path | None) -> str | None:
    """What identifies a finished run's weights: its training summary, written once at the end."""
    if run_dir is None:
        return None
    summary = Path(run_dir) / "train_summary.json"
    return hashlib.sha256(summary.read_bytes()).hexdigest() if summary.is_file() else str(run_dir)


def _plain(value: Any) -> Any:
    """A JSON-able form of an identity or input: files by path, size and modification time;
    objects other than data by their type's name."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        if not value.is_file():
            return str(value)
        stat = value.stat()
        return {"path": str(value), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "tolist"):
        return value.tolist()
    return type(value).__name__


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _versions() -> dict[str, str | None]:
    """Read once per process: every system's key carries them."""
    from finetune.runs import package_versions

    return package_versions(ANSWER_PACKAGES)
