"""The engine benchmark: a general model on llama.cpp (its GGUF as shipped, Q4) and on
transformers (the same GGUF de-quantized, `model.dtype: auto`), each in its own process, one
after the other. Scoring: the sentiment test items' label log-likelihoods, items/s, peak memory,
and how far the two agree. Generation: greedy answers to the construction FAQ's questions,
tokens/s at the evaluator's batch and one prompt at a time, and how many answers are the same."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import RECIPE, ROOT, run_worker

BATCH = 16
QA_RECIPE = ROOT / "recipes" / "construction-faq-smollm2-lora.yaml"
QA_MODEL = "qwen2.5-coder-0.5b-instruct"


def compare_with_transformers(bench: Any) -> dict[str, Any]:
    items = bench.scaled(320, 64)
    models = ["qwen2.5-coder-0.5b-instruct"]
    if not bench.quick:  # ~9 GB in float32 and ~3 s an item on 2 cores
        models.append("qwen2.5-coder-1.5b-instruct")
    return {model: _compare(bench, model, items) for model in models}


def _compare(bench: Any, model: str, items: int) -> dict[str, Any]:
    runs = {
        backend: _run(bench, f"engine-{model}-{backend}", model=model, backend=backend, items=items)
        for backend in ("engine", "transformers")
    }
    engine, hf = runs["engine"], runs["transformers"]
    ids = list(engine["predictions"])
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
        "agreement": _agreement(engine, hf),
        "accuracy_difference": engine["accuracy"] - hf["accuracy"],
        "mean_abs_logprob_gap": sum(gaps) / len(gaps),
        "max_abs_logprob_gap": max(gaps),
    }


def compare_generation(bench: Any) -> dict[str, Any]:
    """Greedy answers, where llama.cpp's 4-bit weights should pay: decoding reads every weight
    for each new token, so one stream at a time is bound by memory, not arithmetic."""
    items = bench.scaled(24, 8)
    common = {"model": QA_MODEL, "items": items, "recipe": str(QA_RECIPE)}
    runs = {
        name: _run(bench, f"generate-{QA_MODEL}-{name}", **common, backend=backend, batch=batch)
        for name, backend, batch in (
            ("engine", "engine", 1),
            (f"transformers batch {BATCH}", "transformers", BATCH),
            ("transformers batch 1", "transformers", 1),
        )
    }
    engine = runs["engine"]
    peers = {name: run for name, run in runs.items() if run is not engine}
    return {
        "model": QA_MODEL,
        "items": len(engine["predictions"]),
        "runs": {name: _public(run) for name, run in runs.items()},
        "speedups": {n: engine["tokens_per_s"] / r["tokens_per_s"] for n, r in peers.items()},
        "same_answers": {n: _agreement(engine, r) for n, r in peers.items()},
    }


def _agreement(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The share of items on which two runs predicted or answered the same."""
    return sum(a["predictions"][i] == b["predictions"][i] for i in a["predictions"]) / len(
        a["predictions"]
    )


def _run(bench: Any, log: str, **args: Any) -> dict[str, Any]:
    result, done = run_worker("general_model", args, bench.work / "logs" / f"{log}.log")
    return {**result, "peak_rss_bytes": done.peak_rss_bytes}


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in ("predictions", "logprobs")}


def general_model(args: dict[str, Any]) -> dict[str, Any]:
    """In a worker: run the first `items` test items of `recipe` (default: sentiment) through
    `model` on one backend, as the evaluator runs a zero-shot baseline (its chat prompt, shared
    prefix, `batch` items a pass): label scores for classification, greedy answers otherwise."""
    from finetune.data import load_split
    from finetune.recipe import load_recipe
    from finetune.systems.causal_lm import CausalLM, _encode_items
    from finetune.systems.engine import Engine
    from finetune.tasks.prompts import prompt_format

    engine = args["backend"] == "engine"
    baseline = (
        f"{{name: g, engine: {{model: {args['model']}}}}}"
        if engine
        else f"{{name: g, model: {args['model']}}}"
    )
    recipe = load_recipe(
        Path(args.get("recipe", RECIPE)),
        [f"data.max_test_examples={args['items']}", f"eval.baselines=[{baseline}]"],
    )
    kind, key = (Engine(), "engine:g") if engine else (CausalLM(), args["model"])
    started = time.perf_counter()
    loaded = kind.load(recipe, Path("."), key)
    load_seconds = time.perf_counter() - started
    fmt = prompt_format(loaded.tokenizer, recipe.task, "auto")
    items = load_split(recipe, "test")
    infer = kind.inference(recipe, fmt, loaded.tokenizer)
    prompts = [e.input_ids for e in _encode_items(recipe, fmt, loaded.tokenizer, items, [], 0)]
    batch = args.get("batch", BATCH)
    infer.run(loaded.model, prompts[:2], batch, True)  # warm-up: first passes allocate
    started = time.perf_counter()
    predictions, details, counts = infer.run(loaded.model, prompts, batch, True)
    seconds = time.perf_counter() - started
    result = {
        "serving": loaded.serving,
        "load_seconds": load_seconds,
        "seconds": seconds,
        "items_per_s": len(items) / seconds,
        "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
        "predictions": {item["id"]: p for item, p in zip(items, predictions, strict=True)},
    }
    if recipe.task.type != "classification":
        return {**result, "generated_tokens": sum(counts), "tokens_per_s": sum(counts) / seconds}
    right = sum(p == item["label"] for p, item in zip(predictions, items, strict=True))
    logprobs = {item["id"]: d["label_logprobs"] for item, d in zip(items, details, strict=True)}
    return {**result, "accuracy": right / len(items), "logprobs": logprobs}
