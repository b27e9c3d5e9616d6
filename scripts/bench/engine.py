"""The engine benchmark: a general model scoring the sentiment test items on llama.cpp (its
GGUF as shipped, Q4) and on transformers (the same GGUF de-quantized, `model.dtype: auto`),
each in its own process, one after the other: items/s, peak memory, and how far the two agree
(predictions, accuracy, label log-probabilities)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import RECIPE, run_worker

BATCH = 16


def compare_with_transformers(bench: Any) -> dict[str, Any]:
    items = bench.scaled(320, 64)
    models = ["qwen2.5-coder-0.5b-instruct"]
    if not bench.quick:  # ~9 GB in float32 and ~3 s an item on 2 cores
        models.append("qwen2.5-coder-1.5b-instruct")
    return {model: _compare(bench, model, items) for model in models}


def _compare(bench: Any, model: str, items: int) -> dict[str, Any]:
    runs = {}
    for backend in ("engine", "transformers"):
        result, done = run_worker(
            "general_scoring",
            {"model": model, "backend": backend, "items": items},
            bench.work / "logs" / f"engine-{model}-{backend}.log",
        )
        runs[backend] = {**result, "peak_rss_bytes": done.peak_rss_bytes}
    engine, hf = runs["engine"], runs["transformers"]
    ids = list(engine["predictions"])
    same = sum(engine["predictions"][i] == hf["predictions"][i] for i in ids)
    gaps = [
        abs(engine["logprobs"][i][label] - hf["logprobs"][i][label])
        for i in ids
        for label in engine["logprobs"][i]
    ]
    return {
        "items": len(ids),
        "engine": _public(engine),
        "transformers": _public(hf),
        "speedup": engine["items_per_s"] / hf["items_per_s"],
        "agreement": same / len(ids),
        "accuracy_difference": engine["accuracy"] - hf["accuracy"],
        "mean_abs_logprob_gap": sum(gaps) / len(gaps),
        "max_abs_logprob_gap": max(gaps),
    }


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in ("predictions", "logprobs")}


def general_scoring(args: dict[str, Any]) -> dict[str, Any]:
    """In a worker: score the first `items` test items with `model` on one backend, as the
    evaluator scores a zero-shot baseline (its chat prompt, shared prefix, batch of 16)."""
    from finetune.data import load_split
    from finetune.evaluate.causal import CausalLM, _encode_items
    from finetune.evaluate.engine import Engine
    from finetune.prompts import prompt_format
    from finetune.recipe import load_recipe

    engine = args["backend"] == "engine"
    baseline = (
        f"{{name: g, engine: {{model: {args['model']}}}}}"
        if engine
        else f"{{name: g, model: {args['model']}}}"
    )
    recipe = load_recipe(
        RECIPE, [f"data.max_test_examples={args['items']}", f"eval.baselines=[{baseline}]"]
    )
    kind, key = (Engine(), "engine:g") if engine else (CausalLM(), args["model"])
    started = time.perf_counter()
    loaded = kind.load(recipe, Path("."), key)
    load_seconds = time.perf_counter() - started
    fmt = prompt_format(loaded.tokenizer, recipe.task, "auto")
    items = load_split(recipe, "test")
    infer = kind.inference(recipe, fmt, loaded.tokenizer)
    prompts = [e.input_ids for e in _encode_items(recipe, fmt, loaded.tokenizer, items, [], 0)]
    infer.run(loaded.model, prompts[:2], BATCH, True)  # warm-up: first passes allocate
    started = time.perf_counter()
    predictions, details, _ = infer.run(loaded.model, prompts, BATCH, True)
    seconds = time.perf_counter() - started
    right = sum(p == item["label"] for p, item in zip(predictions, items, strict=True))
    return {
        "serving": loaded.serving,
        "load_seconds": load_seconds,
        "seconds": seconds,
        "items_per_s": len(items) / seconds,
        "accuracy": right / len(items),
        "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
        "predictions": {item["id"]: p for item, p in zip(items, predictions, strict=True)},
        "logprobs": {
            item["id"]: d["label_logprobs"] for item, d in zip(items, details, strict=True)
        },
    }
