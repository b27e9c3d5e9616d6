"""`make bench`: the workbench against the tools users would otherwise run, side by side on this machine.

Training against TRL's `trl sft`, classification scoring against lm-evaluation-harness,
model FLOPs utilization against this CPU's measured matmul peak, peak memory, and growth
with data size. Every measurement runs in its own process, one after another, so the
ratios compare runs made minutes apart on the same machine. Prints a table and writes
`results.json` (and `growth.png`) under runs/bench/<time>/.

    python scripts/bench/run.py [--quick] [--only train,eval,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import engine
import engine_labels
import evaluation
import serve_load
import serving
import training
from common import ROOT, threads
from rich.console import Console
from rich.table import Table
from training import Bench

SECTIONS = (
    "train", "recipe", "dtype", "hardware", "eval", "serving", "serve", "engine", "labels",
    "generate", "memory", "levers", "growth",
)  # fmt: skip
GENERAL_NAME = serve_load.GENERAL
TARGETS = {
    "training_speedup": 2.0,
    "heldout_loss_margin": 0.02,
    "mfu_bf16": 0.45,
    "eval_speedup": 3.0,
    "agreement": 0.99,
    "engine_speedup": 5.0,
    "train_memory_bytes": 1.5e9,
    "validation_share": 0.10,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        print(
            f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    bench = Bench(Path(args.out or ROOT / "runs" / "bench" / stamp).resolve(), args.quick)
    bench.work.mkdir(parents=True, exist_ok=True)
    # A cache of its own, so `train.compile` is measured cold, as on a user's first run.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(bench.work / "inductor-cache")
    console = Console(stderr=True, highlight=False)
    console.print(
        f"benchmark work directory: {bench.work}  ({'quick' if args.quick else 'full'} sizes)",
        markup=False,
    )
    results: dict[str, Any] = {"machine": _machine(), "started": stamp, "quick": args.quick}
    run_dir = args.run
    steps = [
        ("train", "training: workbench vs trl sft", lambda: training.compare_with_trl(bench)),
        ("recipe", "the default recipe as shipped", lambda: training.as_shipped(bench)),
        ("dtype", "training in float32 and in bf16", lambda: training.dtypes(bench)),
        ("hardware", "matmul peaks and FLOPs per token", lambda: training.hardware(bench, run_dir)),
        ("eval", "evaluation: workbench vs lm-eval", lambda: evaluation.compare_with_lm_eval(bench, run_dir)),
        ("serving", "serving forms of the specialist in bf16", lambda: serving.compare_forms(bench, run_dir)),
        ("serve", "serving under load: the served specialist vs the general model on llama.cpp's server", lambda: serve_load.load_test(bench, run_dir)),
        ("engine", "general model: llama.cpp Q4 vs transformers", lambda: engine.compare_with_transformers(bench)),
        ("labels", "engine label scoring: one decode per label vs one call per token", lambda: engine_labels.label_scoring(bench)),
        ("generate", "general model answering: llama.cpp Q4 vs transformers", lambda: engine.compare_generation(bench)),
        ("memory", "training memory at sequence length 512", lambda: training.memory(bench)),
        ("levers", "training levers", lambda: training.levers(bench)),
        ("growth", "growth with data size", lambda: {
            "train": training.growth(bench), "eval": evaluation.growth(bench, run_dir)}),
    ]  # fmt: skip
    for name, title, measure in steps:
        if name not in only:
            continue
        if name in ("hardware", "eval", "serving", "serve", "growth") and run_dir is None:
            console.print(
                f"{name}: needs a trained run (the train section, or --run RUN)", markup=False
            )
            continue
        console.rule(title)
        started = time.monotonic()
        results[name] = measure()
        results[name]["bench_seconds"] = round(time.monotonic() - started, 1)
        if name == "train":
            run_dir = results["train"]["workbench"]["run_dir"]
        _save(bench, results)
    results["summary"] = summarize(results)
    _save(bench, results)
    _print_table(console, results["summary"])
    if results.get("serving", {}).get("quality"):
        _print_serving(console, results["serving"])
    if results.get("serve", {}).get("clients"):
        _print_load(console, results["serve"])
    if "growth" in results:
        console.print(f"growth plot: {_plot_growth(bench, results['growth'])}", markup=False)
    console.print(f"results: {bench.work / 'results.json'}", markup=False)
    return 0


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per comparison: workbench, peer, ratio, target and whether it is met."""
    rows: list[dict[str, Any]] = []
    train = results.get("train")
    if train:
        ours = train["workbench"]
        for label, peer in train["peers"].items():
            rows.append(
                _row(
                    f"tokens trained vs {label} (same examples)",
                    ours["tokens"],
                    peer["tokens"],
                    ours["tokens"] / peer["tokens"],
                    "1.00x (TRL logs 4 digits)",
                    abs(ours["tokens"] / peer["tokens"] - 1) < 0.001,
                )
            )
            ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
            rows.append(
                _row(
                    f"training tokens/s vs {label}",
                    ours["tokens_per_s"],
                    peer["tokens_per_s"],
                    ratio,
                    f">= {TARGETS['training_speedup']}x",
                    ratio >= TARGETS["training_speedup"],
                )
            )
            gap = ours["heldout_loss"] / peer["heldout_loss"] - 1
            rows.append(
                _row(
                    f"held-out loss vs {label}",
                    ours["heldout_loss"],
                    peer["heldout_loss"],
                    ours["heldout_loss"] / peer["heldout_loss"],
                    "<= 1.02x",
                    gap <= TARGETS["heldout_loss_margin"],
                )
            )
        rows.append(
            _row(
                "training peak RSS (GB) vs trl sft",
                ours["peak_rss_bytes"] / 1e9,
                train["peers"]["trl sft"]["peak_rss_bytes"] / 1e9,
                ours["peak_rss_bytes"] / train["peers"]["trl sft"]["peak_rss_bytes"],
                "",
                None,
            )
        )
    rows += _recipe_rows(results)
    hw = results.get("hardware")
    if hw and train:
        achieved = hw["flops"]["flops_per_token"] * train["workbench"]["tokens_per_s"]
        for dtype in ("bfloat16", "float32"):
            peak = hw["peak"][dtype]["flops_per_s"]
            target = TARGETS["mfu_bf16"] if dtype == "bfloat16" else None
            rows.append(
                _row(
                    f"MFU vs {dtype} matmul peak ({peak / 1e9:.1f} GFLOP/s)",
                    achieved / 1e9,
                    peak / 1e9,
                    achieved / peak,
                    f">= {target:.0%}" if target else "",
                    achieved / peak >= target if target else None,
                )
            )
    for dtype, ev in results.get("eval", {}).get("by_dtype", {}).items():
        ours, peer = ev["workbench"], ev["peer"]
        ratio = ours["items_per_s"] / peer["items_per_s"]
        rows.append(
            _row(
                f"eval items/s vs lm-eval ({dtype})",
                ours["items_per_s"],
                peer["items_per_s"],
                ratio,
                f">= {TARGETS['eval_speedup']}x",
                ratio >= TARGETS["eval_speedup"],
            )
        )
        rows.append(
            _row(
                f"same prediction as lm-eval ({dtype})",
                ev["agreement"],
                None,
                None,
                f">= {TARGETS['agreement']:.0%}",
                ev["agreement"] >= TARGETS["agreement"],
            )
        )
        rows.append(
            _row(
                f"eval peak RSS (GB) vs lm-eval ({dtype})",
                ours["peak_rss_bytes"] / 1e9,
                peer["peak_rss_bytes"] / 1e9,
                ours["peak_rss_bytes"] / peer["peak_rss_bytes"],
                "",
                None,
            )
        )
    mem = results.get("memory")
    if mem:
        for label, run in {**mem["layouts"], **mem.get("peers", {})}.items():
            gb = run["peak_rss_bytes"] / 1e9
            rows.append(
                _row(
                    f"training peak RSS (GB), length 512, {label}",
                    gb,
                    None,
                    None,
                    "<= 1.5 GB",
                    run["peak_rss_bytes"] <= TARGETS["train_memory_bytes"],
                )
            )
    lev = results.get("levers")
    if lev:
        # Same examples and steps in every variant; token counts differ by how each layout
        # counts (padding-free batches have no attention mask), so compare times.
        variants = lev["variants"]
        plain = variants["padded batches, random order"]
        for label, run in variants.items():
            if run is not plain:
                rows.append(
                    _row(
                        f"lever: {label} (s, vs padded random)",
                        run["seconds"],
                        plain["seconds"],
                        plain["seconds"] / run["seconds"],
                        "",
                        None,
                    )
                )
    rows += _engine_rows(results.get("engine", {}))
    rows += _label_rows(results.get("labels", {}))
    rows += _generation_rows(results.get("generate"))
    grown = results.get("growth")
    if grown:
        for label, fit in (
            ("training time vs tokens (examples)", grown["train"]["examples_fit"]),
            ("training time vs tokens (length)", grown["train"]["length_fit"]),
            ("eval time vs items", grown["eval"]["fit"]),
        ):
            rows.append(
                _row(
                    f"{label}: linear fit R^2", fit["r2"], None, None, ">= 0.99", fit["r2"] >= 0.99
                )
            )
    rows += _serve_rows(results.get("serve"))
    return rows  # fmt: skip


