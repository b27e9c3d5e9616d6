"""`finetune eval`: score the specialist and every baseline on the same test items, with the same prompts.

For each system this measures quality (each metric with a bootstrap confidence interval,
per-class figures for classification), latency at batch size 1, throughput at the recipe's
batch size, peak memory, parameters, size on disk and cost per 1,000 requests; then compares
the specialist with each baseline on the same items (paired bootstrap, McNemar's exact test).
Everything lands in `<run>/eval/`: `predictions.jsonl` (every item, every system) and
`results.json` (written last; the report reads it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune.data import load_split, prepare
from finetune.data.read import TARGET_FIELD
from finetune.errors import FinetuneError
from finetune.evaluate import metrics as M
from finetune.evaluate.scoring import LabelScorer, generate_answers, label_token_ids
from finetune.evaluate.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap_ci
from finetune.evaluate.systems import (
    Loaded,
    System,
    active,
    draw_shots,
    load_groups,
    loaded_model,
    merges_adapter,
    system_format,
    systems_of,
)
from finetune.files import write_atomic, write_json
from finetune.hardware import (
    describe_device,
    has_cuda,
    peak_memory_bytes,
    reset_peak_memory,
    weight_dtype_name,
)
from finetune.prompts import PromptFormat, encode
from finetune.recipe import Recipe, load_recipe
from finetune.runs import is_complete

log = logging.getLogger(__name__)
EVAL_DIR = "eval"
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.jsonl"
TEXT_PREVIEW = 300


@dataclass
class Outcome:
    """One system's raw results before statistics."""

    system: System
    description: str
    prompt_style: str
    predictions: list[Any]
    details: list[dict[str, Any]]
    truncated: list[bool]
    latencies_ms: list[float]
    seconds: float
    peak_memory: int
    weights_bytes: int
    parameters: dict[str, int]
    disk_bytes: dict[str, int | None]
    input_tokens: float
    output_tokens: float


def evaluate(recipe: Recipe, run_dir: str | Path, *, console: Any = None) -> Path:
    """Evaluate every system on the run's test items; returns the path of `results.json`."""
    run_dir = Path(run_dir)
    check_run(recipe, run_dir)
    run_format = PromptFormat.load(run_dir)
    items = load_split(recipe, "test")
    golds = [item[TARGET_FIELD[recipe.task.type]] for item in items]
    train_rows = load_split(recipe, "train")
    outcomes = []
    with _progress(console) as progress:
        for key, group in load_groups(recipe, run_dir, systems_of(recipe)):
            with loaded_model(recipe, run_dir, key) as loaded:
                _check_chat_template(run_dir, run_format, loaded, key)
                # The specialist merges its adapter into the shared weights: run it last.
                for system in sorted(group, key=lambda s: s.role == "specialist"):
                    outcome = _run_system(
                        recipe, run_dir, system, loaded, run_format, items, train_rows, progress
                    )
                    outcomes.append(outcome)
                    _say(console, recipe, outcome, golds)
    order = [s.name for s in systems_of(recipe)]
    outcomes.sort(key=lambda o: order.index(o.system.name))
    results = summarize(recipe, run_dir, items, outcomes, golds)
    out = run_dir / EVAL_DIR
    write_atomic(out / PREDICTIONS_FILE, _predictions_jsonl(recipe, items, outcomes, golds))
    return write_json(out / RESULTS_FILE, results)  # last: its presence marks a finished eval


def check_run(recipe: Recipe, run_dir: Path) -> None:
    """The run is finished, was trained from this recipe's task and model, on this data."""
    if not run_dir.is_dir():
        raise FinetuneError(f"--run: '{run_dir}' does not exist")
    if not is_complete(run_dir):
        raise FinetuneError(
            f"{run_dir}: not a finished training run (it is still partial or failed); "
            f"finish it with `finetune train --resume {run_dir}` or evaluate a complete run"
        )
    trained = load_recipe(run_dir / "recipe.yaml")
    hint = f"evaluate with the run's own recipe: `finetune eval {run_dir / 'recipe.yaml'} --run {run_dir}`"
    for key, now, then in (
        ("model.base", recipe.model.base, trained.model.base),
        ("task.type", recipe.task.type, trained.task.type),
        ("task.labels", recipe.task.labels, trained.task.labels),
        ("task.instruction", recipe.task.instruction, trained.task.instruction),
        ("task.template", recipe.task.template, trained.task.template),
    ):
        if now != then:
            raise FinetuneError(
                f"{key}: the recipe says {now!r} but the run was trained with {then!r}; {hint}"
            )
    stored = PromptFormat.load(run_dir)
    if (stored.instruction, stored.template) != (recipe.task.instruction, recipe.task.template):
        raise FinetuneError(
            f"{run_dir}: prompt.json does not match the recipe's task.instruction/template; {hint}"
        )
    provenance = json.loads((run_dir / "provenance.json").read_text())
    trained_fp = provenance.get("data", {}).get("fingerprint")
    now_fp = prepare(recipe).fingerprint
    if trained_fp and trained_fp != now_fp:
        raise FinetuneError(
            f"data: the prepared dataset changed since this run was trained (fingerprint {now_fp[:12]} "
            f"vs {trained_fp[:12]}), so its test items may overlap what the model learned; "
            "re-prepare the data the run used or train a new run"
        )


