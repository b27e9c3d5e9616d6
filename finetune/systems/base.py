"""The one interface every kind of system plugs into, and the types it trades in.

A system is a name, a role (the run's `specialist` or a `baseline`) and the model instance it
runs on. Each instance is named by a key (`specialist`, `base`, a model reference, or
`<kind>:<baseline name>`) and belongs to a `Kind`, which loads it (`Loaded`) and turns items
into a `Plan`: inputs, and an `Inference` that maps inputs to predictions. The evaluator, and
every other stage that runs systems, only ever calls a `Kind`'s methods, so a new kind of
system is one new module registered in `finetune.systems.registry`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.hardware import on_device_of
from finetune.recipe import Recipe

SPECIALIST = "specialist"


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
    serving: str = "as loaded"  # how the specialist's update is applied (`common.serving_form`)
    identity: Any = None  # kind-specific: the causal LM's `ModelSource`
    trained_in: Path | None = None  # the run that trained these weights, when not this one
    # Where several instances share one model (adapters by name on one base): makes this
    # instance's weights the active ones; run it before each use.
    activate: Callable[[], None] | None = None


@dataclass(frozen=True)
class Measurement:
    """Latencies of single items and one throughput batch: what a timing round measures, or
    what a remote system's own requests measured."""

    latencies_ms: list[float]
    throughput_seconds: float
    throughput_items: int


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
    measured: Measurement | None = None  # for a remote system, once it has run

    def __post_init__(self) -> None:
        # Every caller (scoring, timing, memory, predict) runs on the model's device this way.
        if self.run is not None:
            self.run = _on_device_of_model(self.run)


def _on_device_of_model(run: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(run)
    def on_device(model: Any, *args: Any, **kwargs: Any) -> Any:
        with on_device_of(model):
            return run(model, *args, **kwargs)

    return on_device


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
    """What every kind may read when planning: the run, the items and the training rows."""

    run_dir: Path
    items: list[dict]
    train_rows: list[dict]


class Kind:
    """A kind of system. Subclasses set `name` (their registry key) and implement `load`,
    `plan`, `sizes` and `instance_bytes`; the rest has defaults that suit most kinds."""

    name: str = ""
    # The `eval.baselines` field that makes a baseline this kind (None: the kind is not picked
    # by a baseline field: the specialist's kinds, and the model kinds a `model:` names).
    baseline_field: str | None = None
    # Whether an untrained system of this kind is a general model prompted with the recipe's
    # instruction (and so may be shown the label list), rather than reading no prompt.
    prompted: bool = False
    # Whether its systems are general models, as opposed to specialists fitted to the task.
    general: bool = True

    def system(self, baseline: Any) -> System:
        """The system an `eval.baselines` entry of this kind describes."""
        return System(baseline.name, "baseline", self.name, kind=self.name)

    def extra_systems(self, recipe: Recipe) -> list[System]:
        """Systems of this kind that join every evaluation unasked (the TF-IDF floor)."""
        return []

    def instance_key(self, recipe: Recipe, system: System) -> str:
        """The instance the system runs on; systems with the same key share one load."""
        return f"{self.name}:{system.name}"

    def check(self, recipe: Recipe, key: str) -> None:
        """Checks that can fail fast, before any system is evaluated (an endpoint's key and
        host); most kinds have none."""

    def load(self, recipe: Recipe, run_dir: Path, key: str) -> Loaded:
        raise NotImplementedError

    def shared_base(self, recipe: Recipe, run_dir: Path) -> Any:
        """What the run's specialist could share with other runs' when they are served
        together (a string key; equal keys share), or None: most kinds share nothing."""
        return None

    def load_sharing(self, runs: list[tuple[Recipe, Path]]) -> list[Loaded]:
        """The specialists of runs with one `shared_base`, sharing it in memory."""
        raise NotImplementedError

    def plan(
        self, recipe: Recipe, system: System, key: str, loaded: Loaded, context: Context
    ) -> Plan:
        raise NotImplementedError

    def sizes(self, model: Any) -> tuple[int | None, int | None, int]:
        """(weight bytes, parameters, adapter parameters) of a loaded instance."""
        raise NotImplementedError

    def instance_bytes(self, recipe: Recipe, key: str) -> int | None:
        """Memory the instance needs, estimated before loading (None: unknown)."""
        raise NotImplementedError


def baseline_config(recipe: Recipe, key: str) -> tuple[int, Any]:
    """The position and config of the baseline behind instance `<kind>:<name>`."""
    name = key.partition(":")[2]
    return next((i, b) for i, b in enumerate(recipe.eval.baselines) if b.name == name)
