"""Training benchmarks: the workbench against `trl sft`, the levers, memory, and growth."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BIN,
    RECIPE,
    finetune_cmd,
    joined_reviews,
    line_fit,
    read_json,
    run_child,
    run_worker,
    threads,
    write_jsonl,
)

BATCH = 8
LORA = {"r": 16, "alpha": 32}


@dataclass
class Bench:
    """Where one benchmark run writes, and how big it is."""

    work: Path
    quick: bool

    def scaled(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def _overrides(bench: Bench, train_examples: int, *extra: str) -> list[str]:
    """The default recipe sized for a benchmark; no mid-run validation or checkpoints."""
    return [
        f"data.max_train_examples={train_examples}",
        "data.max_validation_examples=8",
        "train.epochs=1",
        "train.eval_every=100000",
        "train.save_every=100000",
        "train.budget_minutes=null",
        "tracking.wandb.mode=disabled",
        f"tracking.runs_dir={bench.work / 'runs'}",
        *extra,
    ]


def train_ours(bench: Bench, label: str, recipe: Path, overrides: list[str]) -> dict[str, Any]:
    """`finetune train` in its own process; throughput from its summary (validation excluded)."""
    before = set((bench.work / "runs").glob("*/*"))
    done = run_child(
        finetune_cmd("train", str(recipe), *overrides), bench.work / "logs" / f"{label}.log"
    )
    (run_dir,) = [p for p in (bench.work / "runs").glob("*/*") if p not in before]
    summary = read_json(run_dir / "train_summary.json")
    seconds = summary["tokens_seen"] / summary["tokens_per_second"]
    return {
        "run_dir": str(run_dir),
        "steps": summary["steps"],
        "tokens": summary["tokens_seen"],
        "seconds": seconds,
        "tokens_per_s": summary["tokens_per_second"],
        "final_train_loss": summary["final_train_loss"],
        "peak_rss_bytes": done.peak_rss_bytes,
    }


def _trl_dataset(recipe: Any, rows: list[dict[str, Any]], path: Path) -> Path:
    """The same examples in TRL's conversational prompt-completion format (its chat template applies)."""
    instruction = recipe.task.instruction
    return write_jsonl(
        path / "train.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": f"{instruction}\n\n{r['text']}"}],
                "completion": [{"role": "assistant", "content": r["label"]}],
            }
            for r in rows
        ],
    )


def train_trl(
    bench: Bench, label: str, recipe: Any, rows: list[dict[str, Any]], *, checkpointing: bool
) -> dict[str, Any]:
    """TRL's own `trl sft` command with the recipe's model, data, LoRA, batch, steps, length and precision."""
    data_dir = bench.work / "trl-data"
    _trl_dataset(recipe, rows, data_dir)
    out = bench.work / label
    steps = math.ceil(len(rows) / recipe.train.batch_size)
    cmd = trl_command(recipe, data_dir, out, steps, checkpointing=checkpointing)
    done = run_child(cmd, bench.work / "logs" / f"{label}.log")
    # TRL counts the non-padding tokens it trained as `num_tokens` (its CLI can only ask
    # transformers for `num_input_tokens_seen` with padding); it prints 4 significant digits.
    tokens = round(float(_trl_logs(done.stdout, "num_tokens")[-1]["num_tokens"]))
    seconds = float(_trl_logs(done.stdout, "train_runtime")[-1]["train_runtime"])
    return {
        "adapter": str(out),
        "steps": steps,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss_bytes": done.peak_rss_bytes,
        "gradient_checkpointing": checkpointing,
    }


def trl_command(
    recipe: Any, data_dir: Path, out: Path, steps: int, *, checkpointing: bool
) -> list[str]:
    """The `trl sft` command line for the recipe's settings."""
    from finetune.hardware import has_cuda, use_bf16_autocast, weight_dtype_name
    from finetune.models import resolve

    t = recipe.train
    # The precision the workbench resolves `model.dtype` to on this machine: the same weight
    # dtype, and bf16 autocast where the CPU runs bf16 natively (else float32 throughout:
    # bf16 runs ~100x slower than float32 on a CPU without AVX512-BF16 or AMX).
    dtype = weight_dtype_name(recipe.model.dtype, method=t.method)
    bf16 = use_bf16_autocast(recipe.model.dtype)
    return [
        str(BIN / "trl"), "sft",
        "--model_name_or_path", resolve(recipe.model.base).location,
        "--dataset_name", str(data_dir),
        "--output_dir", str(out),
        "--use_peft", "--lora_r", str(recipe.lora.r), "--lora_alpha", str(recipe.lora.alpha),
        "--lora_dropout", str(recipe.lora.dropout), "--lora_target_modules", "all-linear",
        "--per_device_train_batch_size", str(t.batch_size),
        "--gradient_accumulation_steps", str(t.gradient_accumulation_steps),
        "--max_steps", str(steps),
        "--max_length", str(recipe.model.max_length),
        "--learning_rate", str(t.learning_rate), "--lr_scheduler_type", t.lr_scheduler,
        "--warmup_steps", str(t.warmup_ratio), "--weight_decay", str(t.weight_decay),
        "--max_grad_norm", str(t.max_grad_norm),
        "--seed", str(recipe.seed), "--data_seed", str(recipe.seed),
        "--bf16", str(bf16), "--dtype", dtype,
        # transformers refuses `--bf16 True` without a GPU unless told it runs on the CPU.
        "--use_cpu", str(not has_cuda()),
        "--activation_checkpointing", str(checkpointing),
        "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "no",
        "--report_to", "none",
        # accelerate launch would otherwise give its worker one thread.
        "--num_cpu_threads_per_process", str(threads()),
    ]  # fmt: skip


