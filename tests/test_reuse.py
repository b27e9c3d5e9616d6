"""Each system's evaluation kept and reused: a later evaluation that includes the same system
on the same items takes its predictions, memory and timing instead of scoring it again, and
anything that changes its answers (items, shots, settings) makes it a new system."""

from __future__ import annotations

import json
import math

import pytest
from conftest import copy_run, tiny_recipe_factory

from finetune.evaluate import evaluate, reuse
from finetune.recipe import load_recipe

FAST = {
    "batch_size": 4,
    "latency_items": 2,
    "bootstrap_samples": 50,
    "timing": {"rounds": 6, "throughput_items": 4},
    "memory": "shared",
}
ZERO = {"name": "base zero-shot", "model": "base"}
TWO = {"name": "base 2-shot", "model": "base", "shots": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tiny_run):
    """The tiny LoRA run, copied for this module's evaluations, and its recipe with only the
    evaluation changed."""
    root = tmp_path_factory.mktemp("reuse")
    path = tiny_recipe_factory(root, tiny_model_dir)(eval={**FAST, "baselines": [ZERO]})
    return path, copy_run(tiny_run, root)


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """No round counts as disturbed by other processes here: rounds a busy machine disturbed are
    not kept, which would make what is reused depend on whatever else the machine is doing.
    That rule has its own test."""
    from finetune.evaluate import machine_load

    monkeypatch.setattr(machine_load, "BUSY_CORES", math.inf)
    monkeypatch.setattr(machine_load, "BUSY_STEAL", math.inf)


def _evaluate(path, run_dir, *overrides: str) -> dict:
    return json.loads(evaluate(load_recipe(path, list(overrides)), run_dir).read_text())


def _predictions(run_dir) -> dict[str, list]:
    rows = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").open()]
    return {name: [r["predictions"][name] for r in rows] for name in rows[0]["predictions"]}


def test_a_later_evaluation_scores_only_the_system_it_has_not_seen(trained, scored):
    path, run_dir = trained
    first = _evaluate(path, run_dir, "eval.reuse=false")
    assert scored == ["specialist", "base zero-shot", "tf-idf + logreg"]
    before = _predictions(run_dir)
    _evaluate(path, run_dir)  # fills the store
    scored.clear()

    second = _evaluate(path, run_dir, f"eval.baselines=[{json.dumps(ZERO)}, {json.dumps(TWO)}]")
    assert scored == ["base 2-shot"]
    after = _predictions(run_dir)
    for name in ("specialist", "base zero-shot", "tf-idf + logreg"):
        assert after[name] == before[name], name
    kept = {"specialist", "base zero-shot", "tf-idf + logreg"}
    assert set(second["timing"]["reused"]) == kept
    by_name = {s["name"]: s for s in second["systems"]}
    firsts = {s["name"]: s for s in first["systems"]}
    assert by_name["base zero-shot"]["metrics"] == firsts["base zero-shot"]["metrics"]
    ratios = {c["baseline"]: c["timing"]["latency"] for c in second["comparisons"]}
    # Kept from one evaluation, the specialist and base zero-shot still pair round by round;
    # the new baseline was timed apart from them.
    assert ratios["base zero-shot"]["paired"] and not ratios["base 2-shot"]["paired"]
    assert ratios["base zero-shot"]["rounds"] == 6

    scored.clear()
    renamed = dict(ZERO, name="zero-shot, renamed")
    _evaluate(path, run_dir, f"eval.baselines=[{json.dumps(renamed)}]")
    assert scored == []  # a name is not part of what a system is
    by_reference = {"name": "the base by its path", "model": load_recipe(path).model.base}
    _evaluate(path, run_dir, f"eval.baselines=[{json.dumps(by_reference)}]")
    assert scored == []  # nor is `base` against the base's own reference


def test_what_the_answers_depend_on_makes_a_new_system(trained, scored):
    path, run_dir = trained
    _evaluate(path, run_dir)
    scored.clear()
    _evaluate(path, run_dir, "eval.bootstrap_samples=60", "eval.confidence=0.9")  # statistics
    assert scored == []
    everything = ["specialist", "base zero-shot", "tf-idf + logreg"]
    for change in ("eval.batch_size=2", "eval.length_normalize=true", "data.max_test_examples=5"):
        scored.clear()
        _evaluate(path, run_dir, change)  # other batches, other scoring, other items
        assert scored == everything, change
    scored.clear()
    three = dict(ZERO, shots=3)  # the same name, other shots: another system
    _evaluate(path, run_dir, f"eval.baselines=[{json.dumps(three)}]")
    assert scored == ["base zero-shot"]


