"""How to serve a LoRA specialist in bf16: each form's agreement with float32 and its speed.

A LoRA update is small next to the weights it changes, so how it meets bf16 decides how much
of it survives. Every form runs in one process on the same test items: quality first (label
log-probabilities against the unmerged adapter in float32 throughout, the most exact form),
then speed in the evaluator's own timing rounds, the order changing between rounds, each
form's p50 latency and throughput as a ratio to the plain base model's within each round.
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Any

from common import run_worker

REFERENCE = "unmerged adapter, float32 throughout"
BASE = "base model, bf16 (no adapter)"
BASE_FLOAT32 = "base model, float32 (no adapter)"


def compare_forms(bench: Any, run_dir: str) -> dict[str, Any]:
    """The serving forms of `run_dir`'s adapter, measured in one child process."""
    from finetune.hardware import fast_bf16

    if not fast_bf16():
        return {"skipped": "no native bf16 on this CPU: auto serves float32, merged"}
    args = {
        "run_dir": run_dir,
        "items": bench.scaled(320, 160),
        "rounds": bench.scaled(8, 6),
        "latency_items": 8,
        "throughput_items": 32,
    }
    result, _ = run_worker("serving_forms", args, bench.work / "logs" / "serving-forms.log")
    return result


def _forms(run_dir: Path) -> dict[str, Any]:
    """name -> a function loading the model in that form."""
    import torch
    from peft import PeftModel

    from finetune.models import load_language_model, resolve
    from finetune.recipe import load_recipe

    source = resolve(load_recipe(run_dir / "recipe.yaml").model.base)
    adapter = str(run_dir / "adapter")

    def base(dtype):
        return load_language_model(source, dtype=dtype)

    def unmerged(dtype, adapter_dtype=None):
        model = PeftModel.from_pretrained(
            base(dtype), adapter, autocast_adapter_dtype=adapter_dtype is None
        )
        for name, param in model.named_parameters():
            if adapter_dtype is not None and "lora_" in name:
                param.data = param.data.to(adapter_dtype)
        return model

    def merged_from_float32(dtype):
        return PeftModel.from_pretrained(base(torch.float32), adapter).merge_and_unload().to(dtype)

    bf16 = torch.bfloat16
    return {
        REFERENCE: lambda: unmerged(torch.float32),
        "unmerged adapter in float32, bf16 weights": lambda: unmerged(bf16),
        "unmerged adapter in bf16 (bf16 matmuls, float32 accumulation)": lambda: unmerged(
            bf16, bf16
        ),
        "merged in float32, served in float32": lambda: merged_from_float32(torch.float32),
        "merged in float32, rounded once to bf16 (the default)": lambda: merged_from_float32(bf16),
        "merged into weights already in bf16": lambda: unmerged(bf16, bf16).merge_and_unload(),
        "merged in float32, split into high + low bf16 halves": lambda: _split(
            merged_from_float32(torch.float32)
        ),
        BASE: lambda: base(bf16),
        BASE_FLOAT32: lambda: base(torch.float32),
    }


def _split(model: Any) -> Any:
    """Every linear layer but the head as two bf16 matmuls, W = high + low, exact to ~16 bits."""
    import torch

    class SplitLinear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            weight = linear.weight.data.float()
            self.high = torch.nn.Parameter(weight.to(torch.bfloat16), requires_grad=False)
            self.low = torch.nn.Parameter(
                (weight - self.high.float()).to(torch.bfloat16), requires_grad=False
            )
            self.bias = linear.bias

        def forward(self, x: Any) -> Any:
            out = torch.nn.functional.linear(x, self.high) + torch.nn.functional.linear(x, self.low)
            return out if self.bias is None else out + self.bias.to(out.dtype)

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "lm_head":
                setattr(module, name, SplitLinear(child))
    for param in model.parameters():
        param.data = param.data.to(torch.bfloat16)
    return model


def serving_forms(args: dict[str, Any]) -> dict[str, Any]:
    """Worker: every form's accuracy and agreement with the reference, then timing rounds."""
    run_dir = Path(args["run_dir"])
    prompts, golds, scorer = _prompts(run_dir, args["items"])
    models = {name: load().eval() for name, load in _forms(run_dir).items()}
    scores = {name: scorer(model, prompts, 16, True) for name, model in models.items()}
    # Each form against the reference; the bf16 base against the float32 base: bf16's own error.
    quality = {
        name: _agreement(scores[name], scores[BASE_FLOAT32 if name == BASE else REFERENCE], golds)
        for name in models
        if name != BASE_FLOAT32
    }
    speed = _timed(models, prompts, scorer, args)
    return {"items": len(prompts), "quality": quality, "speed": speed, "reference": REFERENCE}