def _trl_logs(stdout: str, key: str) -> list[dict[str, str]]:
    """The log records transformers printed that hold `key`, e.g. {'train_runtime': '181.7', ...}."""
    records = [r for r in re.findall(r"\{'[^{}]*\}", stdout) if f"'{key}'" in r]
    if not records:
        raise RuntimeError(f"trl sft printed no {key} record")
    return [dict(re.findall(r"'(\w+)': '?([\d.e+-]+)'?", record)) for record in records]


def compare_with_trl(bench: Bench) -> dict[str, Any]:
    """Same model, data, LoRA, batch, steps, length and precision; held-out loss by one scorer."""
    from finetune.data import load_split
    from finetune.models import resolve
    from finetune.recipe import load_recipe

    n = bench.scaled(480, 160)
    overrides = _overrides(bench, n)
    recipe = load_recipe(RECIPE, overrides)
    rows = load_split(recipe, "train")
    heldout = write_jsonl(
        bench.work / "heldout.jsonl",
        load_split(load_recipe(RECIPE, ["data.max_validation_examples=96"]), "validation"),
    )
    ours = train_ours(bench, "train-workbench", RECIPE, overrides)
    peers = {
        "trl sft": train_trl(bench, "trl-sft", recipe, rows, checkpointing=True),
        "trl sft, no checkpointing": train_trl(
            bench, "trl-sft-nogc", recipe, rows, checkpointing=False
        ),
    }
    base = resolve(recipe.model.base).location
    scorer = {
        "base": base,
        "rows": str(heldout),
        "prompt_run": ours["run_dir"],
        "max_length": recipe.model.max_length,
    }
    ours["heldout_loss"] = run_worker(
        "heldout_loss",
        scorer | {"adapter": str(Path(ours["run_dir"]) / "adapter")},
        bench.work / "logs" / "loss-workbench.log",
    )[0]["loss"]
    for label, peer in peers.items():
        peer["heldout_loss"] = run_worker(
            "heldout_loss",
            scorer | {"adapter": peer["adapter"]},
            bench.work / "logs" / f"loss-{_slug(label)}.log",
        )[0]["loss"]
    return {"examples": n, "heldout_examples": 96, "workbench": ours, "peers": peers}


def levers(bench: Bench) -> dict[str, Any]:
    """Each training lever switched alone on the same short run; tokens/s and peak memory."""
    n = bench.scaled(160, 96)
    variants = {
        "padded batches, random order": ["train.group_by_length=false"],
        "length-grouped batches": ["train.group_by_length=true"],
        "padding-free batches": ["train.group_by_length=false", "train.padding_free=true"],
        "packing (bfd)": ["train.group_by_length=false", "train.packing=true"],
        "gradient checkpointing": ["train.gradient_checkpointing=true"],
        "sdpa attention (auto picks eager for CPU bf16)": ["train.attention=sdpa"],
        "compiled decoder layers (cold compile included)": ["train.compile=true"],
    }
    found = {}
    for label, extra in variants.items():
        found[label] = train_ours(
            bench, f"lever-{_slug(label)}", RECIPE, _overrides(bench, n, *extra)
        )
    return {"examples": n, "variants": found}


def _slug(label: str) -> str:
    return re.sub(r"\W+", "-", label).strip("-")


def _long_recipe(bench: Bench, k: int, count: int) -> Path:
    """A recipe over examples of k joined reviews, written next to their split files."""
    from finetune.data import load_split
    from finetune.recipe import load_recipe

    rows = load_split(load_recipe(RECIPE, ["data.max_train_examples=null"]), "train")
    folder = bench.work / f"joined-{k}"
    files = {}
    for split, size in (("train", count), ("validation", 8), ("test", 8)):
        offset = {"train": 0, "validation": 3000, "test": 3400}[split]
        files[split] = write_jsonl(
            folder / f"{split}.jsonl", joined_reviews(rows[offset:], k, size, f"{split}{k}")
        )
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"base: {RECIPE}\nname: bench-joined-{k}\ndata:\n  source: null\n  split_files:\n"
        + "".join(f"    {split}: {path}\n" for split, path in files.items())
        + f"  prepared_dir: {bench.work / 'data'}\n",
        encoding="utf-8",
    )
    return recipe


