"""Read what `finetune eval` and `finetune train` left in a run directory, and small accessors.

The schema of `eval/results.json` is the evaluator's typed model (`evaluate.results.Results`),
whose declared fields are the ones the report may read; these helpers only name the facts it
needs (the specialist, the primary metric, on-disk size) so tables and verdict agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.evaluate.results import missing_fields
from finetune.files import read_jsonl
from finetune.recipe.schema import EvalConstraintsConfig

RESULTS_FILE = Path("eval") / "results.json"
PREDICTIONS_FILE = Path("eval") / "predictions.jsonl"


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


def cascades(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The systems that are cascades, in the results' order."""
    return [s for s in results["systems"] if s.get("cascade")]


def fallback_cost_share(results: dict[str, Any], cascade: dict[str, Any]) -> float | None:
    """A cascade's cost per 1k requests as a share of its fallback's alone; None unmeasured."""
    fallback = next(s for s in results["systems"] if s["name"] == cascade["cascade"]["fallback"])
    mine, theirs = cost(cascade), cost(fallback)
    return mine / theirs if mine is not None and theirs else None


def judged_pairs(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The judge's figures for each baseline it judged the specialist against, by name, where
    it could judge at least one item ({} without a judge)."""
    judge = results.get("judge") or {}
    return {p["baseline"]: p for p in judge.get("pairs", []) if p["win_rate"] is not None}


def quality_comparisons(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The specialist against each baseline on quality: by the judge's win rate where it judged
    the pair (the difference is win rate minus loss rate, 2w - 1, significant when the win
    rate's interval leaves out 0.5), else by the primary metric's paired comparison."""
    pairs = judged_pairs(results)
    out = []
    for c in results["comparisons"]:
        p = pairs.get(c["baseline"])
        if p is None:
            out.append(c)
            continue
        w, low, high = p["win_rate"], p["low"], p["high"]
        out.append(
            {
                **c,
                "metric": JUDGE_METRIC,
                "specialist": w,
                "baseline_value": 1 - w,
                "difference": 2 * w - 1,
                "low": 2 * low - 1,
                "high": 2 * high - 1,
                "significant": low > 0.5 or high < 0.5,
                "mcnemar": None,
                "judge": p,
            }
        )
    return out


def quality_value(results: dict[str, Any], system: dict[str, Any]) -> float:
    """What orders systems on quality: with a judge, the win rate against the specialist (0.5
    for the specialist itself) of each system it judged; else the primary metric."""
    pairs = judged_pairs(results)
    if pairs and system["role"] == "specialist":
        return 0.5
    if system["name"] in pairs:
        return 1 - pairs[system["name"]]["win_rate"]
    return system["metrics"][primary_metric(results)]["value"]


JUDGE_METRIC = "judge_win_rate"
