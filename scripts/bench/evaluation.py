"""Evaluation benchmarks: the workbench's classification scoring against lm-evaluation-harness, and growth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import RECIPE, finetune_cmd, line_fit, read_json, run_child, run_worker, write_jsonl
from training import Bench

BATCH = 16


def eval_ours(bench: Bench, run_dir: str, items: int, label: str, *extra: str) -> dict[str, Any]:
    """`finetune eval` of the specialist alone on the first `items` test items."""
    overrides = [
        *extra,
        f"data.max_test_examples={items}",
        "eval.baselines=[]",
        "eval.latency_items=4",
        "eval.timing.rounds=1",
        f"eval.batch_size={BATCH}",
        "tracking.wandb.mode=disabled",
    ]
    done = run_child(
        finetune_cmd("eval", str(RECIPE), "--run", run_dir, *overrides),
        bench.work / "logs" / f"{label}.log",
    )
    (system,) = read_json(Path(run_dir) / "eval" / "results.json")["systems"]
    predictions = {}
    for line in (Path(run_dir) / "eval" / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        predictions[row["id"]] = row["predictions"]["specialist"]["prediction"]
    # The scoring pass over every item, timed as lm-eval's `simple_evaluate` is: not the timing
    # rounds, which score `eval.timing.throughput_items` items.
    seconds = system["eval_seconds"]
    return {
        "items": len(predictions),
        "items_per_s": len(predictions) / seconds,
        "seconds": seconds,
        "accuracy": system["metrics"]["accuracy"]["value"],
        "peak_rss_bytes": done.peak_rss_bytes,
        "predictions": predictions,
    }


def compare_with_lm_eval(bench: Bench, run_dir: str) -> dict[str, dict[str, Any]]:
    """The comparison in float32, and also in bf16 where `model.dtype: auto` picks it here.

    float32 checks that both score alike; in bf16 the two round differently (the workbench
    scores the labels on a shared prompt pass, lm-eval each full sequence), so near-ties can flip.
    """
    from finetune.hardware import weight_dtype_name
    from finetune.recipe import load_recipe

    auto = weight_dtype_name(load_recipe(RECIPE, []).model.dtype)
    dtypes = dict.fromkeys(["float32", auto])
    return {"by_dtype": {dtype: _compare_in(bench, run_dir, dtype) for dtype in dtypes}}


def _compare_in(bench: Bench, run_dir: str, dtype: str) -> dict[str, Any]:
    """Same adapter, items, prompts, batch size and dtype; items/s and prediction agreement."""
    from finetune.data import load_split
    from finetune.models import resolve
    from finetune.recipe import load_recipe

    items = bench.scaled(400, 160)
    recipe = load_recipe(RECIPE, [f"data.max_test_examples={items}"])
    rows = write_jsonl(bench.work / "eval-items.jsonl", load_split(recipe, "test"))
    ours = eval_ours(bench, run_dir, items, f"eval-workbench-{dtype}", f"model.dtype={dtype}")
    peer, done = run_worker(
        "lm_eval",
        {
            "base": resolve(recipe.model.base).location,
            "adapter": str(Path(run_dir) / "adapter"),
            "rows": str(rows),
            "prompt_run": run_dir,
            "labels": list(recipe.task.labels),
            "batch_size": BATCH,
            "dtype": dtype,
            "task_dir": str(bench.work / "lm-eval-task"),
        },
        bench.work / "logs" / f"eval-lm-eval-{dtype}.log",
    )
    peer["peak_rss_bytes"] = done.peak_rss_bytes
    same = sum(ours["predictions"][i] == p for i, p in peer["predictions"].items())
    return {
        "items": items,
        "batch_size": BATCH,
        "dtype": dtype,
        "workbench": _without_predictions(ours),
        "peer": _without_predictions(peer),
        "agreement": same / len(peer["predictions"]),
        "disagreements": sorted(
            i for i, p in peer["predictions"].items() if ours["predictions"][i] != p
        ),
    }


def growth(bench: Bench, run_dir: str) -> dict[str, Any]:
    """Evaluation time against the number of items."""
    found = {}
    for items in [bench.scaled(n, n // 2) for n in (100, 200, 400)]:
        found[items] = _without_predictions(
            eval_ours(bench, run_dir, items, f"eval-growth-{items}")
        )
    xs = list(found)
    return {"by_items": found, "fit": line_fit(xs, [found[n]["seconds"] for n in xs])}


def _without_predictions(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "predictions"}
