"""Experiments: grid expansion with paired axes, content hashes, validation of the file and of
every cell's recipe before anything runs, the dry run, and running cells locally (reuse on a
second run, a failing cell not stopping the others)."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

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


def test_a_cell_killed_mid_training_is_resumed_by_the_next_run(write_experiment, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import finetune_process

    from finetune.experiment import load_experiment, state
    from finetune.train.callbacks import SEAL_FILE

    fast = {"tfidf": {"enabled": False}, "latency_items": 2, "bootstrap_samples": 50}
    path = write_experiment(
        sections={"train": {"max_steps": 40, "save_every": 2, "eval_every": 2}, "eval": fast},
        axes={"lora.r": [2]},
    )
    (cell,) = load_experiment(path)[1]
    partial = cell.run_dir().with_name(cell.run_dir().name + ".partial")
    command = [sys.executable, "-m", "finetune", "experiment", str(path)]
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True)
    try:  # killed once its first checkpoint is sealed: bounded by the deadline
        deadline = time.monotonic() + 300
        while not (partial / "checkpoints" / "checkpoint-2" / SEAL_FILE).exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert state(cell) == {"train": "resume", "evaluate": "evaluate"}

    done = finetune_process("experiment", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 of 1 cells done" in done.stdout
    assert state(cell) == {"train": "reuse", "evaluate": "reuse"} and not partial.exists()
    provenance = json.loads((cell.run_dir() / "provenance.json").read_text())
    assert len(provenance["resumed"]) == 1