def test_the_label_list_makes_new_prompts_for_the_untrained_systems_only(trained, scored):
    path, run_dir = trained
    listed = _evaluate(path, run_dir)  # "Sentiment?" names no label: base zero-shot sees them
    scored.clear()
    unlisted = _evaluate(path, run_dir, "task.list_labels=never")
    assert scored == ["base zero-shot"]  # its planned inputs changed; nothing else's did
    flags = {s["name"]: s["label_list"] for s in listed["systems"]}
    assert flags == {"specialist": False, "base zero-shot": True, "tf-idf + logreg": False}
    assert not any(s["label_list"] for s in unlisted["systems"])
    tokens = [r["systems"][1]["tokens"]["input_per_item"] for r in (listed, unlisted)]
    assert tokens[0] > tokens[1]


def test_memory_and_timing_are_kept_for_this_machine_only(trained, scored, monkeypatch):
    from finetune.evaluate import memory

    path, run_dir = trained
    alone: list[str] = []

    def counted(recipe, run_dir, plans, on_done=None):
        """Each measurement a figure of its own: a fresh process per system measures for real
        in test_evaluate; here only which systems are measured, and when, is in question."""
        peaks = {}
        for plan in plans:
            alone.append(plan.system.name)
            peaks[plan.system.name] = 1_000_000 * len(alone)
            if on_done:
                on_done()
        return peaks

    monkeypatch.setattr(memory, "measured_alone", counted)
    first = _evaluate(path, run_dir, "eval.memory=alone")
    alone.clear()
    scored.clear()
    again = _evaluate(path, run_dir, "eval.memory=alone")
    assert scored == [] and alone == []
    peaks = {s["name"]: s["peak_memory_bytes"] for s in first["systems"]}
    assert {s["name"]: s["peak_memory_bytes"] for s in again["systems"]} == peaks
    assert set(again["timing"]["reused"]) == set(peaks)

    monkeypatch.setattr(reuse, "machine", lambda: "another machine (64 cores)")
    elsewhere = _evaluate(path, run_dir, "eval.memory=alone")
    assert scored == []  # the answers do not depend on the machine's description
    assert alone == ["specialist", "base zero-shot", "tf-idf + logreg"]
    assert elsewhere["timing"]["reused"] == {} and elsewhere["timing"]["rounds"] == 6
    # Timed in these rounds, not apart (unpaired only where busy rounds left too few for both).
    assert all(
        c["timing"]["latency"]["paired"] or "paired_rounds" in c["timing"]["latency"]
        for c in elsewhere["comparisons"]
    )


def test_a_damaged_entry_is_evaluated_again(trained, scored):
    path, run_dir = trained
    _evaluate(path, run_dir)
    store = run_dir.parents[1] / "systems"
    entries = sorted(store.glob("*.json"))
    assert len(entries) >= 3
    for entry in entries:
        entry.write_text("{not json")
    scored.clear()
    _evaluate(path, run_dir)
    assert scored == ["specialist", "base zero-shot", "tf-idf + logreg"]


def test_rounds_a_busy_machine_disturbed_are_timed_again(trained, monkeypatch):
    from finetune.evaluate import machine_load

    path, run_dir = trained
    monkeypatch.setattr(machine_load, "BUSY_CORES", -1.0)  # every round: other processes busy
    disturbed = _evaluate(path, run_dir, "eval.latency_items=3")  # timing settings of its own
    assert all(load["busy"] for s in disturbed["systems"] for load in s["load"])
    again = _evaluate(path, run_dir, "eval.latency_items=3")
    assert again["timing"]["reused"] == {}  # nothing kept to reuse
    monkeypatch.setattr(machine_load, "BUSY_CORES", math.inf)
    quiet = _evaluate(path, run_dir, "eval.latency_items=3")
    assert quiet["timing"]["reused"] == {}
    assert set(_evaluate(path, run_dir, "eval.latency_items=3")["timing"]["reused"]) == {
        "specialist",
        "base zero-shot",
        "tf-idf + logreg",
    }
