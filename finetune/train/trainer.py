"""`train(recipe)`: specialize the base model on the recipe's data.

The flow: refuse what cannot train here, prepare data and model (the main process first
under DDP), pick the objective of the recipe's head (`objective.py`: TRL's SFTTrainer on
prompt + answer for a causal LM, transformers' Trainer for a sequence classifier), open the
run directory (rank 0), encode examples, train with checkpoints / held-out loss / early
stopping / a time budget, then write the adapter (or full model), input format, head, log,
loss curve and summary, and mark the run complete. `resume=` continues a `.partial` run from
its last complete checkpoint.
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

from finetune.data import PreparedData, load_split, prepare
from finetune.data.teacher import asked, teacher_card
from finetune.errors import FinetuneError
from finetune.files import write_json
from finetune.hardware import has_cuda, peak_memory_bytes, weight_dtype
from finetune.models import ModelSource, check_fits, load_tokenizer, resolve
from finetune.models.heads import (
    CAUSAL_LM,
    SEQ2SEQ_LM,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    save_head,
)
from finetune.recipe import Recipe, recipe_to_dict
from finetune.recipe.machine import check_trainable_here
from finetune.runs import PARTIAL_SUFFIX, Run, record_inputs, reopen_run, start_run
from finetune.tasks.prompts import PROMPT_FILE, PromptFormat
from finetune.tracking import Tracker, open_tracker
from finetune.train.callbacks import (
    SEAL_FILE,
    BudgetCallback,
    LogCallback,
    ProgressCallback,
    SealCheckpointCallback,
    read_log,
    truncate_log,
)
from finetune.train.causal_lm import CausalLMObjective
from finetune.train.classifier import (
    SequenceClassificationObjective,
    TokenClassificationObjective,
)
from finetune.train.model import (
    adapter_inputs_kept,
    compile_decoder_layers,
    parameter_counts,
    trained_head,
)
from finetune.train.objective import Objective, Splits
from finetune.train.outputs import SUMMARY_FILE, plot_loss_curve, print_summary, save_outputs
from finetune.train.seq2seq import Seq2SeqObjective

log = logging.getLogger("finetune.train")
CHECKPOINTS = "checkpoints"


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


def objective_for(head: str) -> Objective:
    return {
        CAUSAL_LM: CausalLMObjective(),
        SEQ2SEQ_LM: Seq2SeqObjective(),
        SEQUENCE_CLASSIFICATION: SequenceClassificationObjective(),
        TOKEN_CLASSIFICATION: TokenClassificationObjective(),
    }[head]


def train(
    recipe: Recipe,
    *,
    recipe_path: str | Path,
    overrides: Sequence[str] = (),
    resume: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    console: Console | None = None,
    run_id: str | None = None,
) -> TrainResult:
    """Train the recipe's specialist into a new run directory (named `run_id`, default a time
    stamp) or continue `resume`, and return it."""
    from accelerate import PartialState

    check_trainable_here(recipe, recipe_path)
    console = console or Console(stderr=True, highlight=False)
    # Joins the process group under torchrun / accelerate launch. `cpu=True` is what makes
    # accelerate pick gloo DDP on a CPU machine; the state is shared, so the Trainer sees it too.
    state = PartialState(cpu=not has_cuda())
    with state.main_process_first():
        prepared = prepare(recipe)
        source = resolve(recipe.model.base)
    head = trained_head(recipe, recipe_path, source)
    if recipe.model.check_memory:
        check_fits(
            source,
            dtype=weight_dtype(recipe.model.dtype, method=recipe.train.method),
            quantization=recipe.model.quantization,
            training=recipe.train.method,
            trust_remote_code=recipe.model.trust_remote_code,
            head=head,
        )
    run = (
        _open_run(recipe, recipe_path, overrides, resume, run_id) if state.is_main_process else None
    )
    run_dir = _shared_path(run)
    if run is not None:
        record_inputs(run, prepared, source, _teacher_card(recipe, prepared))
    try:
        job = _Job(recipe, run_dir, run, console, state.is_main_process, objective_for(head))
        summary = _train_in(job, prepared, source, resume is not None, callbacks)
    except BaseException as exc:
        if run is not None:
            run.fail(exc)
            console.print(
                f"training stopped; resume with: finetune train --resume {run.path}", markup=False
            )
        raise
    if run is not None:
        # Everything is written before the rename that marks the run complete.
        summary["run_dir"] = str(run.final_path)
        write_json(run.path / SUMMARY_FILE, summary)
        run_dir = run.finish()
        print_summary(console, summary)
    return TrainResult(run_dir, summary)


def _open_run(
    recipe: Recipe,
    recipe_path: str | Path,
    overrides: Sequence[str],
    resume: str | Path | None,
    run_id: str | None,
) -> Run:
    if resume is None:
        return start_run(recipe, recipe_path=recipe_path, overrides=list(overrides), run_id=run_id)
    return reopen_run(resume)


def _shared_path(run: Run | None) -> Path:
    """The run directory on every rank (rank 0 created it)."""
    from accelerate.utils import broadcast_object_list

    from finetune.train.distributed import world_size

    paths = [str(run.path) if run is not None else None]
    if world_size() > 1:
        broadcast_object_list(paths)
    return Path(paths[0])


@dataclass(frozen=True)
class _Job:
    """What every phase of one training job needs; `run` is None on ranks other than 0."""

    recipe: Recipe
    run_dir: Path
    run: Run | None
    console: Console
    is_main: bool
    objective: Objective


def _train_in(
    job: _Job,
    prepared: PreparedData,
    source: ModelSource,
    resuming: bool,
    extra_callbacks: Sequence[Any],
) -> dict[str, Any]:
    started = time.monotonic()
    tokenizer = load_tokenizer(source, trust_remote_code=job.recipe.model.trust_remote_code)
    splits = job.objective.encode(job.recipe, prepared, tokenizer)
    checkpoint = _resume_point(job, splits.fmt) if resuming else None
    if job.run is not None:
        splits.fmt.save(job.run_dir)
        save_head(job.run_dir, job.objective.head, splits.labels)
        truncate_log(job.run_dir, _checkpoint_step(checkpoint))
    tracker = _open_tracker(job)
    try:
        summary = _fit(job, source, tokenizer, splits, checkpoint, tracker, extra_callbacks)
    except BaseException:
        tracker.finish(ok=False)
        raise
    tracker.finish()
    if summary:
        summary["wall_seconds"] = round(time.monotonic() - started, 1)
    return summary


def _fit(
    job: _Job,
    source: ModelSource,
    tokenizer: Any,
    splits: Splits,
    checkpoint: Path | None,
    tracker: Tracker,
    extra_callbacks: Sequence[Any],
) -> dict[str, Any]:
    """Train, then (main process) save the outputs and log them; the run's summary."""
    callbacks = [*_callbacks(job, tracker), *extra_callbacks]
    trainer = job.objective.build_trainer(
        job.recipe,
        job.run_dir / CHECKPOINTS,
        source,
        tokenizer,
        splits,
        callbacks,
        checkpoint is None,
    )
    if job.recipe.train.compile:
        _compile(trainer.model)
    trainable, total = parameter_counts(trainer.model)
    log.info(
        "training %s of %s parameters (%s, %s head)",
        f"{trainable:,}",
        f"{total:,}",
        job.recipe.train.method,
        job.objective.head,
    )

    with adapter_inputs_kept(trainer.model, job.recipe):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    digests = rank_checksums(trainer.model)
    if job.run is None:
        return {}
    output_dir = save_outputs(trainer, job.run_dir, job.recipe)
    history = read_log(job.run_dir)
    summary = _summary(trainer, job.recipe, splits, history, digests)
    summary.update(
        head=job.objective.head,
        trainable_parameters=trainable,
        total_parameters=total,
        output=output_dir.name,
    )
    curve = plot_loss_curve(history, job.run_dir, title=job.recipe.name)
    tracker.log_image("train/loss_curve", curve)
    tracker.log_artifact(f"{job.recipe.name}-{output_dir.name}", "model", output_dir)
    tracker.summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
    return summary


