"""Experiments: grid expansion with paired axes, content hashes, validation of the file and of
every cell's recipe before anything runs, the dry run, and running cells locally (reuse on a
second run, a failing cell not stopping the others)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import screenshot
from wandb_files import read_run, run_groups

from finetune.recipe import RecipeError


@pytest.fixture
def write_experiment(tmp_path, tiny_recipe):
    """An experiment file beside the tiny recipe (`sections` override the recipe's); keyword
    args are the experiment's keys."""

    def write(name: str = "exp.yaml", sections: dict | None = None, **keys) -> object:
        recipe = tiny_recipe(**(sections or {}))
        path = tmp_path / name
        path.write_text(
            yaml.safe_dump({"name": "exp", "recipe": recipe.name, **keys}, sort_keys=False)
        )
        return path

    return write


def test_axes_form_a_grid_and_paired_lists_vary_together(write_experiment):
    from finetune.experiment import load_experiment

    path = write_experiment(
        axes={"lora.r": [2, 4]},
        paired=[{"train.learning_rate": [0.01, 0.02], "seed": [1, 2]}],
    )
    _, cells = load_experiment(path)
    assert [c.values for c in cells] == [
        {"lora.r": 2, "train.learning_rate": 0.01, "seed": 1},
        {"lora.r": 2, "train.learning_rate": 0.02, "seed": 2},
        {"lora.r": 4, "train.learning_rate": 0.01, "seed": 1},
        {"lora.r": 4, "train.learning_rate": 0.02, "seed": 2},
    ]
    assert [(c.recipe.lora.r, c.recipe.train.learning_rate, c.recipe.seed) for c in cells] == [
        (2, 0.01, 1),
        (2, 0.02, 2),
        (4, 0.01, 1),
        (4, 0.02, 2),
    ]
    assert cells[1].label == "lora.r=2, train.learning_rate=0.02, seed=2"


def test_a_cell_is_named_by_a_hash_of_what_it_trains(write_experiment, tmp_path):
    from finetune.experiment import load_experiment
    from finetune.recipe import recipe_to_dict

    path = write_experiment(axes={"lora.r": [2, 4]})
    _, cells = load_experiment(path)
    _, again = load_experiment(path)
    assert [c.key for c in cells] == [c.key for c in again]
    assert cells[0].key != cells[1].key
    trained = recipe_to_dict(cells[0].recipe)
    for untrained in ("name", "description", "eval", "tracking"):
        del trained[untrained]
    # Settings added to the schema later, left unset, are not hashed: old cells keep their runs.
    for section, key in (("data", "unlabelled"), ("data", "teacher"), ("train", "min_steps")):
        assert trained[section].pop(key) is None
    digest = hashlib.sha256(json.dumps(trained, sort_keys=True, separators=(",", ":")).encode())
    assert cells[0].key == digest.hexdigest()[:12]
    # What is evaluated or tracked does not change the training, so not the cell either.
    other = write_experiment(
        "other.yaml", axes={"lora.r": [2]}, general=[{"name": "b", "model": "base", "shots": 2}]
    )
    (cell,) = load_experiment(other)[1]
    assert cell.key == cells[0].key
    assert cell.run_dir() == tmp_path / "runs" / "tiny" / f"cell-{cell.key}"
    assert [b.name for b in cell.recipe.eval.baselines] == ["b"]
    # The base recipe's seed on a seed axis pins the split to the seed it had anyway.
    seeded = write_experiment("seeded.yaml", axes={"lora.r": [2], "seed": [3, 4]})
    same, other_seed = load_experiment(seeded)[1]
    assert same.recipe.data.split_seed == 3 and cells[0].recipe.data.split_seed is None
    assert same.key == cells[0].key and other_seed.key != cells[0].key


def test_every_problem_is_reported_at_once_naming_the_file_and_key(write_experiment):
    from finetune.experiment import load_experiment

    path = write_experiment(axis={"lora.r": [2]})
    with pytest.raises(RecipeError) as err:
        load_experiment(path)
    assert f"{path}: axis: unknown key 'axis' (did you mean axes?)" in str(err.value)

    path = write_experiment(
        axes={"lora.r": [0, 4], "lora.rnak": [1]},
        paired=[{"seed": [1, 2], "train.learning_rate": [0.1]}],
    )
    with pytest.raises(RecipeError) as err:
        load_experiment(path)
    text = str(err.value)
    assert (
        f"{path}: paired.0: the lists of a group vary together and need the same length; "
        "found seed: 2, train.learning_rate: 1" in text
    )
    path = write_experiment(axes={"lora.r": [0, 4], "lora.rnak": [1]})
    with pytest.raises(RecipeError) as err:
        load_experiment(path)
    lines = str(err.value).splitlines()
    assert lines[0] == "2 recipe problems:"
    assert (
        f"  {path} (cell 0: lora.r=0, lora.rnak=1): lora.rnak: unknown key 'rnak' "
        "(did you mean lora.r?)" in lines
    )
    assert (
        f"  {path} (cell 0: lora.r=0, lora.rnak=1): lora.r: input should be greater than 0; "
        "found 0" in lines
    )


def test_an_axis_that_changes_nothing_trained_is_refused(write_experiment):
    from finetune.experiment import load_experiment

    path = write_experiment(axes={"eval.batch_size": [4, 8]})
    with pytest.raises(RecipeError) as err:
        load_experiment(path)
    assert (
        f"{path} (cell 1: eval.batch_size=8): axes: trains exactly what cell 0 "
        "(eval.batch_size=4) trains" in str(err.value)
    )


def test_validate_takes_experiment_files(write_experiment, monkeypatch, capsys):
    from conftest import run_cli

    path = write_experiment(axes={"lora.r": [2, 4]})
    code, output = run_cli(monkeypatch, capsys, "validate", str(path))
    assert code == 0
    assert f"{path}: ok (experiment exp: 2 cells on tiny.yaml, each recipe valid)" in output


def test_cells_run_once_and_a_failing_cell_does_not_stop_the_rest(
    write_experiment, monkeypatch, capsys, tmp_path
):
    from conftest import run_cli

    fast = {
        "tfidf": {"enabled": False},
        "latency_items": 2,
        "bootstrap_samples": 50,
        "timing": {"rounds": 6, "throughput_items": 4},
    }
    sources = [str(tmp_path / "reviews.jsonl"), str(tmp_path / "missing.jsonl")]
    path = write_experiment(
        sections={"eval": fast}, axes={"data.source": sources, "lora.r": [2, 4]}
    )
    code, output = run_cli(monkeypatch, capsys, "experiment", str(path), "--dry-run")
    assert code == 0
    assert output.count(": train, evaluate (") == 4
    assert not (tmp_path / "runs").exists()

    code, output = run_cli(monkeypatch, capsys, "experiment", str(path))
    assert code == 1
    assert "2 of 4 cells done" in output
    missing = f"failed: data.source: file '{sources[1]}' does not exist"
    assert output.count(missing) == 2
    runs = sorted((tmp_path / "runs" / "tiny").iterdir())
    assert [r.name.startswith("cell-") for r in runs] == [True, True]
    results = {r: (r / "eval" / "results.json").stat().st_mtime_ns for r in runs}
    assert all(results.values())

    code, output = run_cli(monkeypatch, capsys, "experiment", str(path), "--dry-run")
    assert output.count(": reuse, reuse (") == 2 and output.count(": train, evaluate (") == 2
    code, output = run_cli(monkeypatch, capsys, "experiment", str(path))
    # The finished cells train nothing and evaluate nothing.
    assert sorted((tmp_path / "runs" / "tiny").iterdir()) == runs
    assert {r: (r / "eval" / "results.json").stat().st_mtime_ns for r in runs} == results


def _fast_cells(write_experiment):
    from finetune.experiment import load_experiment

    fast = {
        "tfidf": {"enabled": False},
        "latency_items": 2,
        "bootstrap_samples": 50,
        "timing": {"rounds": 6, "throughput_items": 4},
    }
    path = write_experiment(sections={"eval": fast}, axes={"lora.r": [2, 4]})
    experiment, cells = load_experiment(path)
    return path.parent / experiment.recipe, cells


def test_the_ray_executor_runs_cells_as_tasks_on_a_local_instance(write_experiment):
    import os

    import ray

    from finetune.experiment import run_cells
    from finetune.experiment.schema import ExecutorConfig
    from finetune.runs import is_complete

    recipe_path, cells = _fast_cells(write_experiment)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcomes = run_cells(cells, recipe_path, ExecutorConfig(kind="ray", cpus_per_cell=1))
    finally:
        ray.shutdown()
    assert [o.error for o in outcomes] == [None, None]
    assert [o.cell.key for o in outcomes] == [c.key for c in cells]
    assert all(int(o.worker.rpartition(":")[2]) != os.getpid() for o in outcomes)
    for cell in cells:
        assert is_complete(cell.run_dir())
        results = json.loads((cell.run_dir() / "eval" / "results.json").read_text())
        assert results["systems"][0]["name"] == "specialist"


def test_the_ray_executor_says_how_to_install_ray(write_experiment, monkeypatch):
    import sys

    from finetune.errors import FinetuneError
    from finetune.experiment import run_cells
    from finetune.experiment.schema import ExecutorConfig

    recipe_path, cells = _fast_cells(write_experiment)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(FinetuneError) as err:
        run_cells(cells, recipe_path, ExecutorConfig(kind="ray"))
    assert str(err.value).startswith(
        "Python package 'ray' is not installed (needed for `--executor ray`): "
        "run `.venv/bin/pip install ray` or `make setup`."
    )


def experiment_command(path: Path, cwd: Path) -> None:
    """`finetune experiment PATH` run from `cwd`, in a process group of its own."""
    import os
    import sys

    from finetune.cli import main

    os.setsid()
    os.chdir(cwd)
    sys.argv = ["finetune", "experiment", str(path)]
    main()


def test_a_cell_killed_mid_training_is_resumed_by_the_next_run(write_experiment, tmp_path):
    import contextlib
    import os
    import signal
    import time

    from conftest import finetune_process, start_warm_process

    from finetune.experiment import load_experiment, state
    from finetune.train.callbacks import SEAL_FILE

    fast = {"tfidf": {"enabled": False}, "latency_items": 2, "bootstrap_samples": 50}
    path = write_experiment(
        sections={"train": {"max_steps": 40, "save_every": 2, "eval_every": 2}, "eval": fast},
        axes={"lora.r": [2]},
    )
    (cell,) = load_experiment(path)[1]
    partial = cell.run_dir().with_name(cell.run_dir().name + ".partial")
    log = tmp_path / "killed.log"
    process = start_warm_process(experiment_command, path, tmp_path, log=log)
    try:  # killed once a checkpoint is sealed (older ones rotate away): bounded by the deadline
        deadline = time.monotonic() + 300
        while not list(partial.glob(f"checkpoints/checkpoint-*/{SEAL_FILE}")):
            assert process.is_alive() and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its group, once it has one
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        process.join()
    assert process.exitcode == -signal.SIGKILL
    assert state(cell) == {"train": "resume", "evaluate": "evaluate"}

    done = finetune_process("experiment", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 of 1 cells done" in done.stdout
    assert state(cell) == {"train": "reuse", "evaluate": "reuse"} and not partial.exists()
    provenance = json.loads((cell.run_dir() / "provenance.json").read_text())
    assert len(provenance["resumed"]) == 1


def _correct(right: set[int], n: int = 30) -> dict[str, bool]:
    return {f"i{k}": k in right for k in range(n)}


def test_the_crossover_on_a_hand_computed_curve():
    from finetune.experiment.decision import crossover

    general = _correct(set(range(20)))
    curve = {
        200: _correct(set(range(30))),  # 10 items only it gets right, none the other way
        25: _correct(set(range(8))),  # 12 items only the general system gets right
        50: _correct(set(range(17)) | {20, 21, 22}),  # 3 against 3
        100: _correct(set(range(25))),  # 5 against 0: p = 2 / 2^5 = 0.0625, not below 0.05
    }
    result = crossover(curve, general)
    assert [(p.size, p.specialist_only, p.general_only, p.verdict) for p in result.points] == [
        (25, 0, 12, "worse"),
        (50, 3, 3, "no clear difference"),
        (100, 5, 0, "no clear difference"),
        (200, 10, 0, "better"),
    ]
    assert [p.p_value for p in result.points] == [2 / 2**12, 1.0, 2 / 2**5, 2 / 2**10]
    assert (result.smallest_better, result.largest_worse) == (200, 25)
    assert result.describe("qwen") == (
        "significantly better than qwen from 200 training examples; still significantly worse at 25"
    )
    never = crossover({25: _correct(set(range(20)))}, general)
    assert never.describe("qwen") == (
        "not significantly better than qwen within the sizes tried; never significantly worse "
        "than qwen"
    )


def test_with_several_seeds_a_size_is_called_only_when_every_seed_agrees():
    from finetune.experiment.decision import crossover

    general = _correct(set(range(20)))
    curve = {
        100: [_correct(set(range(30))), _correct(set(range(25)))],  # 10 vs 0; 5 vs 0
        200: [_correct(set(range(30))), _correct(set(range(29)))],  # 10 vs 0; 9 vs 0
        25: [_correct(set(range(8))), _correct(set(range(9)))],  # 0 vs 12; 0 vs 11
    }
    result = crossover(curve, general)
    assert [(p.size, p.calls, p.verdict) for p in result.points] == [
        (25, ["worse", "worse"], "worse"),
        (100, ["better", "no clear difference"], "no clear difference"),
        (200, ["better", "better"], "better"),
    ]
    assert (result.smallest_better, result.largest_worse) == (200, 25)
    point = result.points[1]
    assert (point.specialist_only, point.general_only, point.p_value) == (15, 0, 2 / 2**5)
    assert point.describe() == ("100 (2 seeds): 10/5 vs 0/0, p = 0.002/0.062; better in 1 of 2")


def test_the_pareto_front_keeps_the_systems_nothing_beats_on_both():
    from finetune.experiment.decision import pareto
    from finetune.report.decision import Candidate

    candidates = [
        Candidate("big", 0.90, p50_ms=900.0, memory_gb=9.0),
        Candidate("specialist", 0.85, p50_ms=300.0, memory_gb=1.2),
        Candidate("slow and worse", 0.80, p50_ms=400.0, memory_gb=1.0),
        Candidate("tf-idf", 0.80, p50_ms=1.5, memory_gb=0.2),
        Candidate("tied but slower", 0.80, p50_ms=2.0, memory_gb=0.3),
        Candidate("api", 0.95, p50_ms=600.0, memory_gb=None),
    ]
    assert [c.name for c in pareto(candidates, "p50_ms")] == ["tf-idf", "specialist", "api"]
    # A remote system has no memory figure here: it is not on that front.
    assert [c.name for c in pareto(candidates, "memory_gb")] == ["tf-idf", "specialist", "big"]
    assert pareto(candidates, "usd_per_1k") == []


def test_the_recommendation_is_the_best_system_that_meets_the_constraints():
    from finetune.recipe.schema import ConstraintsConfig
    from finetune.report.decision import Candidate, recommend

    candidates = [
        Candidate("big local", 0.90, p50_ms=900.0, usd_per_1k=0.02, memory_gb=9.0),
        Candidate("specialist", 0.85, p50_ms=300.0, usd_per_1k=0.004, memory_gb=1.2),
        Candidate("tf-idf", 0.80, p50_ms=1.5, usd_per_1k=0.00001, memory_gb=0.2),
        Candidate("api", 0.95, p50_ms=600.0, usd_per_1k=0.5, memory_gb=None),
    ]
    limits = ConstraintsConfig(max_p50_ms=500, max_usd_per_1k=0.1)
    result = recommend(candidates, limits)
    assert result.excluded == {
        "big local": ["p50 latency"],
        "api": ["p50 latency", "cost per 1k requests"],
    }
    assert (result.best.name, result.runner_up.name) == ("specialist", "tf-idf")
    assert result.describe("accuracy") == (
        "Deploy specialist (accuracy 0.850). The runner-up, tf-idf, scores 0.050 less accuracy; "
        "p50 latency 1.5 ms (0.005x); cost per 1k $0.000010 (0.0025x)."
    )
    # A remote system's memory is not this machine's: a memory limit does not rule it out.
    memory = recommend(candidates, ConstraintsConfig(max_memory_gb=2.0))
    assert memory.best.name == "api" and "big local" in memory.excluded
    assert recommend(candidates, ConstraintsConfig(max_p50_ms=1.0)).describe("accuracy") == (
        "No system meets the constraints."
    )


def test_the_combined_report_has_the_leaderboard_curve_crossover_and_recommendation(
    write_experiment, monkeypatch, capsys, tmp_path
):
    from conftest import run_cli

    from finetune.experiment import load_experiment
    from finetune.stats import mcnemar_exact

    fast = {
        "tfidf": {"enabled": False},
        "latency_items": 2,
        "bootstrap_samples": 50,
        "timing": {"rounds": 6, "throughput_items": 4},
        "baselines": [{"name": "base zero-shot", "model": "base"}],
    }
    tracking = {"runs_dir": str(tmp_path / "runs"), "wandb": {"mode": "offline"}}
    path = write_experiment(
        sections={"eval": fast, "tracking": tracking},
        axes={"data.max_train_examples": [16, 48]},
        constraints={"max_p50_ms": 10_000},
        cascades=[
            {
                "name": "casc",
                "fallback": "base zero-shot",
                "pick": "max_escalated",
                "max_escalated": 0.5,
            }
        ],
    )
    code, output = run_cli(monkeypatch, capsys, "experiment", str(path))
    assert code == 0, output
    report = tmp_path / "runs" / "experiments" / "exp" / "report.md"
    assert f"combined report: {report}" in output
    text = report.read_text()
    assert (report.parent / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, cells = load_experiment(path)
    rows = []
    for cell in cells:
        results = json.loads((cell.run_dir() / "eval" / "results.json").read_text())
        value = results["systems"][0]["metrics"]["accuracy"]
        size = cell.values["data.max_train_examples"]
        rows.append(f"| specialist @ {size} | {size} | ")
        assert rows[-1] + f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]" in text
        predictions = [json.loads(x) for x in (cell.run_dir() / "eval/predictions.jsonl").open()]
        test = mcnemar_exact(
            [p["predictions"]["specialist"]["prediction"] == p["gold"] for p in predictions],
            [p["predictions"]["base zero-shot"]["prediction"] == p["gold"] for p in predictions],
        )
        assert f"{size}: {test.a_only} vs {test.b_only}, p = " in text
        # Each cell's cascade is an entry of its own, at the cell's training size.
        casc = next(s for s in results["systems"] if s["name"] == "casc")["metrics"]["accuracy"]
        assert f"| casc @ {size} | {size} | {casc['value']:.3f} [" in text
    assert "- specialist is " in text and "base zero-shot" in text
    assert text.count("| base zero-shot | - |") == 1  # a general system appears once
    assert "## Recommendation\n\nDeploy " in text
    assert "## Pareto fronts" in text and "| p50 latency | " in text
    assert (report.parent / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report.parent / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<h2>Crossover</h2>" in page
    # The cells' runs and the report's own run form one W&B group named after the experiment.
    logged = read_run(report.parent)
    assert (logged["job_type"], logged["group"]) == ("experiment", "exp")
    assert any(k.startswith("experiment/leaderboard") for row in logged["history"] for k in row)
    for cell in cells:
        assert run_groups(cell.run_dir()) == [("train", "exp")]
    if shutil.which("chromium"):  # the screenshot script renders it like a run's report
        width, height = screenshot(report.parent, report.parent / "shot.png")
        assert width >= 1200 and height > 1000


def test_a_new_general_system_or_a_new_cell_evaluates_only_what_is_new(
    write_experiment, monkeypatch, capsys, scored
):
    from conftest import run_cli

    fast = {
        "latency_items": 2,
        "bootstrap_samples": 50,
        "timing": {"rounds": 6, "throughput_items": 4},
    }
    zero = {"name": "base zero-shot", "model": "base"}
    path = write_experiment(
        sections={"eval": fast}, axes={"data.max_train_examples": [16, 48]}, general=[zero]
    )
    assert run_cli(monkeypatch, capsys, "experiment", str(path))[0] == 0
    # The general system is the same in both cells: scored once.
    assert sorted(scored) == ["base zero-shot", *["specialist"] * 2, *["tf-idf + logreg"] * 2]

    scored.clear()
    two = {"name": "base 2-shot", "model": "base", "shots": 2}
    write_experiment(
        sections={"eval": fast}, axes={"data.max_train_examples": [16, 48]}, general=[zero, two]
    )
    code, output = run_cli(monkeypatch, capsys, "experiment", str(path))
    assert code == 0, output
    # Both cells are evaluated again, yet only the new system is scored, and once: its shots
    # are the same at both training sizes.
    assert scored == ["base 2-shot"]

    scored.clear()
    write_experiment(
        sections={"eval": fast}, axes={"data.max_train_examples": [16, 32, 48]}, general=[zero, two]
    )
    assert run_cli(monkeypatch, capsys, "experiment", str(path))[0] == 0
    assert scored == ["specialist", "tf-idf + logreg"]  # the new cell's own systems


def test_capped_training_rows_are_nested_and_keep_each_labels_share():
    from finetune.data.split import nested_order

    rows = [{"id": f"r{i}", "label": "a" if i < 60 else "b" if i < 90 else "c"} for i in range(100)]
    order = nested_order(rows, seed=7)
    assert sorted(r["id"] for r in order) == sorted(r["id"] for r in rows)
    for size in (1, 5, 10, 25, 50, 99):
        counts = {k: sum(r["label"] == k for r in order[:size]) for k in "abc"}
        shares = {"a": 0.6, "b": 0.3, "c": 0.1}
        assert all(abs(counts[k] - size * shares[k]) <= 1 for k in "abc"), (size, counts)
    other = nested_order(rows, seed=8)
    assert {r["id"] for r in other[:10]} != {r["id"] for r in order[:10]}
    assert nested_order(list(reversed(rows)), seed=7) == order  # the draw, not the file order


def test_a_seed_axis_keeps_the_test_items_and_draws_nested_training_rows(write_experiment):
    from finetune.data import load_split
    from finetune.experiment import load_experiment

    path = write_experiment(axes={"seed": [1, 2], "data.max_train_examples": [10, 30]})
    _, cells = load_experiment(path)
    assert {c.recipe.data.split_seed for c in cells} == {3}  # the base recipe's seed
    tests = [[r["id"] for r in load_split(c.recipe, "test")] for c in cells]
    assert all(t == tests[0] for t in tests)
    train = {
        (c.recipe.seed, c.recipe.data.max_train_examples): [
            r["id"] for r in load_split(c.recipe, "train")
        ]
        for c in cells
    }
    for seed in (1, 2):
        small, large = train[(seed, 10)], train[(seed, 30)]
        assert len(small) == 10 and len(large) == 30 and set(small) < set(large)
    assert set(train[(1, 10)]) != set(train[(2, 10)])
    for cell in cells:
        rows = load_split(cell.recipe, "train")
        fresh = sum(r["label"] == "fresh" for r in rows)
        assert abs(fresh - len(rows) / 2) <= 1
