"""The systems under comparison: the run's specialist and the recipe's baselines, loaded for inference.

Systems are grouped by the model instance they run on: `specialist` (the base with the run's
adapter, or a full fine-tuning run's model), `base` (the untouched base model, shared by every
`model: base` baseline) and one instance per other model reference. `loaded_model` loads one
instance; `ModelPool` keeps as many instances loaded at once as memory allows, so that timing
rounds can interleave systems, and loads the rest afresh for each use.
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

from finetune.hardware import free_memory, weight_dtype
from finetune.models import (
    ModelSource,
    check_fits,
    load_causal_lm,
    load_tokenizer,
    resolve,
    weights_bytes_needed,
)
from finetune.prompts import PromptFormat, prompt_format, target_text
from finetune.recipe import Recipe

log = logging.getLogger(__name__)
SPECIALIST = "specialist"
# Instances stay loaded for the timing rounds while their weights fit in this share of the
# memory still free: the rest is left for activations and for the instances that load per use.
RESIDENT_SHARE = 0.5


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
    serving: str = "as loaded"  # how the specialist's update is applied (see `serving_form`)


def systems_of(recipe: Recipe) -> list[System]:
    specialist = System(SPECIALIST, "specialist", "run")
    baselines = [
        System(b.name, "baseline", b.model, b.shots, b.prompt_style) for b in recipe.eval.baselines
    ]
    return [specialist, *baselines]


def instance_key(recipe: Recipe, system: System) -> str:
    """`specialist`, `base`, or the model reference the system runs on."""
    if system.model == "run":
        return SPECIALIST
    if system.model in ("base", recipe.model.base):
        return "base"
    return system.model


def load_groups(recipe: Recipe, systems: list[System]) -> list[tuple[str, list[System]]]:
    """Systems grouped by the instance they run on, the specialist's first."""
    groups: dict[str, list[System]] = {}
    for system in systems:
        groups.setdefault(instance_key(recipe, system), []).append(system)
    return list(groups.items())


@contextlib.contextmanager
def loaded_model(recipe: Recipe, run_dir: Path, key: str) -> Iterator[Loaded]:
    """Load one instance for inference (eval mode, no gradients) and free it afterwards."""
    if key == SPECIALIST:
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


class ModelPool:
    """Instances kept loaded across timing rounds, as many as memory allows (specialist first);
    `use(key)` gives a kept instance, or loads one that was not kept and frees it afterwards."""

    def __init__(self, recipe: Recipe, run_dir: Path, keys: list[str]) -> None:
        self.recipe, self.run_dir, self.keys = recipe, run_dir, keys
        self.resident: dict[str, Loaded] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ModelPool:
        for key in self.keys:
            need = _instance_bytes(self.recipe, key)
            free, _ = free_memory()
            if need is not None and need <= RESIDENT_SHARE * free:
                self.resident[key] = self._stack.enter_context(
                    loaded_model(self.recipe, self.run_dir, key)
                )
            else:
                log.info("%s does not stay loaded for timing: it loads again for each round", key)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.resident.clear()
        self._stack.close()

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[Loaded]:
        if key in self.resident:
            yield self.resident[key]
            return
        with loaded_model(self.recipe, self.run_dir, key) as loaded:
            yield loaded


def _instance_bytes(recipe: Recipe, key: str) -> int | None:
    ref = recipe.model.base if key in (SPECIALIST, "base") else key
    own = ref == recipe.model.base
    try:
        return weights_bytes_needed(
            resolve(ref, key="eval.baselines.model"),
            dtype=weight_dtype(recipe.model.dtype),
            quantization=recipe.model.quantization if own else "none",
            trust_remote_code=recipe.model.trust_remote_code and own,
        )
    except Exception as exc:  # an estimate only: a model it cannot size loads per use
        log.warning("cannot estimate the size of %s (%s); it loads per use", ref, exc)
        return None


def serving_form(recipe: Recipe) -> str:
    """How the specialist's adapter is applied for evaluation: `merged` or `adapter`.

    `auto` merges wherever the weights are not quantized, as `finetune export --merge`
    deploys it: a plain model with no adapter matmuls and no PEFT wrappers, at the base model's
    speed. Quantized weights cannot take a merge without re-quantizing, so they keep the adapter
    unmerged, in float32 as PEFT loads it.
    """
    form = recipe.eval.specialist_form
    if form == "auto":
        return "merged" if recipe.model.quantization == "none" else "adapter"
    return form


def _attach_adapter(recipe: Recipe, source: ModelSource, adapter: Path) -> tuple[Any, str]:
    """The base with the run's adapter, and a description of the form it is served in.

    The merge is done on float32 weights and rounded once to the serving dtype. Merging into
    weights already loaded in bf16 rounds W + BA back onto bf16's grid around W, which erases
    most of a small update (mean label log-probability error 0.17 against the float32 model on
    the sentiment recipe, 3x bf16's own 0.05); rounding float32 W + BA once keeps it.
    """
    import torch
    from peft import PeftModel

    dtype = weight_dtype(recipe.model.dtype)
    form = serving_form(recipe)
    if form == "merged" and recipe.eval.specialist_form == "auto" and not _fits_float32(source):
        log.warning(
            "%s: its float32 weights, needed for the merge, do not fit in memory; the adapter "
            "stays unmerged (eval.specialist_form)",
            source.ref,
        )
        form = "adapter"
    if form == "adapter":
        tuned = PeftModel.from_pretrained(_load(recipe, source), str(adapter))
        return tuned, "adapter unmerged, in float32"
    base = _load(recipe, source, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().to(dtype)
    name = str(dtype).removeprefix("torch.")
    rounded = "" if dtype == torch.float32 else f", rounded once to {name}"
    return merged, f"merged in float32{rounded}"


def _fits_float32(source: ModelSource) -> bool:
    import torch

    return weights_bytes_needed(source, dtype=torch.float32) <= free_memory()[0]


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
    model, serving = _attach_adapter(recipe, source, run_dir / "adapter")
    merged = " (merged)" if serving.startswith("merged") else ""
    return Loaded(
        model,
        _tokenizer(source),
        source,
        f"{source.ref} + LoRA adapter{merged}",
        _disk(source, run_dir / "adapter"),
        serving=serving,
    )


def _load(recipe: Recipe, source: ModelSource, *, dtype: Any = None) -> Any:
    # The recipe's loading options (quantization, remote code, pickles) are for its own base
    # model; other baselines load plainly.
    own = source.ref == recipe.model.base
    quantization = recipe.model.quantization if own else "none"
    trust = recipe.model.trust_remote_code and own
    dtype = dtype or weight_dtype(recipe.model.dtype)
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