def as_shipped(bench: Bench) -> dict[str, Any]:
    """The default recipe exactly as shipped (its budget, validation and checkpoints): how much
    of the training time validation takes, how far the budget gets, and peak memory."""
    ours = train_ours(
        bench,
        "recipe-as-shipped",
        RECIPE,
        ["tracking.wandb.mode=disabled", f"tracking.runs_dir={bench.work / 'runs'}"],
    )
    summary = read_json(Path(ours["run_dir"]) / "train_summary.json")
    return {
        **ours,
        "train_seconds": summary["train_seconds"],
        "eval_seconds": summary["eval_seconds"],
        "validation_share": summary["eval_seconds"] / summary["train_seconds"],
        "max_steps": summary["max_steps"],
        "stopped_by": summary["stopped_by"],
    }


def dtypes(bench: Bench) -> dict[str, Any]:
    """Training speed in float32 and in bf16 on the same short run: is `model.dtype: auto`'s
    choice the faster one on this machine?"""
    from finetune.hardware import fast_bf16, weight_dtype_name
    from finetune.recipe import load_recipe

    # Without native bf16 a bf16 step is 30-100x slower (an AVX2-only EPYC, 2026-12-02: 1.2 vs 39.5
    # GFLOP/s at the MLP's shapes): two steps each tell the rates apart in minutes, not hours.
    n = bench.scaled(160, 96) if fast_bf16() else 16
    runs = {
        dtype: train_ours(
            bench, f"dtype-{dtype}", RECIPE, _overrides(bench, n, f"model.dtype={dtype}")
        )
        for dtype in ("float32", "bfloat16")
    }
    return {
        "examples": n,
        "auto": weight_dtype_name(load_recipe(RECIPE, []).model.dtype),
        "runs": runs,
    }


def memory(bench: Bench) -> dict[str, Any]:
    """Peak resident memory of LoRA training at sequence length 512, by batch layout, beside
    `trl sft` on the same examples at batch 8."""
    from finetune.data import load_split
    from finetune.recipe import load_recipe

    recipe = _long_recipe(bench, 8, 32)
    layouts = {
        "batch 8": ["train.batch_size=8"],
        "batch 1 x 8 accumulation": ["train.batch_size=1", "train.gradient_accumulation_steps=8"],
        "batch 1 x 8, checkpointing": [
            "train.batch_size=1",
            "train.gradient_accumulation_steps=8",
            "train.gradient_checkpointing=true",
        ],
    }
    found = {}
    for label, extra in layouts.items():
        found[label] = train_ours(
            bench,
            f"memory-{_slug(label)}",
            recipe,
            _overrides(bench, 32, "model.max_length=512", "train.max_steps=2", *extra),
        )
    long = load_recipe(recipe, _overrides(bench, 16, "model.max_length=512", "train.batch_size=8"))
    rows = load_split(long, "train")
    peers = {
        f"trl sft{'' if gc else ', no checkpointing'}, batch 8": train_trl(
            bench, f"memory-trl-{'gc' if gc else 'nogc'}", long, rows, checkpointing=gc
        )
        for gc in (True, False)
    }
    return {"max_length": 512, "layouts": found, "peers": peers}


def growth(bench: Bench) -> dict[str, Any]:
    """Training time against examples (1k/2k/4k) and against sequence length."""
    by_examples = {}
    for n in [bench.scaled(n, n // 8) for n in (1000, 2000, 4000)]:
        # The train split holds ~3.9k examples: 4k steps into a second epoch.
        by_examples[n] = train_ours(
            bench, f"growth-n{n}", RECIPE, _overrides(bench, n, f"train.max_steps={n // BATCH}")
        )
    by_length = {}
    count = bench.scaled(256, 48)
    for k in (1, 2, 4):
        recipe = _long_recipe(bench, k, count)
        by_length[k] = train_ours(
            bench, f"growth-k{k}", recipe, _overrides(bench, count, "model.max_length=512")
        )
    return {
        "by_examples": by_examples,
        "examples_fit": line_fit(
            [r["tokens"] for r in by_examples.values()],
            [r["seconds"] for r in by_examples.values()],
        ),
        "by_length": by_length,
        "length_fit": line_fit(
            [r["tokens"] for r in by_length.values()], [r["seconds"] for r in by_length.values()]
        ),
    }


def hardware(bench: Bench, trained_run: str) -> dict[str, Any]:
    """Matmul peaks (fp32, bf16) and the FLOPs per trained token, for model FLOPs utilization."""
    from finetune.data import load_split
    from finetune.models import resolve
    from finetune.recipe import load_recipe

    seconds = 1.0 if bench.quick else 2.0
    peak, _ = run_worker(
        "matmul_peak",
        {
            "sizes": {"float32": [1024, 2048, 4096], "bfloat16": [512, 1024, 2048, 4096]},
            "seconds": seconds,
        },
        bench.work / "logs" / "matmul-peak.log",
    )
    recipe = load_recipe(RECIPE, [])
    sample = write_jsonl(bench.work / "flops-sample.jsonl", load_split(recipe, "train")[:16])
    flops, _ = run_worker(
        "training_flops",
        {"base": resolve(recipe.model.base).location, "rows": str(sample), "prompt_run": trained_run,
         "max_length": recipe.model.max_length, **LORA},
        bench.work / "logs" / "flops.log",
    )  # fmt: skip
    return {"peak": peak, "flops": flops}
