"""`finetune predict`: a fully fine-tuned decoder answering as evaluated, every label's
probability, resuming after a kill without writing a row twice, bad rows refused or skipped as
`prepare` treats them, and the command itself on a CSV with its own column names."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest
from conftest import (
    assert_predicts_as_evaluated,
    in_warm_process,
    run_cli,
    tiny_recipe_factory,
    train_and_evaluate,
)

from finetune.data import DataError
from finetune.deploy.predict import predict, rejects_path
from finetune.errors import FinetuneError
from finetune.recipe import load_recipe


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def _reviews(path: Path, n: int, start: int = 0) -> Path:
    words = ["fresh and funny", "a boring mess", "a delight", "dull and lifeless"]
    rows = [{"id": f"n{i}", "text": f"{words[i % 4]}, new {i}"} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_fully_fine_tuned_decoder_predicts_as_evaluated(tmp_path, tiny_model_dir):
    path = tiny_recipe_factory(tmp_path, tiny_model_dir)(
        train={"method": "full", "learning_rate": 1e-3},
        eval={"baselines": [], "bootstrap_samples": 100},
    )
    evaluated = train_and_evaluate(path)
    assert (evaluated.run_dir / "model").is_dir()
    rows = assert_predicts_as_evaluated(evaluated, tmp_path / "out.jsonl")
    for row in rows:
        logprobs = row["label_logprobs"]
        total = sum(math.exp(v) for v in logprobs.values())
        expected = {k: math.exp(v) / total for k, v in logprobs.items()}
        assert row["probabilities"] == pytest.approx(expected, abs=1e-6)
        assert row["label"] == max(expected, key=expected.get)


def _kill_after(recipe_path: Path, run_dir: Path, source: Path, out: Path, chunks: int) -> None:
    """Predict in chunks of 8 and SIGKILL this process once `chunks` chunks are on disk. Run in
    a process of its own (`in_warm_process`)."""
    from finetune.deploy import predict as module

    real, written = module.append_jsonl, []

    def append_then_die(path, rows):
        real(path, rows)
        written.append(path)
        if path == out and written.count(out) == chunks:
            os.kill(os.getpid(), signal.SIGKILL)

    module.append_jsonl = append_then_die
    module.predict(load_recipe(recipe_path), run_dir, source, out, chunk=8)


def test_a_killed_predict_goes_on_where_it_stopped_and_writes_no_row_twice(tiny_run_copy, tmp_path):
    recipe_path = tiny_run_copy / "recipe.yaml"
    recipe = load_recipe(recipe_path)
    source = _reviews(tmp_path / "new.jsonl", 30)
    whole = predict(recipe, tiny_run_copy, source, tmp_path / "whole.jsonl", chunk=8)
    assert (whole.rows, whole.kept) == (30, 0)

    out, log = tmp_path / "resumed.jsonl", tmp_path / "killed.log"
    code = in_warm_process(_kill_after, recipe_path, tiny_run_copy, source, out, 2, log=log)
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    assert len(_rows(out)) == 16
    with out.open("a") as f:
        f.write('{"id": "n16", "label": "fr')  # a line cut short by the kill
    again = predict(recipe, tiny_run_copy, source, out, chunk=8)
    assert (again.rows, again.kept) == (14, 16)
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"n{i}" for i in range(30)]
    assert rows == _rows(tmp_path / "whole.jsonl")
    assert predict(recipe, tiny_run_copy, source, out, chunk=8).rows == 0  # nothing left to do


def _with_bad_rows(path: Path) -> Path:
    _reviews(path, 4)
    with path.open("a") as f:
        f.write('{"id": "blank", "text": "   "}\n{"id": "n1", "text": "again"}\nnot json\n')
    return path


def test_bad_rows_are_listed_before_anything_is_predicted(tiny_run_copy, tmp_path):
    recipe = load_recipe(tiny_run_copy / "recipe.yaml")
    source, out = _with_bad_rows(tmp_path / "bad.jsonl"), tmp_path / "out.jsonl"
    with pytest.raises(DataError) as err:
        predict(recipe, tiny_run_copy, source, out)
    lines = str(err.value).splitlines()
    assert lines[0] == "3 bad row(s):"
    assert lines[1] == f"  {source}:5: empty or whitespace-only text"
    assert lines[2] == f"  {source}:6: duplicate id 'n1'"
    assert lines[3].startswith(f"  {source}:7: malformed JSON (")
    assert not out.exists()


def test_bad_rows_are_skipped_into_a_rejects_file_and_counted(tiny_run_copy, tmp_path):
    recipe = load_recipe(tiny_run_copy / "recipe.yaml")
    source, out = _with_bad_rows(tmp_path / "bad.jsonl"), tmp_path / "out.jsonl"
    done = predict(recipe, tiny_run_copy, source, out, on_bad_row="skip")
    assert (done.rows, done.rejected) == (4, 3)
    assert [r["id"] for r in _rows(out)] == ["n0", "n1", "n2", "n3"]
    rejects = _rows(rejects_path(out))
    assert [(r["line"], r["reason"][:14]) for r in rejects] == [
        (5, "empty or white"),
        (6, "duplicate id '"),
        (7, "malformed JSON"),
    ]
    again = predict(recipe, tiny_run_copy, source, out, on_bad_row="skip")  # nothing twice
    assert (again.rows, again.kept, again.rejected) == (0, 4, 0)
    assert len(_rows(rejects_path(out))) == 3


def test_an_unknown_system_is_named_with_a_suggestion(tiny_run_copy, tmp_path):
    recipe = load_recipe(tiny_run_copy / "recipe.yaml")
    source = _reviews(tmp_path / "new.jsonl", 2)
    with pytest.raises(FinetuneError) as err:
        predict(recipe, tiny_run_copy, source, tmp_path / "out.jsonl", system="tf-idf+logreg")
    assert str(err.value) == (
        "--system: the run has no system 'tf-idf+logreg'. Did you mean 'tf-idf + logreg'? "
        "Its systems: specialist, base zero-shot, tf-idf + logreg"
    )


def test_the_command_reads_a_csv_by_its_own_columns_and_says_what_it_did(
    tiny_run_copy, tmp_path, monkeypatch, capsys
):
    source = tmp_path / "inbox.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ticket", "body"])
        writer.writerows([[f"t{i}", f"a delight, ticket {i}"] for i in range(5)])
    code, output = run_cli(
        monkeypatch,
        capsys,
        "predict",
        str(tiny_run_copy),
        str(source),
        "--field",
        "id=ticket",
        "--field",
        "text=body",
        "--system",
        "tf-idf + logreg",
    )
    out = tiny_run_copy / "predict" / "inbox.jsonl"
    assert code == 0, output
    assert output.splitlines()[-1].startswith("predicted 5 rows in ")
    assert output.splitlines()[-1].endswith(f"; written to {out}")
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["t0", "t1", "t2", "t3", "t4"]
    assert all(sum(r["probabilities"].values()) == pytest.approx(1) for r in rows)


def test_a_missing_column_is_named_even_when_the_first_row_is_unreadable(tiny_run_copy, tmp_path):
    recipe = load_recipe(tiny_run_copy / "recipe.yaml")
    source = tmp_path / "inbox.jsonl"
    source.write_text('not json\n{"id": "a", "body": "a delight"}\n')
    with pytest.raises(DataError) as err:
        predict(recipe, tiny_run_copy, source, tmp_path / "out.jsonl", on_bad_row="skip")
    assert str(err.value).startswith(f"data.fields.text: column 'text' not found in {source}")
