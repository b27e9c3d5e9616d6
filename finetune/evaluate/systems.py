"""The systems under comparison: the run's specialist and the recipe's baselines, loaded for inference.

Systems on the same weights share one load: `model: base` baselines run on the base model as
loaded, then the run's adapter is attached for the specialist (merged into float32 weights).
Every other model is loaded on its own, evaluated, and freed before the next.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.hardware import weight_dtype
from finetune.models import ModelSource, check_fits, load_causal_lm, load_tokenizer, resolve
from finetune.prompts import PromptFormat, prompt_format, target_text
from finetune.recipe import Recipe

log = logging.getLogger(__name__)
SPECIALIST = "specialist"


@dataclass(frozen=True)
class System:
    name: str
    role: str  # specialist | baseline
    model: str  # "run" (the specialist's weights), "base", or a model reference
    shots: int = 0
    prompt_style: str = "auto"


@dataclass
class Loaded:
    """A model in memory with its tokenizer, what it is, and its weight files' sizes."""

    model: Any
    tokenizer: Any
    source: ModelSource
    description: str
    disk_bytes: dict[str, int | None] = field(default_factory=dict)
    adapter: Path | None = None  # the run's adapter, attached when the specialist's turn comes
    adapter_attached: bool = False


def systems_of(recipe: Recipe) -> list[System]:
    specialist = System(SPECIALIST, "specialist", "run")
    baselines = [
        System(b.name, "baseline", b.model, b.shots, b.prompt_style) for b in recipe.eval.baselines
    ]
    return [specialist, *baselines]


def load_groups(
    recipe: Recipe, run_dir: Path, systems: list[System]
) -> list[tuple[str, list[System]]]:
    """Systems grouped by the weights they run on, the specialist's group first.

    Keys: `adapter` (base + the run's adapter, switched off for base baselines), `run` (a full
    fine-tuning run's model), `base` (the untouched base model) or another model reference.
    """
    full = (run_dir / "model").is_dir()
    groups: dict[str, list[System]] = {}
    for system in systems:
        if system.model == "run":
            key = "run" if full else "adapter"
        elif system.model in ("base", recipe.model.base):
            key = "base" if full else "adapter"
        else:
            key = system.model
        groups.setdefault(key, []).append(system)
    return list(groups.items())


@contextlib.contextmanager
def loaded_model(recipe: Recipe, run_dir: Path, key: str) -> Iterator[Loaded]:
    """Load one group's weights for inference (eval mode, no gradients) and free them afterwards."""
    if key in ("adapter", "run"):
        loaded = _load_run_model(recipe, run_dir)
    else:
        source = resolve(recipe.model.base if key == "base" else key, key="eval.baselines.model")
        model = _load(recipe, source)
        loaded = Loaded(model, _tokenizer(source), source, source.ref, _disk(source, None))
    loaded.model.eval()
    try:
        yield loaded
    finally:
        del loaded.model
        gc.collect()


def merges_adapter(recipe: Recipe) -> bool:
    """Whether the specialist's adapter is merged into float32 base weights for evaluation.

    Merged is what `finetune export --merge` deploys: a plain model with no adapter matmuls and
    no PEFT wrappers. Only float32 weights can hold the merge: rounding W + BA to bf16 (8-bit
    mantissa) erases most of a LoRA update, which is small next to W (on the sentiment recipe
    accuracy fell from 0.795 to 0.777), and merging would re-quantize quantized weights. Those
    keep the adapter unmerged, in float32 as PEFT loads it.
    """
    import torch

    return recipe.model.quantization == "none" and weight_dtype(recipe.model.dtype) == torch.float32


@contextlib.contextmanager
def active(loaded: Loaded, system: System, *, merge: bool = True) -> Iterator[Any]:
    """The model as `system` sees it: the plain base for base baselines; base + adapter for the
    specialist, merged when `merge` (see `merges_adapter`).

    The adapter is attached in place, so the specialist comes last in its group.
    """
    if system.model != "run" or loaded.adapter is None:
        if loaded.adapter_attached:
            raise FinetuneError(f"{system.name}: the base model already carries the adapter")
        yield loaded.model
        return
    if not loaded.adapter_attached:
        from peft import PeftModel

        model = PeftModel.from_pretrained(loaded.model, str(loaded.adapter))
        loaded.model = (model.merge_and_unload() if merge else model).eval()
        loaded.adapter_attached = True
    yield loaded.model


