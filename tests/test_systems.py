"""The system kinds: one module per registry key behind one interface, found by name with a
did-you-mean, and none of them asking which task it serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import MINIMAL_RECIPE

from finetune.errors import FinetuneError
from finetune.recipe import load_recipe
from finetune.systems import base
from finetune.systems.base import Kind, System
from finetune.systems.registry import baseline_kind, instance_key, kind, kinds, systems_of
from finetune.tasks.types import GENERATE, LABELS, task_type

SYSTEMS = Path(base.__file__).parent
INTERFACE = ("load", "plan", "sizes", "instance_bytes")


def test_every_kind_is_the_module_named_after_its_key():
    found = {name: type(k).__module__ for name, k in kinds().items()}
    assert found == {
        "causal-lm": "finetune.systems.causal_lm",
        "encoder": "finetune.systems.encoder",
        "endpoint": "finetune.systems.endpoint",
        "engine": "finetune.systems.engine",
        "run": "finetune.systems.run",
        "seq2seq": "finetune.systems.seq2seq",
        "tagger": "finetune.systems.tagger",
        "tfidf": "finetune.systems.tfidf",
    }


@pytest.mark.parametrize("name", sorted(kinds()))
def test_every_kind_implements_the_interface(name):
    k = kind(name)
    assert isinstance(k, Kind) and k.name == name
    assert [m for m in INTERFACE if getattr(type(k), m) is getattr(Kind, m)] == []


def test_an_unknown_kind_is_named_with_a_suggestion():
    with pytest.raises(FinetuneError) as err:
        kind("enpoint")
    assert str(err.value) == (
        "unknown kind of system 'enpoint'. Did you mean 'endpoint'? Available: causal-lm, "
        "encoder, endpoint, engine, run, seq2seq, tagger, tfidf"
    )
    with pytest.raises(FinetuneError, match=r"^unknown kind of system 'zzz'\. Available: "):
        kind("zzz")


def test_no_kind_asks_which_task_it_serves():
    """Kinds answer request types (`tasks.types`); only the task types name task types."""
    asks = re.compile(r"task\.type\b|\"(classification|extraction|qa)\"")
    found = [
        f"{path.name}:{n}"
        for path in sorted(SYSTEMS.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if asks.search(line)
    ]
    assert found == []


def test_each_task_type_asks_for_one_request_and_reads_answers():
    assert [task_type(t).request for t in ("classification", "extraction", "qa")] == [
        LABELS,
        GENERATE,
        GENERATE,
    ]
    labels = ["fresh", "rotten"]
    assert task_type("classification").read(' "Fresh." ', labels) == (
        "fresh",
        {"raw": ' "Fresh." '},
    )
    assert task_type("classification").read("maybe", labels) == (
        "",
        {"raw": "maybe", "invalid": True},
    )
    entities = '[{"text": "Paris", "type": "LOC"}]'
    assert task_type("extraction").read(entities, []) == (
        [{"text": "Paris", "type": "LOC"}],
        {"raw": entities},
    )
    assert task_type("qa").read(" Yes. ", []) == ("Yes.", {})
    assert (task_type("extraction").empty(), task_type("qa").empty()) == ([], "")


def test_each_baseline_becomes_a_system_of_the_kind_its_field_names(write_recipe, tmp_path):
    run = tmp_path / "other-run"
    run.mkdir()
    path = write_recipe(
        {
            **MINIMAL_RECIPE,
            "eval": {
                "baselines": [
                    {"name": "base zero-shot"},
                    {"name": "gguf", "engine": {"model": "qwen2.5-coder-1.5b-instruct"}},
                    {
                        "name": "api",
                        "shots": 2,
                        "endpoint": {"model": "m", "base_url": "http://x/v1"},
                    },
                    {"name": "other", "run": str(run)},
                ]
            },
        }
    )
    recipe = load_recipe(path)
    assert [baseline_kind(b).name for b in recipe.eval.baselines] == [
        "causal-lm",
        "engine",
        "endpoint",
        "run",
    ]
    systems = systems_of(recipe)
    assert systems == [
        System("specialist", "specialist", "run"),
        System("base zero-shot", "baseline", "base"),
        System("gguf", "baseline", "qwen2.5-coder-1.5b-instruct", kind="engine"),
        System("api", "baseline", "m", 2, "chat", kind="endpoint"),
        System("other", "baseline", "run", kind="run"),
        System("tf-idf + logreg", "baseline", "tfidf", kind="tfidf"),
    ]
    assert [instance_key(recipe, s) for s in systems] == [
        "specialist",
        "base",
        "engine:gguf",
        "endpoint:api",
        "run:other",
        "tfidf:tf-idf + logreg",
    ]


def test_inference_makes_its_tensors_on_the_models_device():
    """Token ids and masks built inside a plan's `run` land where the weights are (the GPU when
    the model is there), through every caller: here a model on torch's `meta` device."""
    import torch

    from finetune.systems.base import Inference

    seen = []
    infer = Inference(reserve=0, run=lambda model, inputs: seen.append(torch.tensor(inputs)))
    infer.run(torch.nn.Linear(2, 2, device="meta"), [1, 2])
    infer.run(torch.nn.Linear(2, 2), [3])
    infer.run(object(), [4])  # llama.cpp, scikit-learn, an API client: left alone
    assert [t.device.type for t in seen] == ["meta", "cpu", "cpu"]
