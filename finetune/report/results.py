"""Read what `finetune eval` and `finetune train` left in a run directory, and small accessors.

The schema of `eval/results.json` is the evaluator's; these helpers only name the facts the
report needs (the specialist, the primary metric, on-disk size) so tables and verdict agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.files import read_jsonl
from finetune.recipe.schema import EvalConstraintsConfig

RESULTS_FILE = Path("eval") / "results.json"
PREDICTIONS_FILE = Path("eval") / "predictions.jsonl"
# The fields the report reads; anything else in results.json is passed through untouched.
FIELDS = {
    "": ("recipe", "task", "labels", "metrics", "test_items", "confidence",
         "bootstrap_samples", "hardware", "batch_size", "prices", "timing", "systems",
         "comparisons"),
    "systems": ("name", "role", "model", "shots", "prompt_style", "metrics", "latency_ms",
                "throughput_items_per_s", "peak_memory_bytes", "parameters", "disk_bytes",
                "throughput", "tokens", "cost_per_1k", "truncated_items"),
    "comparisons": ("baseline", "metric", "specialist", "baseline_value", "difference", "low",
                    "high", "significant", "timing"),
}  # fmt: skip


def load_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise FinetuneError(
            f"{run_dir}: no eval/results.json; run `finetune eval RECIPE --run {run_dir}` first"
        )
    again = f"run `finetune eval RECIPE --run {run_dir}` again"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FinetuneError(f"{path}: not valid JSON ({exc}); {again}") from None
    missing = missing_fields(results)
    if missing:
        raise FinetuneError(f"{path}: missing {', '.join(missing)}; {again}")
    return results


def missing_fields(results: dict[str, Any]) -> list[str]:
    """Every field the report needs that `results` lacks, as dotted paths (all at once)."""
    missing = [k for k in FIELDS[""] if k not in results]
    for section in ("systems", "comparisons"):
        for i, item in enumerate(results.get(section) or []):
            missing += [f"{section}[{i}].{k}" for k in FIELDS[section] if k not in item]
    if not results.get("systems") and "systems" in results:
        missing.append("systems[0] (the specialist)")
    return missing


def load_training(run_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The training summary (None if absent) and the training log records ([] if absent)."""
    summary_path, log_path = run_dir / "train_summary.json", run_dir / "train_log.jsonl"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    history = read_jsonl(log_path) if log_path.is_file() else []
    return summary, history


def header(results: dict[str, Any]) -> dict[str, Any]:
    """Everything but the per-system and comparison lists: the evaluation's settings."""
    return {k: v for k, v in results.items() if k not in ("systems", "comparisons")}


def specialist(results: dict[str, Any]) -> dict[str, Any]:
    return next((s for s in results["systems"] if s["role"] == "specialist"), results["systems"][0])


def primary_metric(results: dict[str, Any]) -> str:
    return results["metrics"][0]


def is_remote(system: dict[str, Any]) -> bool:
    """A system served elsewhere (an API): its memory and size are not this machine's."""
    return system["peak_memory_bytes"] is None


def disk_total(system: dict[str, Any]) -> int | None:
    """Bytes a deployment needs on disk: the adapter (if any) plus the model it runs on
    (None for a remote system)."""
    if is_remote(system):
        return None
    disk = system["disk_bytes"]
    return (disk.get("adapter") or 0) + (disk.get("model") or 0)


def constraints(results: dict[str, Any]) -> EvalConstraintsConfig:
    """The limits the bottom line applies: the evaluation's `eval.constraints`, or their
    defaults for results written before evaluations recorded them."""
    recorded = results.get("constraints")
    return EvalConstraintsConfig() if recorded is None else EvalConstraintsConfig(**recorded)


def cost(system: dict[str, Any]) -> float:
    return system["cost_per_1k"]["usd"]


def latency(system: dict[str, Any]) -> float:
    return system["latency_ms"]["p50"]