def _serve_rows(served: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Requests/s of the served specialist against the general model's server, per client
    count; every request must be answered."""
    if not served or "clients" not in served:
        return []
    rows = []
    for n, pair in served["clients"].items():
        ours, theirs = pair["specialist"], pair["general"]
        errors = ours["errors"] + theirs["errors"]
        rows.append(_row(
            f"served requests/s vs {GENERAL_NAME} on llama.cpp, {n} clients",
            ours["requests_per_s"], theirs["requests_per_s"], pair["throughput_ratio"],
            "0 errors", errors == 0,
        ))  # fmt: skip
    return rows


def _recipe_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The default recipe as shipped (validation share, memory) and float32 against bf16."""
    rows = []
    shipped = results.get("recipe")
    if shipped:
        share = shipped["validation_share"]
        rows.append(
            _row(
                f"validation share of the default recipe's training ({shipped['eval_seconds']:.0f} of "
                f"{shipped['train_seconds']:.0f} s; {shipped['steps']}/{shipped['max_steps']} steps, "
                f"{shipped['stopped_by']})",
                share,
                None,
                None,
                f"<= {TARGETS['validation_share']:.0%}",
                share <= TARGETS["validation_share"],
            )
        )
        rows.append(
            _row(
                "training peak RSS (GB), default recipe as shipped",
                shipped["peak_rss_bytes"] / 1e9,
                None,
                None,
                "",
                None,
            )
        )
    dtype = results.get("dtype")
    if dtype:
        fp32, bf16 = dtype["runs"]["float32"], dtype["runs"]["bfloat16"]
        faster = "bfloat16" if bf16["tokens_per_s"] > fp32["tokens_per_s"] else "float32"
        rows.append(
            _row(
                f"training tokens/s, bf16 vs float32 (auto picks {dtype['auto']})",
                bf16["tokens_per_s"],
                fp32["tokens_per_s"],
                bf16["tokens_per_s"] / fp32["tokens_per_s"],
                "auto picks the faster",
                dtype["auto"] == faster,
            )
        )
    return rows  # fmt: skip


def _label_rows(tasks: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task: the engine's items/s scoring each label in one decode, against one call per
    label token, and how far their log-likelihoods are apart."""
    return [
        _row(
            f"engine labels, {name} ({t['items']} items, {t['labels']} labels of up to "
            f"{max(t['label_tokens'])} tokens; max |logprob gap| {t['max_abs_logprob_gap']:.3f}, "
            f"same label {t['same_labels']:.0%}): items/s, one decode per label vs per token",
            t["after_items_per_s"],
            t["before_items_per_s"],
            t["speedup"],
            "",
            None,
        )
        for name, t in tasks.items()
        if isinstance(t, dict)
    ]


def _engine_rows(models: dict[str, Any]) -> list[dict[str, Any]]:
    """Per general model: llama.cpp's scoring speed, memory and agreement against transformers."""
    rows = []
    for model, c in models.items():
        if not isinstance(c, dict):
            continue  # bench_seconds
        ours, peer = c["engine"], c["transformers"]
        rows += [
            _row(
                f"{model}: scoring items/s, llama.cpp Q4 vs transformers",
                ours["items_per_s"],
                peer["items_per_s"],
                c["speedup"],
                f">= {TARGETS['engine_speedup']}x",
                c["speedup"] >= TARGETS["engine_speedup"],
            ),
            _row(
                f"{model}: peak RSS (GB), llama.cpp Q4 vs transformers",
                ours["peak_rss_bytes"] / 1e9,
                peer["peak_rss_bytes"] / 1e9,
                ours["peak_rss_bytes"] / peer["peak_rss_bytes"],
                "",
                None,
            ),
            _row(
                f"{model}: same prediction as transformers ({c['items']} items; accuracy "
                f"{ours['accuracy']:.3f} vs {peer['accuracy']:.3f}; mean |logprob gap| "
                f"{c['mean_abs_logprob_gap']:.3f})",
                c["agreement"],
                None,
                None,
                "",
                None,
            ),
        ]
    return rows


def _generation_rows(generated: dict[str, Any] | None) -> list[dict[str, Any]]:
    """llama.cpp's greedy tokens/s against transformers at the evaluator's batch and at batch 1."""
    if not generated:
        return []
    ours = generated["runs"]["engine"]
    return [
        _row(
            f"{generated['model']}: generated tokens/s, llama.cpp Q4 (one prompt at a time) vs "
            f"{name} ({generated['items']} questions; same answer {generated['same_answers'][name]:.0%})",
            ours["tokens_per_s"],
            generated["runs"][name]["tokens_per_s"],
            ratio,
            "",
            None,
        )
        for name, ratio in generated["speedups"].items()
    ]


def _row(
    name: str, ours: float, peer: float | None, ratio: float | None, target: str, met: bool | None
) -> dict:
    return {
        "measure": name,
        "workbench": ours,
        "peer": peer,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def _print_table(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="finetune benchmarks (workbench / peer)")
    for column in ("measure", "workbench", "peer", "ratio", "target", "met"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for row in rows:
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[row["met"]]
        table.add_row(
            row["measure"],
            _num(row["workbench"]),
            _num(row["peer"]),
            f"{row['ratio']:.2f}x" if row["ratio"] is not None else "",
            row["target"],
            met,
        )
    Console(highlight=False, width=max(Console().width, 110)).print(table)


def _print_serving(console: Console, result: dict[str, Any]) -> None:
    table = Table(
        title=f"serving forms, {result['items']} test items (reference: {result['reference']})"
    )
    for column in ("form", "accuracy", "same as ref.", "mean |d logprob|", "p50 ms", "items/s",
                   "latency vs base", "throughput vs base"):  # fmt: skip
        table.add_column(column, justify="left" if column == "form" else "right")
    for row in serving.table_rows(result):
        table.add_row(*row)
    Console(highlight=False, width=max(Console().width, 150)).print(table)


def _print_load(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=f"serving under load: {result['items']} test items per client count")
    for column in ("server", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                   "accuracy", "peak GiB", "req/s vs general"):  # fmt: skip
        table.add_column(column, justify="left" if column == "server" else "right")
    for row in serve_load.table_rows(result):
        table.add_row(*row)
    Console(highlight=False, width=max(Console().width, 150)).print(table)


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _plot_growth(bench: Bench, grown: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=110)
    panels = [
        (grown["train"]["by_examples"], "tokens", "training: more examples", "trained tokens"),
        (grown["train"]["by_length"], "tokens", "training: longer examples", "trained tokens"),
        (grown["eval"]["by_items"], "items", "evaluation: more items", "test items"),
    ]
    for ax, (runs, key, title, xlabel) in zip(axes, panels, strict=True):
        xs = [r[key] for r in runs.values()]
        ax.plot(xs, [r["seconds"] for r in runs.values()], "o-")
        ax.set(title=title, xlabel=xlabel, ylabel="seconds")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = bench.work / "growth.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def _machine() -> dict[str, Any]:
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu": cpu,
        "threads": threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).date().isoformat(),
    }


def _save(bench: Bench, results: dict[str, Any]) -> None:
    from finetune.files import write_json

    write_json(bench.work / "results.json", results)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes (~1/3 of the time); figures are noisier"
    )
    parser.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument(
        "--run", help="a trained run for hardware/eval/growth when the train section is skipped"
    )
    parser.add_argument("--out", help="work directory (default runs/bench/<time>)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