def _compile(model: Any) -> None:
    compiled = compile_decoder_layers(model)
    if compiled:
        log.info("train.compile: compiling %d transformer layers on the first steps", compiled)
    else:
        log.warning("train.compile: found no transformer layers to compile; training uncompiled")


def _resume_point(job: _Job, fmt: PromptFormat) -> Path | None:
    """The checkpoint to continue from; the stored prompt format must be the one rebuilt now."""
    checkpoint = last_checkpoint(job.run_dir)
    if checkpoint is None:
        log.warning(
            "%s has no complete checkpoint: training starts from the beginning", job.run_dir
        )
    stored = job.run_dir / PROMPT_FILE
    if job.run is not None and stored.is_file() and PromptFormat.load(job.run_dir) != fmt:
        raise FinetuneError(
            f"{job.run_dir}: the tokenizer now gives a different prompt format than the one this run "
            f"started with ({stored}); resume with the same base model and tokenizer"
        )
    return checkpoint


def _open_tracker(job: _Job) -> Tracker:
    tracker = open_tracker(
        job.recipe,
        job.run_dir,
        job_type="train",
        config=recipe_to_dict(job.recipe),
        name=job.run_dir.name.removesuffix(PARTIAL_SUFFIX),
        resume_id=job.run.provenance.get("wandb_run_id") if job.run is not None else None,
        main_process=job.is_main,
    )
    if job.run is not None and tracker.run_id:
        job.run.record(wandb_run_id=tracker.run_id)
    return tracker


