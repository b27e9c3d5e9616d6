"""`train(recipe)`: specialize the base model on the recipe's data with TRL's SFTTrainer.

The flow: refuse what cannot train here, prepare data and model (the main process first
under DDP), open the run directory (rank 0), encode examples with the shared prompt format,
train with checkpoints / held-out loss / early stopping / a time budget, then write the
adapter (or full model), prompt format, log, loss curve and summary, and mark the run
complete. `resume=` continues a `.partial` run from its last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from finetune.data import PreparedData, prepare
from finetune.errors import FinetuneError
from finetune.files import write_json
from finetune.hardware import has_cuda, peak_memory_bytes, use_bf16_autocast
from finetune.models import ModelSource, load_tokenizer, resolve
from finetune.prompts import prompt_format
from finetune.recipe import Recipe, recipe_to_dict
from finetune.runs import PARTIAL_SUFFIX, Run, record_inputs, reopen_run, start_run
from finetune.tracking import open_tracker
from finetune.train.callbacks import (
    BudgetCallback,
    LogCallback,
    ProgressCallback,
    read_log,
    truncate_log,
)
from finetune.train.dataset import EncodedSplit, encode_split
from finetune.train.model import (
    check_trainable_here,
    load_base_for_training,
    lora_config,
    parameter_counts,
)
from finetune.train.outputs import SUMMARY_FILE, plot_loss_curve, print_summary, save_outputs

log = logging.getLogger("finetune.train")
CHECKPOINTS = "checkpoints"


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


def train(
    recipe: Recipe,
    *,
    recipe_path: str | Path,
    overrides: Sequence[str] = (),
    resume: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    console: Console | None = None,
) -> TrainResult:
    """Train the recipe's specialist into a new run directory (or continue `resume`) and return it."""
    from accelerate import PartialState

    check_trainable_here(recipe, recipe_path)
    console = console or Console(stderr=True, highlight=False)
    # Joins the process group under torchrun / accelerate launch. `cpu=True` is what makes
    # accelerate pick gloo DDP on a CPU machine; the state is shared, so the Trainer sees it too.
    state = PartialState(cpu=not has_cuda())
    with state.main_process_first():
        prepared = prepare(recipe)
        source = resolve(recipe.model.base)
    run = _open_run(recipe, recipe_path, overrides, resume) if state.is_main_process else None
    run_dir = _shared_path(run)
    if run is not None:
        record_inputs(run, prepared, source)
    try:
        summary = _train_in(
            run_dir, run, recipe, prepared, source, resume is not None, callbacks, console, state
        )
    except BaseException as exc:
        if run is not None:
            run.fail(exc)
            console.print(
                f"training stopped; resume with: finetune train --resume {run.path}", markup=False
            )
        raise
    if run is not None:
        run_dir = run.finish()
        summary["run_dir"] = str(run_dir)
        write_json(run_dir / SUMMARY_FILE, summary)
        print_summary(console, summary)
    return TrainResult(run_dir, summary)


def _open_run(
    recipe: Recipe, recipe_path: str | Path, overrides: Sequence[str], resume: str | Path | None
) -> Run:
    if resume is None:
        return start_run(recipe, recipe_path=recipe_path, overrides=list(overrides))
    return reopen_run(resume)


def _shared_path(run: Run | None) -> Path:
    """The run directory on every rank (rank 0 created it)."""
    from accelerate.utils import broadcast_object_list

    from finetune.train.distributed import world_size

    paths = [str(run.path) if run is not None else None]
    if world_size() > 1:
        broadcast_object_list(paths)
    return Path(paths[0])


def _train_in(
    run_dir: Path,
    run: Run | None,
    recipe: Recipe,
    prepared: PreparedData,
    source: ModelSource,
    resuming: bool,
    extra_callbacks: Sequence[Any],
    console: Console,
    state: Any,
) -> dict[str, Any]:
    from transformers import EarlyStoppingCallback, PrinterCallback

    from finetune.train.loss import SupervisedSFTTrainer

    started = time.monotonic()
    tokenizer = load_tokenizer(source, trust_remote_code=recipe.model.trust_remote_code)
    fmt = prompt_format(tokenizer, recipe.task)
    train_split = encode_split(recipe, "train", fmt, tokenizer)
    val_split = encode_split(recipe, "validation", fmt, tokenizer)
    if train_split is None:
        raise FinetuneError(f"data: the train split of {prepared.path} is empty")
    if val_split is None and recipe.train.early_stopping_patience:
        raise FinetuneError(
            "train.early_stopping_patience needs a validation split; set data.split.validation above 0"
        )
    checkpoint = last_checkpoint(run_dir) if resuming else None
    if resuming and checkpoint is None:
        log.warning("%s has no complete checkpoint: training starts from the beginning", run_dir)
    if run is not None:
        fmt.save(run_dir)
        truncate_log(run_dir, _checkpoint_step(checkpoint))

    model = load_base_for_training(recipe, source)
    args = sft_config(
        recipe,
        run_dir / CHECKPOINTS,
        has_eval=val_split is not None,
        eval_on_start=checkpoint is None,
    )
    tracker = open_tracker(
        recipe,
        run_dir,
        job_type="train",
        config=recipe_to_dict(recipe),
        name=run_dir.name.removesuffix(PARTIAL_SUFFIX),
        resume_id=run.provenance.get("wandb_run_id") if run is not None else None,
        main_process=state.is_main_process,
    )
    if run is not None and tracker.run_id:
        run.record(wandb_run_id=tracker.run_id)
    callbacks = [
        LogCallback(run_dir, tracker),
        ProgressCallback(console),
        BudgetCallback(recipe.train.budget_minutes),
    ]
    if recipe.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(recipe.train.early_stopping_patience))
    try:
        trainer = SupervisedSFTTrainer(
            model=model,
            args=args,
            train_dataset=train_split.dataset,
            eval_dataset=val_split.dataset if val_split else None,
            processing_class=tokenizer,
            peft_config=lora_config(recipe),
            callbacks=[*callbacks, *extra_callbacks],
        )
    except ValueError as exc:
        raise _explain(exc) from exc
    trainer.remove_callback(PrinterCallback)
    trainable, total = parameter_counts(trainer.model)
    log.info(
        "training %s of %s parameters (%s)", f"{trainable:,}", f"{total:,}", recipe.train.method
    )

    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    checksums = rank_checksums(trainer.model)
    if run is None:
        tracker.finish()
        return {}
    output_dir = save_outputs(trainer, run_dir, recipe)
    history = read_log(run_dir)
    curve = plot_loss_curve(history, run_dir, title=recipe.name)
    budget = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, BudgetCallback))
    summary = _summary(
        trainer,
        recipe,
        history,
        train_split,
        val_split,
        trainable,
        total,
        time.monotonic() - started,
        output_dir,
        budget,
        checksums,
    )
    tracker.log_image("train/loss_curve", curve)
    tracker.log_artifact(f"{recipe.name}-{output_dir.name}", "model", output_dir)
    tracker.summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
    tracker.finish()
    return summary


