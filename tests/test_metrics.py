"""Task metrics: values worked by hand, the name registry and its messages, model-output parsing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from finetune.data.bio import decode_bio
from finetune.tasks.entities import locate, parse_entities
from finetune.tasks.metrics import (
    DEFAULT_METRICS,
    METRICS,
    compute,
    confusion_matrix,
    indexed_metric,
    item_scores,
    metric_names,
    per_class,
    unknown_metric_message,
)

# A 3-class confusion, rows = gold, columns = predicted (neg, neu, pos), plus one "pos" item
# the model answered off-list with "maybe":
#   neg: 3 0 1   (support 4)
#   neu: 2 1 0   (support 3)
#   pos: 0 2 2   (support 5: one more predicted "maybe")
LABELS = ["neg", "neu", "pos"]
GOLDS = ["neg"] * 4 + ["neu"] * 3 + ["pos"] * 5
PREDS = [
    *("neg", "neg", "neg", "pos"),
    *("neg", "neg", "neu"),
    *("neu", "neu", "pos", "pos", "maybe"),
]


def test_classification_accuracy_and_macro_f1_by_hand():
    # correct = 3 + 1 + 2 = 6 of 12
    assert compute("classification", "accuracy", GOLDS, PREDS, LABELS) == 0.5
    # F1 = 2TP / (2TP + FP + FN):  neg 6/(6+2+1) = 2/3,  neu 2/(2+2+2) = 1/3,  pos 4/(4+1+3) = 1/2
    # macro = (2/3 + 1/3 + 1/2) / 3 = 0.5
    assert compute("classification", "macro_f1", GOLDS, PREDS, LABELS) == pytest.approx(0.5)
    assert METRICS["classification"]["macro_f1"](GOLDS, PREDS, labels=LABELS) == pytest.approx(0.5)


def test_classification_macro_f1_averages_over_the_labels_given():
    # Default labels = sorted union {maybe, neg, neu, pos}; "maybe" has TP 0 so F1 0:
    # (0 + 2/3 + 1/3 + 1/2) / 4 = 0.375. A label that never occurs also counts as 0 (sklearn's
    # zero_division=0).
    assert compute("classification", "macro_f1", GOLDS, PREDS) == pytest.approx(0.375)
    unused = [*LABELS, "unused"]
    assert compute("classification", "macro_f1", GOLDS, PREDS, unused) == pytest.approx(0.375)
    # accuracy does not depend on the label set: an off-list answer is simply wrong
    assert compute("classification", "accuracy", GOLDS, PREDS) == 0.5


def test_per_class_precision_recall_f1_support_by_hand():
    rows = per_class(GOLDS, PREDS, LABELS)
    # neg: TP 3, predicted 5, gold 4;  neu: TP 1, predicted 3, gold 3;  pos: TP 2, predicted 3,
    # gold 5
    expected = [
        ("neg", 3 / 5, 3 / 4, 2 / 3, 4),
        ("neu", 1 / 3, 1 / 3, 1 / 3, 3),
        ("pos", 2 / 3, 2 / 5, 1 / 2, 5),
    ]
    assert [row["label"] for row in rows] == LABELS
    for row, (label, precision, recall, f1, support) in zip(rows, expected, strict=True):
        assert row == {
            "label": label,
            "precision": pytest.approx(precision),
            "recall": pytest.approx(recall),
            "f1": pytest.approx(f1),
            "support": support,
        }
    never = per_class(["a"], ["a"], ["a", "b"])[1]
    assert never == {"label": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_confusion_matrix_rows_gold_columns_predicted_off_list_left_out():
    assert confusion_matrix(GOLDS, PREDS, LABELS) == [[3, 0, 1], [2, 1, 0], [0, 2, 2]]
    # the "maybe" answer has no column, so the pos row sums to 4 though its support is 5
    assert confusion_matrix(GOLDS, PREDS, ["pos", "neg"]) == [[2, 0], [1, 3]]


def test_qa_squad_exact_match_and_token_f1():
    golds = ["The Eiffel Tower", "Paris, France", "a building permit"]
    preds = ["eiffel tower!", "in Paris", ""]
    # normalized: "eiffel tower" == "eiffel tower"; "paris france" vs "in paris";
    # "building permit" vs ""
    assert compute("qa", "exact_match", golds, preds) == pytest.approx(1 / 3)
    # token F1: 1;  1 common token of 2 and 2 -> P = R = 1/2 -> 0.5;  empty prediction -> 0
    assert compute("qa", "token_f1", golds, preds) == pytest.approx((1 + 0.5 + 0) / 3)
    assert item_scores("qa", golds, preds) == pytest.approx([1.0, 0.5, 0.0])


def test_qa_token_f1_counts_repeated_tokens_once_each_and_empty_pairs_match():
    # "the cat the cat" -> [cat, cat]; "cat" -> 1 common: P = 1, R = 1/2, F1 = 2/3
    assert compute("qa", "token_f1", ["the cat the cat"], ["cat"]) == pytest.approx(2 / 3)
    # both normalize to nothing: SQuAD v2 scores that as a match
    assert compute("qa", "token_f1", ["The"], ["a."]) == 1.0
    assert compute("qa", "exact_match", ["The"], ["a."]) == 1.0


def test_qa_rouge_l_by_lcs():
    # rouge_score's README example: tokens
    #   gold: the quick brown fox jumps over the lazy dog    (9)
    #   pred: the quick brown dog jumps on the log           (8)
    # LCS = "the quick brown jumps the" = 5 -> P = 5/8, R = 5/9, F = 2PR/(P+R) = 10/17
    gold = "The quick brown fox jumps over the lazy dog"
    pred = "The quick brown dog jumps on the log."
    assert compute("qa", "rouge_l", [gold], [pred]) == pytest.approx(10 / 17)
    # punctuation separates tokens, case is ignored: "police killed" is an LCS of 2 of 4 -> 0.5
    assert compute(
        "qa", "rouge_l", ["police killed the gunman"], ["The gunman, Police-killed!"]
    ) == (pytest.approx(0.5))
    # no tokens on either side scores 0 (as rouge_score); the mean is over items
    assert compute("qa", "rouge_l", [gold, "answer"], [gold, "!!!"]) == pytest.approx(0.5)


# Three items with entities plus one where neither side has any:
#   1: gold Acme/ORG, Paris/LOC        pred acme/org (case folded: match), Paris/PER
#   2: gold Bob Smith/PER              pred "Bob  Smith"/PER twice (whitespace collapsed)
#   3: gold Berlin/LOC                 pred Berlin/LOC, Rome/LOC
#   4: nothing                         nothing
ENT_GOLDS = [
    [{"text": "Acme", "type": "ORG"}, {"text": "Paris", "type": "LOC"}],
    [{"text": "Bob Smith", "type": "PER"}],
    [{"text": "Berlin", "type": "LOC"}],
    [],
]
ENT_PREDS = [
    [{"text": "acme", "type": "org"}, {"text": "Paris", "type": "PER"}],
    [{"text": "Bob  Smith", "type": "PER"}, {"text": "Bob Smith", "type": "PER"}],
    [{"text": "Berlin", "type": "LOC"}, {"text": "Rome", "type": "LOC"}],
    [],
]


def test_extraction_micro_and_macro_f1_by_hand():
    # TP: Acme, Bob Smith (once: multisets), Berlin = 3
    # FP: Paris/PER, the second Bob Smith, Rome = 3;  FN: Paris/LOC = 1
    # micro = 2*3 / (2*3 + 3 + 1) = 0.6
    assert compute("extraction", "micro_f1", ENT_GOLDS, ENT_PREDS) == pytest.approx(0.6)
    # per type: ORG TP1 -> 1;  LOC TP1 FP1 FN1 -> 2/4;  PER TP1 FP2 -> 2/4;  macro = 2/3
    assert compute("extraction", "macro_f1", ENT_GOLDS, ENT_PREDS) == pytest.approx(2 / 3)


def test_extraction_item_scores_and_nothing_to_find():
    # item F1 = 2TP/(2TP+FP+FN): 2/(2+1+1), 2/(2+1), 2/(2+1), and 1.0 for the empty item
    assert item_scores("extraction", ENT_GOLDS, ENT_PREDS) == pytest.approx([0.5, 2 / 3, 2 / 3, 1])
    assert compute("extraction", "micro_f1", [[], []], [[], []]) == 1.0
    assert compute("extraction", "macro_f1", [[]], [[]]) == 1.0
    assert compute("extraction", "micro_f1", [[]], [[{"text": "x", "type": "T"}]]) == 0.0


BIO_TYPES = ["PER", "LOC", "ORG"]


@st.composite
def _tag_sequences(draw) -> tuple[list[str], list[str], list[str]]:
    """Tokens and two valid IOB2 tag sequences over them (gold, predicted)."""
    n = draw(st.integers(1, 12))
    tokens = draw(st.lists(st.sampled_from(["a", "bb", "Ccc", "d.", "#e"]), min_size=n, max_size=n))
    return tokens, draw(_iob2(n)), draw(_iob2(n))


@st.composite
def _iob2(draw, n: int) -> list[str]:
    tags: list[str] = []
    for _ in range(n):
        choice = draw(st.sampled_from(["O", "B", "I"]))
        kind = draw(st.sampled_from(BIO_TYPES))
        if choice == "I" and tags and tags[-1] != "O":
            tags.append("I-" + tags[-1][2:])  # continues the entity before it
        else:
            tags.append("O" if choice == "O" else f"B-{kind}")
    return tags


@settings(max_examples=200, deadline=None)
@given(st.lists(_tag_sequences(), min_size=1, max_size=6))
def test_entity_f1_on_spans_equals_seqeval(sentences):
    from seqeval.metrics import f1_score

    gold_tags, pred_tags = [s[1] for s in sentences], [s[2] for s in sentences]
    golds = [decode_bio(tokens, g)[1] for tokens, g, _ in sentences]
    preds = [decode_bio(tokens, p)[1] for tokens, _, p in sentences]
    assume(any(golds) and any(preds))  # seqeval has no answer for nothing at all
    for average in ("micro", "macro"):
        expected = f1_score(gold_tags, pred_tags, average=average, zero_division=0)
        assert compute("extraction", f"{average}_f1", golds, preds) == pytest.approx(expected)


def test_generated_entities_are_located_in_the_input_before_span_matching():
    text = "Paris and paris again, not London"
    golds = [
        [
            {"text": "Paris", "type": "LOC", "start": 0, "end": 5},
            {"text": "paris", "type": "LOC", "start": 10, "end": 15},
        ]
    ]
    # A generated entity names no place: it takes the gold span of its type if one is free
    # (the second "PARIS" the second occurrence), else the first free occurrence.
    preds = [
        [
            {"text": "PARIS", "type": "LOC"},
            {"text": "PARIS", "type": "LOC"},
            {"text": "london", "type": "PER"},
            {"text": "Rome", "type": "LOC"},
        ]
    ]
    located = locate("extraction", [text], golds, preds)[0]
    assert [(e.get("start"), e.get("end")) for e in located] == [
        (0, 5),
        (10, 15),
        (27, 33),
        (None, None),
    ]
    # TP 2 (both Paris spans); FP 2 (London as PER, Rome not in the text): micro 4/6
    assert compute("extraction", "micro_f1", golds, [located]) == pytest.approx(2 / 3)
    # Three occurrences for one gold: only one can take the span; the others are wrong places
    spans = [
        (e["start"], e["end"])
        for e in locate(
            "extraction",
            ["x x x"],
            [[{"text": "x", "type": "T", "start": 2, "end": 3}]],
            [[{"text": "x", "type": "T"}] * 3],
        )[0]
    ]
    assert spans == [(2, 3), (0, 1), (4, 5)]
    # Gold without offsets is placed at its first occurrence; other tasks pass through.
    assert locate("extraction", ["a b a"], [[{"text": "a", "type": "T"}]])[0][0]["start"] == 0
    assert locate("qa", ["t"], ["gold"], ["pred"]) == ["pred"]


def test_classification_item_scores_are_correctness():
    assert item_scores("classification", ["a", "b", "a"], ["a", "a", "maybe"]) == [1.0, 0.0, 0.0]


def test_registry_names_and_defaults():
    assert metric_names("classification") == ["accuracy", "macro_f1"]
    assert metric_names("extraction") == ["micro_f1", "macro_f1"]
    assert metric_names("qa") == ["exact_match", "token_f1", "rouge_l"]
    assert {task: metric_names(task) for task in METRICS} == DEFAULT_METRICS
    with pytest.raises(ValueError, match="unknown task type 'summary'"):
        metric_names("summary")


def test_unknown_metric_message_exact_text():
    assert unknown_metric_message("classification", "macro_f1") is None
    assert unknown_metric_message("classification", "acuracy") == (
        "unknown metric 'acuracy' for a classification task; valid: accuracy, macro_f1"
        " (did you mean accuracy?)"
    )
    assert unknown_metric_message("qa", "bleu") == (
        "unknown metric 'bleu' for a qa task; valid: exact_match, token_f1, rouge_l"
    )
    assert unknown_metric_message("qa", "accuracy") == (
        "unknown metric 'accuracy' for a qa task; valid: exact_match, token_f1, rouge_l"
    )
    with pytest.raises(ValueError, match=r"unknown metric 'f1' for a qa task"):
        compute("qa", "f1", ["x"], ["x"])


def test_mismatched_and_empty_inputs_are_rejected():
    with pytest.raises(ValueError, match="found 2 golds and 1 preds"):
        compute("classification", "accuracy", ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no items"):
        compute("qa", "exact_match", [], [])


def _random_task(task_type: str, rng: np.random.Generator, n: int):
    words = ["alpha", "beta", "gamma", "delta", "the", "x"]
    if task_type == "classification":
        golds = [str(v) for v in rng.choice(["a", "b", "c"], n)]
        preds = [str(v) for v in rng.choice(["a", "b", "c", "junk"], n)]
    elif task_type == "qa":
        golds = [" ".join(rng.choice(words, rng.integers(0, 4))) for _ in range(n)]
        preds = [" ".join(rng.choice(words, rng.integers(0, 4))) for _ in range(n)]
    else:

        def entities():
            k = rng.integers(0, 3)
            return [
                {"text": str(t), "type": str(y)}
                for t, y in zip(rng.choice(words, k), "AB"[:k], strict=True)
            ]

        golds = [entities() for _ in range(n)]
        preds = [entities() for _ in range(n)]
    return golds, preds


@pytest.mark.parametrize(
    ("task_type", "name"), [(task, name) for task in METRICS for name in METRICS[task]]
)
def test_indexed_metric_equals_compute_on_the_resampled_items(task_type, name):
    rng = np.random.default_rng(7)
    golds, preds = _random_task(task_type, rng, 40)
    labels = ["a", "b", "c", "junk"] if task_type == "classification" else None
    statistic = indexed_metric(task_type, name, golds, preds, labels)
    for _ in range(5):
        idx = rng.integers(0, 40, 40)
        direct = compute(task_type, name, [golds[i] for i in idx], [preds[i] for i in idx], labels)
        assert statistic(idx) == pytest.approx(direct, rel=1e-12)
        assert 0.0 <= direct <= 1.0
    assert statistic(np.arange(40)) == compute(task_type, name, golds, preds, labels)


def test_parse_entities_good_wrapped_and_broken():
    good = '[{"text": "Acme", "type": "ORG"}, {"text": "Paris", "type": "LOC"}]'
    assert parse_entities(good) == [
        {"text": "Acme", "type": "ORG"},
        {"text": "Paris", "type": "LOC"},
    ]
    wrapped = f"Sure! Here are the entities:\n```json\n{good}\n```\nHope this helps."
    assert parse_entities(wrapped) == parse_entities(good)
    # a bracket in the preamble defeats first-[ ... last-]; the first list that parses wins
    assert parse_entities(f"Entities [JSON]: {good}") == parse_entities(good)
    # malformed entries are dropped, extra keys are not kept
    mixed = (
        '[{"text": "Acme", "type": "ORG", "score": 0.9}, {"text": 3, "type": "X"}, "Paris",'
        ' {"text": "", "type": "LOC"}, {"type": "PER"}]'
    )
    assert parse_entities(mixed) == [{"text": "Acme", "type": "ORG"}]
    for broken in ['[{"text": "Acme", "type": "ORG"}, {"text": "Par', "no entities", "", "[]"]:
        assert parse_entities(broken) == []
    assert parse_entities('{"text": "Acme", "type": "ORG"}') == []  # an object, not a list
