"""Run directories: created partial, renamed when complete, holding recipe, provenance and logs."""

import json
import logging

import pytest
import yaml
from conftest import MINIMAL_RECIPE

from finetune.recipe import load_recipe
from finetune.runs import is_complete, open_run


@pytest.fixture
def recipe(write_recipe, tmp_path):
    return load_recipe(
        write_recipe(MINIMAL_RECIPE), [f"tracking.runs_dir={tmp_path / 'runs'}", "seed=7"]
    )


def test_completed_run_has_recipe_provenance_and_logs(recipe, tmp_path):
    with open_run(recipe, recipe_path="r.yaml", overrides=["seed=7"]) as run:
        assert run.path.name.endswith(".partial") and not is_complete(run.path)
        logging.getLogger("finetune.test").info("hello from the run")
        run.record(data_fingerprint="abc123")
    final = run.final_path
    assert run.path == final and final.is_dir() and is_complete(final)
    assert final.parent == tmp_path / "runs" / "tiny"
    assert not list(final.parent.glob("*.partial")), "the partial directory was renamed, not copied"
    assert sorted(p.name for p in final.iterdir()) == ["logs", "provenance.json", "recipe.yaml"]

    assert load_recipe(final / "recipe.yaml") == recipe, (
        "the resolved recipe reloads to the same recipe"
    )
    prov = json.loads((final / "provenance.json").read_text())
    assert prov["status"] == "complete" and prov["seed"] == 7 and prov["overrides"] == ["seed=7"]
    assert prov["data_fingerprint"] == "abc123"
    assert prov["start_time"] <= prov["end_time"]
    assert {"hostname", "git", "packages", "python"} <= prov.keys()
    assert prov["packages"]["torch"].startswith("2.") and prov["packages"]["finetune"] == "0.1.0"
    assert "hello from the run" in (final / "logs" / "run.log").read_text()


def test_failed_run_stays_partial_and_says_why(recipe):
    with pytest.raises(RuntimeError), open_run(recipe, recipe_path="r.yaml") as run:
        raise RuntimeError("disk on fire")
    assert run.path.name.endswith(".partial") and run.path.is_dir()
    assert not run.final_path.exists()
    assert not is_complete(run.path)
    prov = json.loads((run.path / "provenance.json").read_text())
    assert prov["status"] == "failed" and prov["error"] == "RuntimeError: disk on fire"


def test_killed_run_never_looks_complete(recipe):
    """A process killed mid-run leaves only the partial directory, whose status says running."""
    from finetune.runs import start_run

    run = start_run(recipe, recipe_path="r.yaml")
    run._close_log()  # what the OS does to a killed process's files
    assert not is_complete(run.path) and not run.final_path.exists()
    assert json.loads((run.path / "provenance.json").read_text())["status"] == "running"
    assert yaml.safe_load((run.path / "recipe.yaml").read_text())["name"] == "tiny"


def test_run_records_data_fingerprint_and_base_model_identity(
    write_recipe, tmp_path, tiny_model_dir
):
    from finetune.data import prepare
    from finetune.models import resolve
    from finetune.runs import record_inputs

    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {"id": f"r{i}", "text": f"review number {i}", "label": ["fresh", "rotten"][i % 2]}
            )
            + "\n"
            for i in range(20)
        )
    )
    recipe = load_recipe(
        write_recipe(
            {
                **MINIMAL_RECIPE,
                "data": {"source": str(rows), "prepared_dir": str(tmp_path / "data")},
                "model": {"base": str(tiny_model_dir)},
            }
        ),
        [f"tracking.runs_dir={tmp_path / 'runs'}"],
    )
    prepared, source = prepare(recipe), resolve(recipe.model.base)
    with open_run(recipe, recipe_path="r.yaml") as run:
        record_inputs(run, prepared, source)
    prov = json.loads((run.final_path / "provenance.json").read_text())
    assert prov["data"]["fingerprint"] == prepared.fingerprint and len(prepared.fingerprint) == 64
    assert prov["data"]["rows"]["total"] == 20
    assert prov["base_model"] == {"ref": str(tiny_model_dir), "kind": "local", **source.identity}