def _prompts(run_dir: Path, count: int):
    """The run's first `count` test items as prompts, their golds, and a label scorer."""
    from finetune.data import load_split
    from finetune.models import load_tokenizer, resolve
    from finetune.models.scoring import LabelScorer, label_token_ids
    from finetune.recipe import load_recipe
    from finetune.tasks.prompts import PromptFormat, encode

    recipe = load_recipe(run_dir / "recipe.yaml")
    fmt = PromptFormat.load(run_dir)
    tokenizer = load_tokenizer(resolve(recipe.model.base))
    labels = recipe.task.labels
    label_ids = label_token_ids(fmt, tokenizer, labels)
    items = load_split(recipe, "test")[:count]
    prompts = [
        encode(fmt, tokenizer, item["text"], None, max_length=recipe.model.max_length,
               reserve=max(map(len, label_ids))).input_ids
        for item in items
    ]  # fmt: skip

    def scorer(model, batch_prompts, batch_size, share_prefix):
        rows = LabelScorer(
            model, label_ids, tokenizer.pad_token_id, batch_size=batch_size,
            share_prefix=share_prefix,
        ).score(batch_prompts)  # fmt: skip
        return [(labels[max(range(len(r)), key=r.__getitem__)], r) for r in rows]

    return prompts, [item["label"] for item in items], scorer


def _agreement(scored, reference, golds) -> dict[str, Any]:
    """Accuracy, same predictions as the reference, and label log-probability differences."""
    pairs = list(zip(scored, reference, strict=True))
    diffs = [abs(a - b) for (_, row), (_, ref) in pairs for a, b in zip(row, ref, strict=True)]
    return {
        "accuracy": sum(p == g for (p, _), g in zip(scored, golds, strict=True)) / len(golds),
        "agreement": sum(p == q for (p, _), (q, _) in pairs) / len(golds),
        "mean_abs_logprob_diff": statistics.fmean(diffs),
        "max_abs_logprob_diff": max(diffs),
    }


def _timed(models, prompts, scorer, args) -> dict[str, Any]:
    """The evaluator's timing rounds over the forms; ratios to the bf16 base, paired by round."""
    import time

    from finetune.evaluate.timing import Target, figures_by_round, paired_ratio, run_rounds, summary
    from finetune.systems.base import Measurement

    def target(name, model):
        def measure():
            latencies = []
            for prompt in prompts[: args["latency_items"]]:
                started = time.perf_counter()
                scorer(model, [prompt], 1, False)
                latencies.append((time.perf_counter() - started) * 1000)
            n = args["throughput_items"]
            started = time.perf_counter()
            scorer(model, prompts[:n], 16, True)
            return Measurement(latencies, time.perf_counter() - started, n)

        @contextlib.contextmanager
        def ready():
            scorer(model, prompts[:1], 1, False)
            yield measure

        return Target(name, ready)

    timed = [n for n in models if n not in (REFERENCE, BASE_FLOAT32)]
    for name in timed:
        scorer(models[name], prompts[:16], 16, True)  # first passes allocate and pick kernels
    rounds = run_rounds([target(n, models[n]) for n in timed], args["rounds"], seed=0,
                        budget_seconds=3600)  # fmt: skip
    figures = {n: figures_by_round(rounds.of(n), lambda thr: None) for n in timed}
    return {
        name: {
            "p50_ms": summary(figures[name]["latency"]),
            "items_per_s": summary(figures[name]["throughput"]),
            "latency_vs_base": paired_ratio(
                figures[name]["latency"], figures[BASE]["latency"], 0.95
            ),
            "throughput_vs_base": paired_ratio(
                figures[name]["throughput"], figures[BASE]["throughput"], 0.95
            ),
        }
        for name in timed
    }


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """form, accuracy, agreement, mean |d logprob|, p50 ms, items/s, latency and throughput vs base."""
    rows = []
    for name, q in result["quality"].items():
        s = result["speed"].get(name)
        rows.append(
            [
                name,
                f"{q['accuracy']:.3f}",
                f"{q['agreement']:.1%}",
                f"{q['mean_abs_logprob_diff']:.3f}",
                f"{s['p50_ms']['median']:.0f}" if s else "",
                f"{s['items_per_s']['median']:.1f}" if s else "",
                _ratio(s["latency_vs_base"]) if s else "",
                _ratio(s["throughput_vs_base"]) if s else "",
            ]
        )
    return rows


def _ratio(r: dict[str, Any]) -> str:
    return f"{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}]" if r["low"] is not None else "-"