def _check_chat_template(run_dir: Path, fmt: PromptFormat, loaded: Loaded, key: str) -> None:
    if key != "adapter" or fmt.style != "chat":
        return
    if loaded.tokenizer.chat_template != fmt.chat_template:
        raise FinetuneError(
            f"{run_dir}: the base model's chat template is not the one stored with the run "
            "(prompt.json); the specialist would see prompts it was not trained on"
        )


def _run_system(
    recipe: Recipe,
    run_dir: Path,
    system: System,
    loaded: Loaded,
    run_format: PromptFormat,
    items: list[dict],
    train_rows: list[dict],
    progress: Any,
) -> Outcome:
    fmt = system_format(system, loaded, run_format, recipe)
    tokenizer = loaded.tokenizer
    shots = draw_shots(recipe, train_rows, system.shots)
    infer = _inference(recipe, fmt, tokenizer)
    encoded = _encode_items(recipe, fmt, tokenizer, items, shots, infer.reserve)
    prompts = [e.input_ids for e in encoded]
    with active(loaded, system, merge=merges_adapter(recipe)) as model:
        reset_peak_memory()
        # One untimed batch first: a model's first passes (fresh weights after a merge, kernel
        # and allocator warm-up) ran ~10% slower here, which would be charged to whichever
        # system happened to run first on its weights.
        infer.run(model, prompts[: recipe.eval.batch_size], recipe.eval.batch_size, True)
        task = progress.add_task(system.name, total=len(prompts))
        start = time.perf_counter()
        predictions, details, out_tokens = infer.run(
            model, prompts, recipe.eval.batch_size, True, lambda n: progress.advance(task, n)
        )
        seconds = time.perf_counter() - start
        latencies = _latencies(infer, model, prompts[: recipe.eval.latency_items])
        peak = peak_memory_bytes()
    weights, total, adapter_params = _parameters(loaded.model)
    is_specialist = system.role == "specialist"
    disk = dict(loaded.disk_bytes) if is_specialist else {**loaded.disk_bytes, "adapter": None}
    return Outcome(
        system=system,
        description=loaded.description if is_specialist else loaded.source.ref,
        prompt_style=fmt.style,
        predictions=predictions,
        details=details,
        truncated=[e.truncated for e in encoded],
        latencies_ms=latencies,
        seconds=seconds,
        peak_memory=peak,
        weights_bytes=weights if is_specialist else weights - adapter_params[1],
        parameters={
            "total": total if is_specialist else total - adapter_params[0],
            "trainable": _trained_parameters(run_dir, adapter_params[0]) if is_specialist else 0,
        },
        disk_bytes=disk,
        input_tokens=float(np.mean([len(p) for p in prompts])),
        output_tokens=float(np.mean(out_tokens)),
    )


@dataclass
class _Inference:
    """How a task turns prompts into predictions, and how many tokens to keep free for the answer."""

    reserve: int
    run: Callable[..., tuple[list[Any], list[dict], list[int]]]


def _inference(recipe: Recipe, fmt: PromptFormat, tokenizer: Any) -> _Inference:
    task = recipe.task
    if task.type == "classification":
        label_ids = label_token_ids(fmt, tokenizer, task.labels)

        def classify(model, prompts, batch_size, share_prefix, on_batch=None):
            scorer = LabelScorer(
                model,
                label_ids,
                tokenizer.pad_token_id,
                batch_size=batch_size,
                length_normalize=recipe.eval.length_normalize,
                share_prefix=share_prefix,
            )
            scores = scorer.score(prompts, on_batch)
            best = [int(np.argmax(row)) for row in scores]
            details = [
                {"label_logprobs": dict(zip(task.labels, map(_round, row), strict=True))}
                for row in scores
            ]
            return [task.labels[b] for b in best], details, [len(label_ids[b]) for b in best]

        return _Inference(max(len(ids) for ids in label_ids), classify)

    def answer(model, prompts, batch_size, share_prefix, on_batch=None):
        outputs = generate_answers(
            model,
            tokenizer,
            fmt,
            prompts,
            max_new_tokens=recipe.eval.max_new_tokens,
            batch_size=batch_size,
            on_batch=on_batch,
        )
        texts = [text for text, _ in outputs]
        predictions = [M.parse_entities(t) for t in texts] if task.type == "extraction" else texts
        details = [{"raw": t} for t in texts] if task.type == "extraction" else [{} for _ in texts]
        return predictions, details, [count for _, count in outputs]

    return _Inference(recipe.eval.max_new_tokens, answer)