def sft_config(
    recipe: Recipe, output_dir: Path, *, has_eval: bool, eval_on_start: bool = True
) -> Any:
    """TRL's SFTConfig for the recipe. Every TRL default that differs on CPU is set explicitly."""
    from trl import SFTConfig

    t = recipe.train
    return SFTConfig(
        output_dir=str(output_dir),
        seed=recipe.seed,
        data_seed=recipe.seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        # transformers reads a float below 1 as a fraction of the steps, and 1 as "one step".
        warmup_steps=min(t.warmup_ratio, 0.999),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=use_bf16_autocast(recipe.model.dtype),
        fp16=False,
        activation_checkpointing=t.gradient_checkpointing,
        max_length=recipe.model.max_length,
        packing=t.packing,
        completion_only_loss=t.completion_only,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_every,
        eval_on_start=has_eval and eval_on_start,
        save_strategy="steps",
        save_steps=t.save_every,
        save_total_limit=2,  # the best checkpoint is always kept besides the latest
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        restore_callback_states_from_checkpoint=True,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not has_cuda(),
        dataloader_num_workers=0,
    )


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was completely written (trainer_state.json is written last)."""
    found = [
        (int(m.group(1)), p)
        for p in (run_dir / CHECKPOINTS).glob("checkpoint-*")
        if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").is_file()
    ]
    return max(found)[1] if found else None


def _checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.split("-")[1]) if checkpoint else 0


def rank_checksums(model: Any) -> list[str]:
    """A digest of the trainable weights on every rank: DDP ranks must end identical."""
    import torch

    from finetune.train.distributed import gather_objects

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().to(torch.float32).cpu().numpy().tobytes())
    return gather_objects(digest.hexdigest()[:16])


def _summary(
    trainer: Any,
    recipe: Recipe,
    history: list[dict[str, Any]],
    train_split: EncodedSplit,
    val_split: EncodedSplit | None,
    trainable: int,
    total: int,
    wall: float,
    output_dir: Path,
    budget: BudgetCallback,
    checksums: list[str],
) -> dict[str, Any]:
    state = trainer.state
    train_losses = [r["train/loss"] for r in history if "train/loss" in r]
    eval_losses = [r["eval/loss"] for r in history if "eval/loss" in r]
    tokens = state.num_input_tokens_seen
    train_seconds = budget.spent()
    if len(set(checksums)) > 1:
        log.warning("DDP ranks ended with different weights: %s", checksums)
    return {
        "method": recipe.train.method,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": round(state.epoch or 0.0, 4),
        "train_examples": train_split.examples,
        "validation_examples": val_split.examples if val_split else 0,
        "truncated_examples": train_split.truncated + (val_split.truncated if val_split else 0),
        "tokens_seen": tokens,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "tokens_per_second": round(tokens / train_seconds, 1) if train_seconds else None,
        "peak_memory_bytes": peak_memory_bytes(),
        "first_train_loss": train_losses[0] if train_losses else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "first_eval_loss": eval_losses[0] if eval_losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "best_eval_loss": state.best_metric,
        "best_step": state.best_global_step,
        "stopped_by": _stop_reason(state, budget),
        "world_size": len(checksums),
        "rank_weight_digests": checksums,
        "output": output_dir.name,
    }


def _stop_reason(state: Any, budget: BudgetCallback) -> str:
    if budget.stopped_at is not None:
        return f"time budget (train.budget_minutes) at step {budget.stopped_at}"
    if state.global_step < state.max_steps:
        return "early stopping (train.early_stopping_patience)"
    return "completed"


def _explain(exc: ValueError) -> Exception:
    """PEFT and TRL configuration errors, reworded to name the recipe key that fixes them."""
    text = str(exc)
    if "Target modules" in text or "target_modules" in text:
        return FinetuneError(f"lora.target_modules: {text}")
    return exc
