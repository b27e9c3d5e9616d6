"""The systems under comparison and the one interface every kind of system plugs into.

A system is a name, a role (the run's `specialist` or a `baseline`) and the model instance it
runs on. Systems are grouped by instance key: `specialist` (the run's weights), `base` (the
untouched base model, shared by every `model: base` baseline), a model reference, or
`<kind>:<baseline name>` for a system that is not a causal LM (a TF-IDF classifier). Each key
belongs to a `Kind`, which loads the instance (`Loaded`) and turns test items into a `Plan`:
inputs, and an `Inference` that maps inputs to predictions. The evaluator only ever calls
these, so a new kind of system never changes its flow. `ModelPool` keeps as many instances
loaded at once as memory allows, so that timing rounds can interleave systems, and loads the
rest afresh for each use.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from finetune.hardware import free_memory
from finetune.prompts import lists_labels
from finetune.recipe import Recipe

log = logging.getLogger(__name__)
SPECIALIST = "specialist"
# Instances stay loaded for the timing rounds while their weights fit in this share of the
# memory still free: the rest is left for activations and for the instances that load per use.
RESIDENT_SHARE = 0.5
# Kinds whose systems, unless they are a trained run's, are general models prompted zero- or
# few-shot with the recipe's instruction (the others read no prompt: TF-IDF, classifier heads).
PROMPTED_KINDS = ("causal-lm", "engine", "endpoint")


@dataclass(frozen=True)
class System:
    name: str
    role: str  # specialist | baseline
    model: str  # "run" (the specialist's weights), "base", or a model reference
    shots: int = 0
    prompt_style: str = "auto"
    kind: str = "causal-lm"


@dataclass
class Loaded:
    """An instance in memory, what it is, and its weight files' sizes."""

    model: Any
    tokenizer: Any
    description: str
    kind: Kind
    disk_bytes: dict[str, int | None] = field(default_factory=dict)
    serving: str = "as loaded"  # how the specialist's update is applied (see `serving_form`)
    identity: Any = None  # kind-specific: the causal LM's `ModelSource`
    trained_in: Path | None = None  # the run that trained these weights, when not this one


@dataclass
class Inference:
    """How a plan's inputs become predictions: `run(model, inputs, batch_size, share_prefix,
    on_batch)` returns (predictions, per-item details, output tokens per item); `reserve` is
    the room kept for the answer when inputs are truncated. A `remote` system runs elsewhere
    (an API): this machine's memory says nothing of it, and it is timed by its own requests,
    `measured` by its run, not by the timing rounds."""

    reserve: int
    run: Callable[..., tuple[list[Any], list[dict], list[int]]] | None
    remote: bool = False
    measured: Any = None  # timing.Measurement, for a remote system once it has run


@dataclass
class Plan:
    """One system ready to run: its instance, its inputs, how they become answers."""

    system: System
    key: str
    style: str  # how inputs are presented: a prompt style, or what features are read
    infer: Inference
    inputs: list[Any]
    input_tokens: list[int]
    truncated: list[bool]


@dataclass(frozen=True)
class Context:
    """What every kind may read when planning: the run, the test items and the training rows."""

    run_dir: Path
    items: list[dict]
    train_rows: list[dict]


class Kind(Protocol):
    def load(self, recipe: Recipe, run_dir: Path, key: str) -> Loaded: ...

    def plan(
        self, recipe: Recipe, system: System, key: str, loaded: Loaded, context: Context
    ) -> Plan: ...

    def sizes(self, model: Any) -> tuple[int, int, int]:
        """(weight bytes, parameters, adapter parameters) of a loaded instance."""
        ...

    def instance_bytes(self, recipe: Recipe, key: str) -> int | None:
        """Memory the instance needs, estimated before loading (None: unknown)."""
        ...


def kinds() -> dict[str, Kind]:
    from finetune.evaluate.causal import CausalLM
    from finetune.evaluate.encoder import Encoder
    from finetune.evaluate.engine import Engine
    from finetune.evaluate.other_run import OtherRun
    from finetune.evaluate.remote import Endpoint
    from finetune.evaluate.seq2seq import Seq2SeqLM
    from finetune.evaluate.statistical import Tfidf
    from finetune.evaluate.tagger import Tagger

    return {
        "causal-lm": CausalLM(),
        "seq2seq": Seq2SeqLM(),
        "encoder": Encoder(),
        "tagger": Tagger(),
        "run": OtherRun(),
        "endpoint": Endpoint(),
        "engine": Engine(),
        "tfidf": Tfidf(),
    }


