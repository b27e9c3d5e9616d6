"""The kinds of system by name, and what the recipe's systems are.

Each kind is the module named after its key, listed once in `kinds()`: an explicit list, since
no code path imports a module by a computed name (a kind imports its heavy libraries only where
it runs, so importing them all is cheap). `kind("enpoint")` fails with a did-you-mean. The
specialist's kind is the head its run recorded; a model reference's is what the model is (an
encoder-decoder, else a causal LM); a baseline's is the `eval.baselines` field it sets.
"""

from __future__ import annotations

import functools
from pathlib import Path

from finetune.errors import FinetuneError, did_you_mean
from finetune.models import model_role, resolve, source_role
from finetune.models.heads import (
    SEQ2SEQ_LM,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    run_head,
)
from finetune.recipe import Recipe
from finetune.systems.base import SPECIALIST, Kind, System
from finetune.systems.causal_lm import CausalLM
from finetune.systems.common import shown_label_list
from finetune.systems.encoder import Encoder
from finetune.systems.endpoint import Endpoint
from finetune.systems.engine import Engine
from finetune.systems.run import OtherRun
from finetune.systems.seq2seq import Seq2SeqLM
from finetune.systems.tagger import Tagger
from finetune.systems.tfidf import Tfidf

# The kind a specialist's recorded head is served by; any other head is a causal LM's.
BY_HEAD = {
    SEQUENCE_CLASSIFICATION: "encoder",
    TOKEN_CLASSIFICATION: "tagger",
    SEQ2SEQ_LM: "seq2seq",
}


@functools.cache
def kinds() -> dict[str, Kind]:
    """Every kind, by name (`Kind.name`); each lives in the module named after its key."""
    found = [
        CausalLM(),
        Seq2SeqLM(),
        Encoder(),
        Tagger(),
        Tfidf(),
        OtherRun(kind_of),
        Endpoint(),
        Engine(),
    ]
    return {k.name: k for k in sorted(found, key=lambda k: k.name)}


def kind(name: str) -> Kind:
    """The kind registered as `name`."""
    registry = kinds()
    if name not in registry:
        raise FinetuneError(
            f"unknown kind of system {name!r}.{did_you_mean(name, registry)} "
            f"Available: {', '.join(registry)}"
        )
    return registry[name]


def systems_of(recipe: Recipe) -> list[System]:
    """The specialist, the recipe's baselines, and the systems kinds add unasked (TF-IDF)."""
    specialist = System(SPECIALIST, "specialist", "run")
    baselines = [baseline_kind(b).system(b) for b in recipe.eval.baselines]
    extra = [s for k in kinds().values() for s in k.extra_systems(recipe)]
    return [specialist, *baselines, *extra]


def baseline_kind(baseline) -> Kind:
    """The kind whose field the baseline sets (`endpoint:`, `engine:`, `run:`), else a model's."""
    own = baseline.kind_field()
    by_field = {k.baseline_field: k for k in kinds().values() if k.baseline_field}
    return by_field[own] if own else kind("causal-lm")


def sees_label_list(recipe: Recipe, system: System) -> bool:
    """Whether the system's prompts carry the label list (`task.list_labels`)."""
    return shown_label_list(recipe, system, kind(system.kind).prompted)


def instance_key(recipe: Recipe, system: System) -> str:
    """`specialist`, `base`, a model reference, or `<kind>:<name>` for other kinds."""
    return kind(system.kind).instance_key(recipe, system)


def kind_of(key: str, run_dir: Path | None = None, recipe: Recipe | None = None) -> Kind:
    """The kind named by the key's `<kind>:` prefix; for the specialist, the kind of the head its
    run recorded (`head.json`: a sequence classifier is `encoder`, a token classifier `tagger`,
    an encoder-decoder `seq2seq`); for a model (`base` is the recipe's base) the kind of what
    it is, an encoder-decoder or else a causal LM."""
    prefix, sep, _ = key.partition(":")
    if sep and prefix in kinds():
        return kind(prefix)
    if key == SPECIALIST:
        head = run_head(run_dir) if run_dir is not None else None
    else:
        head = SEQ2SEQ_LM if recipe and _role(recipe, key) == "seq2seq" else None
    return kind(BY_HEAD.get(head, "causal-lm"))


def _role(recipe: Recipe, key: str) -> str | None:
    """What the model of instance `key` is; None when it cannot be told here (its loader then
    says why it cannot be loaded)."""
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


def check_all(recipe: Recipe, run_dir: Path) -> None:
    """Each kind's checks that can fail fast before any system is evaluated."""
    for key, _ in load_groups(recipe, systems_of(recipe)):
        kind_of(key, run_dir, recipe).check(recipe, key)