def _encode_items(recipe, fmt, tokenizer, items, shots, reserve):
    """Prompts for every item: the item's part fits `model.max_length`; the shots come on top."""
    unbounded = 10**9
    with_shots = encode(fmt, tokenizer, "", None, max_length=unbounded, shots=shots)
    without = encode(fmt, tokenizer, "", None, max_length=unbounded)
    limit = recipe.model.max_length + with_shots.prompt_length - without.prompt_length
    return [
        encode(
            fmt,
            tokenizer,
            item["text"],
            None,
            max_length=limit,
            truncation=recipe.model.truncation,
            shots=shots,
            reserve=reserve,
        )
        for item in items
    ]


def _latencies(infer: _Inference, model: Any, prompts: list[list[int]]) -> list[float]:
    """Milliseconds per request at batch size 1, the whole prompt computed (no shared cache)."""
    if not prompts:
        return []
    infer.run(model, prompts[:1], 1, False)  # warm-up: first calls allocate and pick kernels
    timings = []
    for prompt in prompts:
        _sync()
        start = time.perf_counter()
        infer.run(model, [prompt], 1, False)
        _sync()
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _parameters(model: Any) -> tuple[int, int, tuple[int, int]]:
    """(weight bytes, parameters, (adapter parameters, adapter bytes)) of a loaded model."""
    total = weights = adapter = adapter_bytes = 0
    for name, param in model.named_parameters():
        size = param.numel() * param.element_size()
        total += param.numel()
        weights += size
        if "lora_" in name:
            adapter += param.numel()
            adapter_bytes += size
    return weights, total, (adapter, adapter_bytes)


def _trained_parameters(run_dir: Path, adapter_params: int) -> int:
    summary = run_dir / "train_summary.json"
    if summary.is_file():
        return int(json.loads(summary.read_text()).get("trainable_parameters", adapter_params))
    return adapter_params


def summarize(
    recipe: Recipe, run_dir: Path, items: list[dict], outcomes: list[Outcome], golds: list[Any]
) -> dict[str, Any]:
    """The results document: per-system measurements and the specialist's paired comparisons."""
    task = recipe.task.type
    names = _metric_names(recipe)
    labels = list(recipe.task.labels) or None
    systems = [_system_entry(recipe, o, golds, names, labels) for o in outcomes]
    specialist = outcomes[0]
    comparisons = [_compare(recipe, specialist, o, golds, names[0], labels) for o in outcomes[1:]]
    return {
        "recipe": recipe.name,
        "run_dir": str(run_dir),
        "task": task,
        "labels": list(recipe.task.labels),
        "metrics": list(names),
        "test_items": len(items),
        "confidence": recipe.eval.confidence,
        "bootstrap_samples": recipe.eval.bootstrap_samples,
        "hardware": {
            "device": "cuda" if has_cuda() else "cpu",
            "description": describe_device(),
            "dtype": weight_dtype_name(recipe.model.dtype),
        },
        "batch_size": recipe.eval.batch_size,
        "prices": recipe.eval.prices.model_dump(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "systems": systems,
        "comparisons": comparisons,
    }


def _system_entry(recipe, outcome: Outcome, golds, names, labels) -> dict[str, Any]:
    task, ev = recipe.task.type, recipe.eval
    preds = outcome.predictions
    metrics = {}
    for name in names:
        value = M.compute(task, name, golds, preds, labels=labels)
        low, high = bootstrap_ci(
            M.indexed_metric(task, name, golds, preds, labels),
            len(golds),
            samples=ev.bootstrap_samples,
            confidence=ev.confidence,
            seed=recipe.seed,
        )
        metrics[name] = {"value": value, "low": low, "high": high}
    throughput = len(golds) / outcome.seconds if outcome.seconds > 0 else None
    latencies = outcome.latencies_ms
    return {
        "name": outcome.system.name,
        "role": outcome.system.role,
        "model": outcome.description,
        "shots": outcome.system.shots,
        "prompt_style": outcome.prompt_style,
        "metrics": metrics,
        "per_class": M.per_class(golds, preds, labels) if task == "classification" else [],
        "confusion": M.confusion_matrix(golds, preds, labels) if task == "classification" else None,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)) if latencies else None,
            "p95": float(np.percentile(latencies, 95)) if latencies else None,
            "items": len(latencies),
        },
        "throughput_items_per_s": throughput,
        "peak_memory_bytes": outcome.peak_memory,
        "weights_bytes": outcome.weights_bytes,
        "parameters": outcome.parameters,
        "disk_bytes": {
            "adapter": outcome.disk_bytes.get("adapter"),
            "model": outcome.disk_bytes.get("model") or outcome.weights_bytes,
        },
        "tokens": {
            "input_per_item": outcome.input_tokens,
            "output_per_item": outcome.output_tokens,
        },
        "cost_per_1k": cost_per_1k(recipe, outcome.system.name, throughput, outcome),
        "truncated_items": sum(outcome.truncated),
        "eval_seconds": round(outcome.seconds, 2),
    }