def _callbacks(job: _Job, tracker: Tracker) -> list[Any]:
    from transformers import EarlyStoppingCallback

    callbacks = [
        LogCallback(job.run_dir, tracker),
        ProgressCallback(job.console),
        BudgetCallback(job.recipe.train.budget_minutes),
        SealCheckpointCallback(),
    ]
    if job.recipe.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(job.recipe.train.early_stopping_patience))
    return callbacks


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was completely written: sealed after the Trainer finished it."""
    found = [
        (int(m.group(1)), p)
        for p in (run_dir / CHECKPOINTS).glob("checkpoint-*")
        if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / SEAL_FILE).is_file()
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
    splits: Splits,
    history: list[dict[str, Any]],
    digests: list[str],
) -> dict[str, Any]:
    """What the run did, for the summary screen, `train_summary.json` and the tracker."""
    state = trainer.state
    budget = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, BudgetCallback))
    train_losses = [r["train/loss"] for r in history if "train/loss" in r]
    eval_losses = [r["eval/loss"] for r in history if "eval/loss" in r]
    tokens = state.num_input_tokens_seen
    train_seconds = budget.spent()
    # Throughput counts training steps only: validation passes are reported on their own.
    eval_seconds = sum(r.get("eval/seconds", 0.0) for r in history)
    step_seconds = train_seconds - eval_seconds
    validation = splits.validation
    if len(set(digests)) > 1:
        log.warning("DDP ranks ended with different weights: %s", digests)
    return {
        "method": recipe.train.method,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "epochs": round(state.epoch or 0.0, 4),
        "train_examples": splits.train.examples,
        "validation_examples": validation.examples if validation else 0,
        "truncated_examples": splits.train.truncated + (validation.truncated if validation else 0),
        "tokens_seen": tokens,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "tokens_per_second": round(tokens / step_seconds, 1) if step_seconds > 0 else None,
        "peak_memory_bytes": peak_memory_bytes(),
        "first_train_loss": train_losses[0] if train_losses else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "first_eval_loss": eval_losses[0] if eval_losses else None,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "best_eval_loss": state.best_metric,
        "best_step": state.best_global_step,
        "stopped_by": _stop_reason(state, budget),
        "world_size": len(digests),
        "rank_weight_digests": digests,
    }


def _stop_reason(state: Any, budget: BudgetCallback) -> str:
    if budget.stopped_at is not None:
        return f"time budget (train.budget_minutes) at step {budget.stopped_at}"
    if state.global_step < state.max_steps:
        return "early stopping (train.early_stopping_patience)"
    return "completed"


def _teacher_card(recipe: Recipe, prepared: PreparedData) -> dict | None:
    """What the teacher that labelled the training rows did, for the run's provenance."""
    if recipe.data.teacher is None:
        return None
    return teacher_card(
        recipe, asked(recipe, prepared.path, load_split(recipe, "train", human=True))
    )