def systems_of(recipe: Recipe) -> list[System]:
    """The specialist, the recipe's baselines, and a classification task's TF-IDF classifier."""
    specialist = System(SPECIALIST, "specialist", "run")
    baselines = [_baseline(b) for b in recipe.eval.baselines]
    tfidf = recipe.eval.tfidf
    if tfidf.enabled and recipe.task.type == "classification":
        baselines.append(System(tfidf.name, "baseline", "tfidf", kind="tfidf"))
    return [specialist, *baselines]


def _baseline(b: Any) -> System:
    if b.run:
        return System(b.name, "baseline", "run", kind="run")
    if b.endpoint:
        return System(b.name, "baseline", b.endpoint.model, b.shots, "chat", kind="endpoint")
    if b.engine:
        return System(b.name, "baseline", b.engine.model, b.shots, b.prompt_style, kind="engine")
    return System(b.name, "baseline", b.model, b.shots, b.prompt_style)


def sees_label_list(recipe: Recipe, system: System) -> bool:
    """Whether the system's prompts carry the label list (`task.list_labels`): an untrained
    prompted system's may; a trained one keeps the prompt it was trained on."""
    untrained = system.model != "run" and system.kind in PROMPTED_KINDS
    return untrained and lists_labels(recipe.task)


def baseline_config(recipe: Recipe, key: str) -> tuple[int, Any]:
    """The position and config of the baseline behind instance `<kind>:<name>`."""
    name = key.partition(":")[2]
    return next((i, b) for i, b in enumerate(recipe.eval.baselines) if b.name == name)


def check_all(recipe: Recipe, run_dir: Path) -> None:
    """Each kind's checks that can fail fast before any system is evaluated (an endpoint's key,
    model and host); kinds without such checks have no `check`."""
    for key, _ in load_groups(recipe, systems_of(recipe)):
        check = getattr(kind_of(key, run_dir, recipe), "check", None)
        if check:
            check(recipe, key)


def instance_key(recipe: Recipe, system: System) -> str:
    """`specialist`, `base`, a model reference, or `<kind>:<name>` for other kinds."""
    if system.kind != "causal-lm":
        return f"{system.kind}:{system.name}"
    if system.model == "run":
        return SPECIALIST
    if system.model in ("base", recipe.model.base):
        return "base"
    return system.model


def kind_of(key: str, run_dir: Path | None = None, recipe: Recipe | None = None) -> Kind:
    """The kind named by the key's `<kind>:` prefix; for the specialist, the kind of the head its
    run recorded (`head.json`: a sequence classifier is `encoder`, a token classifier `tagger`,
    an encoder-decoder `seq2seq`); for a model (`base` is the recipe's base) the kind of what
    it is, an encoder-decoder or else a causal LM."""
    from finetune.heads import SEQ2SEQ_LM, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, run_head

    prefix, sep, _ = key.partition(":")
    registry = kinds()
    if sep and prefix in registry:
        return registry[prefix]
    by_head = {
        SEQUENCE_CLASSIFICATION: "encoder",
        TOKEN_CLASSIFICATION: "tagger",
        SEQ2SEQ_LM: "seq2seq",
    }
    if key == SPECIALIST:
        head = run_head(run_dir) if run_dir is not None else None
    else:
        head = SEQ2SEQ_LM if recipe and _role(recipe, key) == "seq2seq" else None
    return registry[by_head.get(head, "causal-lm")]


def _role(recipe: Recipe, key: str) -> str | None:
    """What the model of instance `key` is; None when it cannot be told here (its loader then
    says why it cannot be loaded)."""
    from finetune.models import model_role, resolve, source_role

    ref = recipe.model.base if key == "base" else key
    role = model_role(ref)
    if role is not None:
        return role
    try:
        return source_role(resolve(ref, key="eval.baselines.model"))
    except Exception:
        return None


def load_groups(recipe: Recipe, systems: list[System]) -> list[tuple[str, list[System]]]:
    """Systems grouped by the instance they run on, the specialist's first."""
    groups: dict[str, list[System]] = {}
    for system in systems:
        groups.setdefault(instance_key(recipe, system), []).append(system)
    return list(groups.items())


@contextlib.contextmanager
def loaded_model(recipe: Recipe, run_dir: Path, key: str) -> Iterator[Loaded]:
    """Load one instance for inference and free it afterwards."""
    loaded = kind_of(key, run_dir, recipe).load(recipe, run_dir, key)
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
            need = kind_of(key, self.run_dir, self.recipe).instance_bytes(self.recipe, key)
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