def system_format(system: System, loaded: Loaded, run_format: PromptFormat, recipe: Recipe):
    """The specialist keeps the run's stored format; a baseline gets its own style's format."""
    if system.model == "run":
        return run_format
    if system.model in ("base", recipe.model.base) and system.prompt_style in (
        "auto",
        run_format.style,
    ):
        return run_format
    return prompt_format(loaded.tokenizer, recipe.task, system.prompt_style)


def draw_shots(recipe: Recipe, train_rows: list[dict], k: int) -> list[tuple[str, str]]:
    """k in-context examples from train, fixed by the recipe's seed, shared by every test item.

    Drawn from the shorter half of train so the examples do not crowd out the item, and for
    classification taken in turn from each label so no label is missing by chance.
    """
    if k == 0 or not train_rows:
        return []
    rng = random.Random(recipe.seed)
    lengths = sorted(len(r["text"]) for r in train_rows)
    short = [r for r in train_rows if len(r["text"]) <= lengths[len(lengths) // 2]]
    if recipe.task.type == "classification":
        by_label = {
            label: [r for r in short if r["label"] == label] for label in recipe.task.labels
        }
        for rows in by_label.values():
            rng.shuffle(rows)
        order = [label for label in recipe.task.labels if by_label[label]]
        rng.shuffle(order)
        picked = [by_label[order[i % len(order)]][i // len(order)] for i in range(k)]
    else:
        picked = rng.sample(short, min(k, len(short)))
    return [(r["text"], target_text(recipe.task.type, r)) for r in picked]


def _load_run_model(recipe: Recipe, run_dir: Path) -> Loaded:
    from finetune.runs import check_same_base

    source = resolve(recipe.model.base)
    if (run_dir / "model").is_dir():  # full fine-tuning: the run holds the whole model
        full = ModelSource(str(run_dir / "model"), "local", str(run_dir / "model"), {})
        model = _load(recipe, full)
        return Loaded(
            model, _tokenizer(full), source, f"{source.ref} fine-tuned (full)", _disk(full, None)
        )
    check_same_base(run_dir, source.identity)
    merged = " (merged)" if merges_adapter(recipe) else ""
    return Loaded(
        _load(recipe, source),
        _tokenizer(source),
        source,
        f"{source.ref} + LoRA adapter{merged}",
        _disk(source, run_dir / "adapter"),
        adapter=run_dir / "adapter",
    )


def _load(recipe: Recipe, source: ModelSource) -> Any:
    # The recipe's loading options (quantization, remote code, pickles) are for its own base
    # model; other baselines load plainly.
    own = source.ref == recipe.model.base
    quantization = recipe.model.quantization if own else "none"
    trust = recipe.model.trust_remote_code and own
    dtype = weight_dtype(recipe.model.dtype)
    kwargs: dict[str, Any] = {}
    if quantization != "none":
        from finetune.train.model import bnb_config

        kwargs["quantization_config"] = bnb_config(recipe)
    if recipe.model.check_memory:
        check_fits(source, dtype=dtype, quantization=quantization, trust_remote_code=trust)
    return load_causal_lm(
        source,
        dtype=dtype,
        trust_remote_code=trust,
        allow_pickle=recipe.model.allow_pickle and own,
        **kwargs,
    )


def _tokenizer(source: ModelSource) -> Any:
    tokenizer = load_tokenizer(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _disk(source: ModelSource, adapter: Path | None) -> dict[str, int | None]:
    """On-disk weight bytes of the model (None for a Hub id not downloaded here) and adapter."""
    model = _weights_bytes(Path(source.location)) if source.kind != "hub" else None
    return {"adapter": _weights_bytes(adapter) if adapter else None, "model": model}


def _weights_bytes(directory: Path) -> int | None:
    files = [
        p
        for p in directory.iterdir()
        if p.suffix in (".safetensors", ".bin", ".pt") or p.name.endswith(".gguf")
    ]
    return sum(p.stat().st_size for p in files) if files else None