def cost_per_1k(
    recipe: Recipe, name: str, throughput: float | None, outcome: Outcome
) -> dict[str, Any]:
    """API token prices where the price table names the system, else machine time at throughput."""
    prices = recipe.eval.prices
    if name in prices.per_million_input_tokens or name in prices.per_million_output_tokens:
        p_in = prices.per_million_input_tokens.get(name, 0.0)
        p_out = prices.per_million_output_tokens.get(name, 0.0)
        usd = 1000 * (outcome.input_tokens * p_in + outcome.output_tokens * p_out) / 1e6
        return {"usd": usd, "basis": f"API tokens at ${p_in:g}/M input, ${p_out:g}/M output"}
    if not throughput:
        return {"usd": None, "basis": "no throughput measured"}
    usd = prices.machine_per_hour * 1000 / throughput / 3600
    return {
        "usd": usd,
        "basis": f"machine time at ${prices.machine_per_hour:g}/h and {throughput:.1f} items/s",
    }


def _compare(recipe, specialist: Outcome, baseline: Outcome, golds, metric, labels):
    task, ev = recipe.task.type, recipe.eval
    difference, low, high = paired_bootstrap_ci(
        M.indexed_metric(task, metric, golds, specialist.predictions, labels),
        M.indexed_metric(task, metric, golds, baseline.predictions, labels),
        len(golds),
        samples=ev.bootstrap_samples,
        confidence=ev.confidence,
        seed=recipe.seed,
    )
    entry = {
        "baseline": baseline.system.name,
        "metric": metric,
        "specialist": M.compute(task, metric, golds, specialist.predictions, labels=labels),
        "baseline_value": M.compute(task, metric, golds, baseline.predictions, labels=labels),
        "difference": difference,
        "low": low,
        "high": high,
        "mcnemar": None,
    }
    if task == "classification":
        test = mcnemar_exact(
            [p == g for p, g in zip(specialist.predictions, golds, strict=True)],
            [p == g for p, g in zip(baseline.predictions, golds, strict=True)],
        )
        entry["mcnemar"] = {
            "specialist_only": test.a_only,
            "baseline_only": test.b_only,
            "p_value": test.p_value,
        }
        entry["significant"] = test.p_value < 1 - ev.confidence
    else:
        entry["significant"] = low > 0 or high < 0
    return entry


def _metric_names(recipe: Recipe) -> list[str]:
    """The recipe's metrics, or the task's defaults; the first is the primary one."""
    return list(recipe.eval.metrics or M.DEFAULT_METRICS[recipe.task.type])


def _predictions_jsonl(
    recipe: Recipe, items: list[dict], outcomes: list[Outcome], golds: list[Any]
) -> str:
    task = recipe.task.type
    scores = {o.system.name: M.item_scores(task, golds, o.predictions) for o in outcomes}
    lines = []
    for index, item in enumerate(items):
        record = {
            "id": item["id"],
            "text": item["text"][:TEXT_PREVIEW],
            "gold": golds[index],
            "predictions": {},
        }
        for o in outcomes:
            entry = {"prediction": o.predictions[index], "score": scores[o.system.name][index]}
            entry.update(o.details[index])
            if o.truncated[index]:
                entry["truncated"] = True
            record["predictions"][o.system.name] = entry
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _say(console: Any, recipe: Recipe, outcome: Outcome, golds: list[Any]) -> None:
    if console is None:
        return
    task = recipe.task.type
    name = _metric_names(recipe)[0]
    value = M.compute(
        task, name, golds, outcome.predictions, labels=list(recipe.task.labels) or None
    )
    p50 = statistics.median(outcome.latencies_ms) if outcome.latencies_ms else float("nan")
    truncated = sum(outcome.truncated)
    note = f"; {truncated} input(s) truncated to model.max_length" if truncated else ""
    console.print(
        f"{outcome.system.name}: {name} {value:.3f} on {len(golds)} items in {outcome.seconds:.0f} s "
        f"(p50 latency {p50:.0f} ms){note}",
        markup=False,
        highlight=False,
    )


def _progress(console: Any):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None or not console.is_terminal,
        transient=True,
    )


def _round(x: float) -> float:
    return round(float(x), 5)
