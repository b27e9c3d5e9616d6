"""What a finished training run leaves behind: the adapter or model, the loss curve and the summary."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from finetune.files import write_atomic
from finetune.recipe import Recipe

LOSS_CURVE = "loss_curve.png"
SUMMARY_FILE = "train_summary.json"


def save_outputs(trainer: Any, run_dir: Path, recipe: Recipe) -> Path:
    """Save the trained weights with the tokenizer: `adapter/` (PEFT format) or `model/` (full)."""
    out = run_dir / ("adapter" if recipe.train.method == "lora" else "model")
    trainer.save_model(str(out))  # the tokenizer is saved alongside (processing_class)
    # Trainer also pickles its arguments there; nothing loads them and a pickle is code to trust.
    (out / "training_args.bin").unlink(missing_ok=True)
    _rewrite_model_card(out / "README.md", recipe)
    return out


def _rewrite_model_card(path: Path, recipe: Recipe) -> None:
    """PEFT saves its model-card template, "[More Information Needed]" in every section: keep its
    metadata header (base model, library, tags) and say what the adapter is and where it came from."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    header = text[: text.index("\n---\n", 4) + 5] if text.startswith("---\n") else ""
    labels = f" ({', '.join(recipe.task.labels)})" if recipe.task.labels else ""
    body = (
        f"# {recipe.name}\n\n"
        f"A LoRA adapter on `{recipe.model.base}` for {recipe.task.type}{labels}, trained by "
        "`finetune train`. The run directory above this folder holds the recipe (`recipe.yaml`), "
        "provenance, the training log and summary, and, once evaluated, the comparison with the "
        "baselines (`eval/`, `report/`).\n"
    )
    write_atomic(path, f"{header}\n{body}" if header else body)


def plot_loss_curve(history: list[dict[str, Any]], run_dir: Path, *, title: str) -> Path:
    """Training and validation loss by step, as a PNG in the run directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for key, label, style in (
        ("train/loss", "train loss", "-"),
        ("eval/loss", "validation loss", "o-"),
    ):
        points = [(r["step"], r[key]) for r in history if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return write_atomic(run_dir / LOSS_CURVE, png.getvalue())


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """One screen: what was trained, how fast, how well, and where it was written."""
    table = Table(title="training summary", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        (
            "parameters",
            f"{summary['trainable_parameters']:,} trainable of {summary['total_parameters']:,} "
            f"({summary['method']}, {summary['head']} head)",
        ),
        (
            "steps",
            f"{summary['steps']} of {summary['max_steps']} ({summary['epochs']} epochs); {summary['stopped_by']}",
        ),
        ("tokens seen", f"{summary['tokens_seen']:,}"),
        (
            "wall time",
            f"{summary['wall_seconds']:.0f} s ({summary['train_seconds']:.0f} s training, "
            f"{summary['eval_seconds']:.0f} s of it validation)",
        ),
        ("throughput", f"{summary['tokens_per_second'] or 0:,.0f} tokens/s (validation excluded)"),
        ("peak memory", f"{summary['peak_memory_bytes'] / 2**30:.2f} GiB"),
        ("train loss", _pair(summary["first_train_loss"], summary["final_train_loss"])),
        (
            "eval loss",
            _pair(summary["first_eval_loss"], summary["final_eval_loss"])
            + (
                f"; best {summary['best_eval_loss']:.4f} at step {summary['best_step']} (kept)"
                if summary["best_eval_loss"] is not None
                else ""
            ),
        ),
        ("written to", f"{summary['run_dir']}/{summary['output']}"),
    ]
    if summary["world_size"] > 1:
        same = len(set(summary["rank_weight_digests"])) == 1
        rows.append(
            (
                "processes",
                f"{summary['world_size']} (weights identical on every rank: {'yes' if same else 'NO'})",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _pair(first: float | None, last: float | None) -> str:
    if first is None or last is None:
        return "-"
    return f"{first:.4f} -> {last:.4f}"
