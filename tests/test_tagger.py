"""Token classification for extraction: IOB2 tags aligned to sub-word tokens and back to spans,
a tagger trained on a tiny random BERT, and evaluated on exact spans like every extraction system."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from callbacks import Snapshot
from conftest import Evaluated, assert_predicts_as_evaluated, tiny_recipe_factory
from hypothesis import given, settings
from hypothesis import strategies as st
from test_encoder import build_tiny_bert
from transformers import AutoModelForTokenClassification, AutoTokenizer

from finetune.data import load_split
from finetune.evaluate import evaluate
from finetune.models.heads import resolved_head
from finetune.recipe import RecipeError, load_recipe
from finetune.tasks.metrics import compute
from finetune.tasks.tagging import (
    IGNORED,
    bio_labels,
    decode_tags,
    encode_tagged,
    entity_types,
    word_tags,
    words,
)
from finetune.train import export_merged, train
from finetune.train.callbacks import read_log

NAMES = ["anna", "anna lee", "bob", "carl ray", "dora"]
CITIES = ["paris", "rome", "new york", "oslo"]
FILLER = ["i", "met", "in", "today", "flew", "to", "with", "nothing", "happened", "here"]
TEMPLATES = [
    "i met {PER} in {LOC} today",
    "{PER} flew to {LOC}",
    "nothing happened here",
    "in {LOC} with {PER}",
]


def ner_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences from the templates with a name (PER) and a city (LOC) and their offsets."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        template = rng.choice(TEMPLATES)
        text, entities = "", []
        for piece in template.replace("}", "{").split("{"):
            value = {"PER": rng.choice(NAMES), "LOC": rng.choice(CITIES)}.get(piece, piece)
            if piece in ("PER", "LOC"):
                entities.append(
                    {
                        "text": value,
                        "type": piece,
                        "start": len(text),
                        "end": len(text) + len(value),
                    }
                )
            text += value
        rows.append({"id": f"s{i:03d}", "text": text, "entities": entities})
    return rows


def build_tiny_ner_bert(path: Path) -> Path:
    """test_encoder's tiny BERT over the sentences' words, with '##' pieces so that some names
    split into several sub-word tokens ("carl" is "car" + "##l")."""
    vocab = sorted({w for phrase in [*NAMES, *CITIES, *FILLER] for w in phrase.split()} - {"carl"})
    return build_tiny_bert(path, [*vocab, "car", "##l"])


@pytest.fixture(scope="session")
def tiny_ner_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_ner_bert(tmp_path_factory.mktemp("tiny-ner-bert"))


# ------------------------------------------------------------------------- tags and spans


@st.composite
def _tagged_text(draw) -> tuple[str, list[dict]]:
    """Words joined by runs of spaces, and entities over whole runs of words."""
    pieces = draw(
        st.lists(st.sampled_from(["ab", "c", "Dé", "#x", "1.5", "z-z"]), min_size=1, max_size=10)
    )
    gaps = [draw(st.sampled_from([" ", "  ", "\t"])) for _ in pieces]
    text = "".join(p + g for p, g in zip(pieces, gaps, strict=True)).rstrip()
    spans = words(text)
    entities, i = [], 0
    while i < len(spans):
        length = draw(st.integers(0, 3))
        if length and i + length <= len(spans):
            start, end = spans[i][0], spans[i + length - 1][1]
            kind = draw(st.sampled_from(["PER", "LOC"]))
            entities.append({"text": text[start:end], "type": kind, "start": start, "end": end})
            i += length
        else:
            i += 1
    return text, entities


@settings(max_examples=200, deadline=None)
@given(_tagged_text())
def test_word_tags_round_trip_to_the_same_spans(case):
    text, entities = case
    spans = words(text)
    tags = word_tags(text, entities, spans)
    assert decode_tags(text, spans, tags) == [
        {"text": e["text"], "type": e["type"], "start": e["start"], "end": e["end"]}
        for e in entities
    ]


def test_decoding_reads_a_stray_i_tag_as_seqeval_does():
    text = "a b c d"
    tags = ["I-PER", "I-PER", "I-LOC", "B-LOC"]
    assert decode_tags(text, words(text), tags) == [
        {"text": "a b", "type": "PER", "start": 0, "end": 3},
        {"text": "c", "type": "LOC", "start": 4, "end": 5},
        {"text": "d", "type": "LOC", "start": 6, "end": 7},
    ]
    assert bio_labels(["LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert entity_types(bio_labels(["LOC", "PER"])) == ["LOC", "PER"]


def test_only_the_first_sub_token_of_each_word_is_labelled(tiny_ner_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_ner_bert_dir)
    text = "i met carl ray in new york"
    entities = [
        {"text": "carl ray", "type": "PER", "start": 6, "end": 14},
        {"text": "new york", "type": "LOC", "start": 18, "end": 26},
    ]
    tags = word_tags(text, entities, words(text))
    assert tags == ["O", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    ids = {label: i for i, label in enumerate(bio_labels(["LOC", "PER"]))}
    tagged = encode_tagged(tokenizer, text, tags, ids, max_length=64)
    pieces = tokenizer.convert_ids_to_tokens(tagged.input_ids)
    assert pieces == ["[CLS]", "i", "met", "car", "##l", "ray", "in", "new", "york", "[SEP]"]
    out, b_per, i_per, b_loc, i_loc = (ids[t] for t in ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    assert tagged.labels == [IGNORED, out, out, b_per, IGNORED, i_per, out, b_loc, i_loc, IGNORED]
    # Cut to 6 tokens from the end: [CLS] i met car ##l [SEP]: the last words are cut off.
    short = encode_tagged(tokenizer, text, tags, ids, max_length=6, truncation="right")
    assert short.truncated and short.word_ids == [None, 0, 1, 2, 2, None]


# ------------------------------------------------------------------------------ training


def test_auto_gives_an_encoder_a_token_classifier_for_extraction():
    assert resolved_head("auto", "encoder", "extraction") == "token-classification"
    assert resolved_head("auto", "encoder", "classification") == "sequence-classification"
    assert resolved_head("auto", "causal-lm", "extraction") == "causal-lm"


def test_a_token_classifier_needs_an_extraction_task(tmp_path, tiny_ner_bert_dir):
    make = tiny_recipe_factory(tmp_path, tiny_ner_bert_dir)
    path = make("bad", model={"head": "token-classification"}, eval={"baselines": []})
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert (
        f"{path}: task.type: {str(tiny_ner_bert_dir)!r} is an encoder: it trains a "
        "token-classification head, which needs task.type: extraction; found 'classification'"
    ) in str(info.value)


@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory, tiny_ner_bert_dir):
    """A LoRA tagger trained for 24 steps (imperfect on purpose), evaluated once per module."""
    root = tmp_path_factory.mktemp("tagger")
    source = root / "ner.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ner_rows(120)))
    make = tiny_recipe_factory(root, tiny_ner_bert_dir)
    path = make(
        "ner",
        task={"type": "extraction", "labels": [], "instruction": "Find the people and places."},
        data={"source": str(source)},
        train={
            "batch_size": 8,
            "lr_scheduler": "constant",
            "learning_rate": 0.01,
            "max_steps": 24,
            "eval_every": 8,
            "save_every": 24,
            "logging_steps": 2,
        },
        eval={"baselines": [], "batch_size": 4, "latency_items": 2, "bootstrap_samples": 200},
    )
    recipe = load_recipe(path)
    snap = Snapshot()
    run_dir = train(recipe, recipe_path=path, callbacks=[snap]).run_dir
    results = json.loads(evaluate(recipe, run_dir).read_text())
    predictions = [json.loads(line) for line in (run_dir / "eval/predictions.jsonl").open()]
    return recipe, run_dir, snap, results, predictions


def test_the_tagger_learns_and_lora_moves_only_adapters_and_the_head(tagged_run):
    _, run_dir, snap, _, _ = tagged_run
    losses = [r["train/loss"] for r in read_log(run_dir) if "train/loss" in r]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    moved = {n for n in snap.before if not torch.equal(snap.before[n], snap.after[n])}
    assert moved == snap.trainable
    assert all("lora_" in n or ".modules_to_save." in n for n in moved)
    whole = {n.split(".modules_to_save.")[0] for n in moved if "modules_to_save" in n}
    assert whole == {"base_model.model.classifier"}  # no pooler: a token classifier has none
    head = json.loads((run_dir / "head.json").read_text())
    assert head == {"head": "token-classification", "labels": bio_labels(["LOC", "PER"])}


def test_full_fine_tuning_of_a_tagger_moves_every_parameter(tmp_path, tiny_ner_bert_dir):
    source = tmp_path / "ner.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ner_rows(60)))
    path = tiny_recipe_factory(tmp_path, tiny_ner_bert_dir)(
        "ner-full",
        task={"type": "extraction", "labels": ["PER", "LOC"], "instruction": "Entities?"},
        data={"source": str(source)},
        train={"method": "full", "max_steps": 4, "learning_rate": 0.003, "batch_size": 8},
        eval={"baselines": []},
    )
    snap = Snapshot()
    run_dir = train(load_recipe(path), recipe_path=path, callbacks=[snap]).run_dir
    assert snap.trainable == set(snap.before)
    assert all(not torch.equal(snap.before[n], snap.after[n]) for n in snap.before)
    # task.labels names the types and their order
    assert json.loads((run_dir / "head.json").read_text())["labels"] == bio_labels(["PER", "LOC"])
    model = AutoModelForTokenClassification.from_pretrained(run_dir / "model")
    assert model.config.id2label[1] == "B-PER"


def _direct_entities(model, tokenizer, text: str) -> list[dict]:
    """Tags by hand: a plain forward, the argmax at each word's first token, decoded."""
    pieces = text.split()
    batch = tokenizer(pieces, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        best = model.eval()(**batch).logits[0].argmax(-1).tolist()
    tags, seen = ["O"] * len(pieces), set()
    for position, word in enumerate(batch.word_ids()):
        if word is not None and word not in seen:
            seen.add(word)
            tags[word] = model.config.id2label[best[position]]
    return decode_tags(text, words(text), tags)


def test_specialist_entities_equal_a_direct_forward_of_the_exported_model(tagged_run, tmp_path):
    _, run_dir, _, _, predictions = tagged_run
    merged = export_merged(run_dir, out=tmp_path / "merged")
    model = AutoModelForTokenClassification.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    for record in predictions:
        got = record["predictions"]["specialist"]["prediction"]
        assert got == _direct_entities(model, tokenizer, record["text"]), record["id"]


def test_tagger_scores_are_exact_span_f1_recounted(tagged_run):
    recipe, _, _, results, predictions = tagged_run
    names = [s["name"] for s in results["systems"]]
    assert names == ["specialist"]  # extraction has no TF-IDF classifier
    golds = [r["entities"] for r in load_split(recipe, "test")]
    preds = [p["predictions"]["specialist"]["prediction"] for p in predictions]

    def spans(items):
        return {(i, e["start"], e["end"], e["type"]) for i, es in enumerate(items) for e in es}

    tp = len(spans(golds) & spans(preds))
    micro = 2 * tp / (len(spans(golds)) + len(spans(preds)))
    specialist = results["systems"][0]
    assert specialist["metrics"]["micro_f1"]["value"] == pytest.approx(micro)
    assert 0.3 < micro < 1  # learned, but not all: matching on text alone would score otherwise
    assert compute("extraction", "micro_f1", golds, preds) == pytest.approx(micro)
    # seqeval on the word tags themselves, the gold tags made from the gold spans
    from seqeval.metrics import f1_score

    rows = load_split(recipe, "test")
    gold_tags = [word_tags(r["text"], r["entities"], words(r["text"])) for r in rows]
    pred_tags = [p["predictions"]["specialist"]["word_tags"] for p in predictions]
    for average in ("micro", "macro"):
        expected = f1_score(gold_tags, pred_tags, average=average, zero_division=0)
        assert specialist["metrics"][f"{average}_f1"]["value"] == pytest.approx(expected)


def test_predict_tags_each_item_as_the_evaluation_did(tagged_run, tmp_path):
    recipe, run_dir, _, results, predictions = tagged_run
    evaluated = Evaluated(recipe, None, run_dir, results, predictions)
    rows = assert_predicts_as_evaluated(evaluated, tmp_path / "out.jsonl")
    assert any(r["entities"] for r in rows)
    assert all("start" in e for r in rows for e in r["entities"])  # character spans
