"""The general model as teacher (`data.teacher`): which rows it labels and which are kept, its
answers kept so that nothing is asked twice, failures dropped and counted, the spend cap, the
recipe checks, and the student set against its teacher in the evaluation.

Endpoint teachers talk to the fake OpenAI-compatible server of `test_endpoint` on 127.0.0.1
(it counts requests, and fails the requests it is told to); the engine teacher is a real
llama.cpp running SmolLM2-135M's GGUF."""

from __future__ import annotations

import collections
import json

import pytest
from conftest import run_cli
from test_endpoint import FAILING, FakeServer, _logprob, _sentiment, fake_api

from finetune.data import load_split
from finetune.data.read import DataError
from finetune.data.teacher import BALANCE, FAILED, INVALID, UNSURE, select, text_digest
from finetune.fetch import cache_dir
from finetune.recipe import load_recipe
from finetune.systems.endpoint import CACHE_FILE
from finetune.systems.endpoint_client import SpendCapReached
from finetune.tasks.types import probabilities
from finetune.teach import teach


def endpoint_teacher(url: str, **endpoint) -> dict:
    return {
        "name": "api",
        "endpoint": {
            "base_url": url,
            "model": "m",
            "api_key_env": "TEST_ENDPOINT_KEY",
            "scoring": "top_logprobs",
            "max_retries": 0,
            "timeout_seconds": 5,
            "concurrency": 1,
            **endpoint,
        },
    }


@pytest.fixture
def api_teacher(tiny_recipe, monkeypatch, tmp_path):
    """A tiny recipe whose training rows are labelled, their labels hidden, by an endpoint
    baseline on a fake server: (recipe path factory, server)."""
    monkeypatch.setenv("TEST_ENDPOINT_KEY", "sk-test")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    with FakeServer(fake_api) as server:

        def make(teacher: dict | None = None, prices: dict | None = None, **endpoint):
            return tiny_recipe(
                data={"teacher": {"system": "api", "rows": "train", **(teacher or {})}},
                eval={
                    "baselines": [endpoint_teacher(server.url, **endpoint)],
                    "prices": prices or {},
                },
            )

        yield make, server


def test_the_teacher_labels_the_training_rows_once_and_a_second_labelling_asks_nothing(
    api_teacher,
):
    make, server = api_teacher
    recipe = load_recipe(make())
    human = load_split(recipe, "train", human=True)
    with pytest.raises(DataError, match=r"rows are not labelled yet .*run `finetune teach"):
        load_split(recipe, "train")
    taught = teach(recipe)
    # One top_logprobs request per row, and the live check before the first.
    assert server.count == len(human) + 1 == taught.asked + 1
    again = teach(recipe)
    assert server.count == len(human) + 1 and again.asked == 0
    rows = load_split(recipe, "train")
    assert [r["id"] for r in rows] == [r["id"] for r in human]
    for row, before in zip(rows, human, strict=True):
        assert row["label"] == _sentiment(row["text"])
        scores = {label: _logprob(label, row["text"]) for label in ("fresh", "rotten")}
        assert row["teacher"] == {
            "confidence": probabilities(scores)[row["label"]],
            "human": before["label"],
        }
    right = sum(_sentiment(r["text"]) == r["label"] for r in human)
    assert taught.card["quality"] == {
        "metric": "accuracy",
        "value": pytest.approx(right / len(human)),
        "rows": len(human),
    }
    assert taught.card["asked"] == taught.card["kept"] == len(human)
    assert taught.card["dropped"] == {}


def test_a_killed_labelling_resumes_asking_only_the_rows_it_had_not_kept(api_teacher):
    make, server = api_teacher
    recipe = load_recipe(make())
    first = teach(recipe, chunk=8)
    answers = first.card["answers_file"]
    with open(answers) as f:
        lines = f.readlines()
    # A kill in the middle of the third chunk's write: two chunks whole, a line torn.
    with open(answers, "w") as f:
        f.write("".join(lines[:16]) + lines[16][:20])
    sent = server.count
    # The endpoint's cache would answer them for free; without it they are asked again.
    for path in cache_dir().glob(CACHE_FILE + "*"):
        path.unlink()
    resumed = teach(recipe, chunk=8)
    assert resumed.asked == len(lines) - 16
    assert server.count == sent + 1 + resumed.asked
    assert resumed.card["kept"] == first.card["kept"]


def test_a_failing_request_is_counted_and_its_row_dropped_never_guessed(api_teacher, monkeypatch):
    make, server = api_teacher
    recipe = load_recipe(make())
    human = load_split(recipe, "train", human=True)
    monkeypatch.setitem(FAILING, "text", human[3]["text"])
    taught = teach(recipe)
    assert taught.card["dropped"] == {FAILED: 1}
    assert taught.card["kept"] == len(human) - 1
    kept = load_split(recipe, "train")
    assert [r["id"] for r in kept] == [r["id"] for i, r in enumerate(human) if i != 3]
    # A failed request was not an answer: the next labelling asks it again, and only it.
    sent = server.count
    teach(recipe)
    assert server.count == sent + 1 + 1


def test_the_spend_cap_stops_labelling_before_it_is_exceeded_and_nothing_is_paid_twice(
    api_teacher,
):
    make, server = api_teacher
    # fake_api's top_logprobs answers bill 10 prompt + 1 completion tokens: $0.0001 + $0.0001.
    prices = {
        "per_million_input_tokens": {"api": 10.0},
        "per_million_output_tokens": {"api": 100.0},
    }
    recipe = load_recipe(make(prices=prices, max_usd=0.0015))
    with pytest.raises(SpendCapReached, match=r"max_usd: stopped before spending more than"):
        teach(recipe, chunk=4)
    paid = server.count - 1  # the live check is answered, but by the models route: not billed
    assert paid > 0 and paid * 0.0002 <= 0.0015
    with open(next(recipe_dir(recipe).glob("*.jsonl"))) as f:
        assert len(f.readlines()) == paid // 4 * 4  # whole chunks; the cut one is in the cache
    more = load_recipe(make(prices=prices, max_usd=1.0))
    human = load_split(more, "train", human=True)
    teach(more, chunk=4)
    assert server.count == 1 + len(human) + 1  # each row paid once, and a second live check


def recipe_dir(recipe):
    from finetune.data import prepared_path

    return prepared_path(recipe) / "teacher"


def answer(label: str, confidence: float | None, **extra) -> dict:
    return {"answer": label, "confidence": confidence, **extra}


def test_min_confidence_and_balance_keep_exactly_the_expected_rows(tiny_recipe):
    rows = [{"id": f"r{i}", "text": f"text {i}"} for i in range(9)]
    given = {
        "r0": answer("fresh", 0.95),
        "r1": answer("fresh", 0.55),  # below 0.6
        "r2": answer("rotten", 0.70),
        "r3": answer("fresh", 0.80),
        "r4": {"failed": "InternalServerError 500"},
        "r5": answer("", None, invalid=True),
        "r6": answer("fresh", 0.61),
        "r7": answer("rotten", 0.99),
        # r8: not answered yet
    }
    answers = {
        i: {"id": i, "text_sha": text_digest(f"text {i[1:]}"), **a} for i, a in given.items()
    }
    recipe = load_recipe(
        tiny_recipe(
            data={"teacher": {"system": "x", "rows": "train", "min_confidence": 0.6}},
            eval={"baselines": [{"name": "x", "model": "base"}]},
        )
    )
    plain = select(recipe, rows, answers)
    assert [r["id"] for r in plain.kept] == ["r0", "r2", "r3", "r6", "r7"]
    assert plain.dropped == collections.Counter({UNSURE: 1, FAILED: 1, INVALID: 1})
    assert plain.missing == ["r8"]
    balanced = load_recipe(
        tiny_recipe(
            data={
                "teacher": {"system": "x", "rows": "train", "min_confidence": 0.6, "balance": True}
            },
            eval={"baselines": [{"name": "x", "model": "base"}]},
        )
    )
    # fresh: r0 .95, r3 .80, r6 .61; rotten: r7 .99, r2 .70 -> two of each, the surest fresh.
    chosen = select(balanced, rows, answers)
    assert [r["id"] for r in chosen.kept] == ["r0", "r2", "r3", "r7"]
    assert chosen.dropped[BALANCE] == 1
    # A row whose text changed under its id is not answered: it is asked again.
    rows[0] = {"id": "r0", "text": "another text"}
    assert select(recipe, rows, answers).missing == ["r0", "r8"]


def test_a_teacher_must_be_a_general_baseline_with_rows_to_label(problems_with):
    assert problems_with(("data.teacher", {"system": "gpt"})) == [
        "data.teacher.system: 'gpt' is not one of eval.baselines (base zero-shot); the teacher "
        "is a baseline, evaluated like one.",
        "data.teacher.rows: is `unlabelled`, but data.unlabelled names no file; give it one, or "
        "set data.teacher.rows: train to label the training split with its labels hidden",
    ]


def test_teach_without_a_teacher_says_how_to_name_one(tiny_recipe, monkeypatch, capsys):
    code, output = run_cli(monkeypatch, capsys, "teach", str(tiny_recipe()))
    assert code == 2  # a usage error, as every FinetuneError
    assert "data.teacher is not set; name one of eval.baselines as the teacher" in output


def write_unseen_reviews(path, n: int = 16) -> None:
    """Reviews that are in no split of `write_reviews`' data, with no label."""
    words = ["a joy from start to end", "a tedious slog", "sharp and moving", "flat and dull"]
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"u{i}", "text": f"{words[i % 4]}, take {i}"}) + "\n")


def test_a_student_taught_by_an_engine_is_set_against_it_and_its_labels_are_its_predictions(
    tiny_recipe, gguf, tmp_path
):
    """The engine (a real llama.cpp) labels unseen reviews; a run trained on them is evaluated
    with the teacher as a baseline. A second run, tested on those same reviews, shows the
    teacher's labels are exactly its evaluation predictions."""
    from conftest import train_and_evaluate

    from finetune.data.teacher import read_answers
    from finetune.report import write_report
    from finetune.stats import non_inferiority
    from finetune.tasks import metrics as M

    unseen = tmp_path / "unseen.jsonl"
    write_unseen_reviews(unseen)
    make = tiny_recipe
    engine = {"name": "smol", "engine": {"model": str(gguf), "context": 512}}
    quick = {"tfidf": {"enabled": False}, "bootstrap_samples": 200, "timing": {"rounds": 6}}
    taught = make(
        "taught",
        data={"unlabelled": str(unseen), "teacher": {"system": "smol", "margin": 0.1}},
        eval={"baselines": [engine], **quick},
    )
    recipe = load_recipe(taught)
    labelled = teach(recipe)
    assert labelled.card["asked"] == 16 and labelled.asked == 16
    answers = read_answers(next(recipe_dir(recipe).glob("*.jsonl")))
    rows = load_split(recipe, "train")
    human = load_split(recipe, "train", human=True)
    assert rows[: len(human)] == human  # the human rows first, then the teacher's
    assert {r["id"]: r["label"] for r in rows[len(human) :]} == {
        i: a["answer"] for i, a in answers.items()
    }
    evaluated = train_and_evaluate(taught)
    preds = {p["id"]: p for p in evaluated.predictions}
    student = [
        preds[p["id"]]["predictions"]["specialist"]["prediction"] for p in evaluated.predictions
    ]
    teacher = [preds[p["id"]]["predictions"]["smol"]["prediction"] for p in evaluated.predictions]
    golds = [p["gold"] for p in evaluated.predictions]
    labels = ["fresh", "rotten"]
    call = non_inferiority(
        M.indexed_metric("classification", "accuracy", golds, student, labels),
        M.indexed_metric("classification", "accuracy", golds, teacher, labels),
        len(golds),
        margin=0.1,
        samples=200,
        confidence=0.95,
        seed=3,
    )
    section = evaluated.results["teacher"]
    assert section["agreement"] == sum(a == b for a, b in zip(student, teacher, strict=True)) / len(
        golds
    )
    assert (section["difference"], section["lower"]) == (call.difference, call.lower)
    assert section["non_inferior"] == call.non_inferior
    assert section["labelling"]["kept"] == 16 and section["labelling"]["teacher"] == "smol"
    provenance = json.loads((evaluated.run_dir / "provenance.json").read_text())
    assert provenance["teacher"]["answers_file"] == labelled.card["answers_file"]
    markdown = write_report(evaluated.run_dir).markdown.read_text()
    keeps = "keeps" if call.non_inferior else "does not keep"
    assert (
        f"Taught by smol, the student {keeps} its quality: accuracy "
        f"{section['student_value']:.3f} vs {section['teacher_value']:.3f}, the one-sided 95% "
        f"lower bound of the difference {call.lower:+.3f}" in markdown
    )
    assert "## Student and teacher" in markdown
    assert f"| same answer as the teacher | {section['agreement']:.1%} of test items |" in markdown
    assert "| rows labelled | unlabelled rows: 16 asked, 16 kept (dropped: none) |" in markdown
    # The model card names the teacher its training labels came from.
    from finetune.deploy.card import write_run_cards

    (card,) = [p for p in write_run_cards(recipe, evaluated.run_dir) if p.parent.name == "adapter"]
    assert f"Taught by smol, the student {keeps} its quality" in card.read_text()
    # The same system evaluated on those reviews as its test items.
    tested = make(
        "tested-on-unseen",
        data={
            "source": None,
            "split_files": {
                "train": str(tmp_path / "reviews.jsonl"),
                "test": str(unseen_as_test(unseen, answers)),
            },
        },
        eval={"baselines": [engine], **quick},
    )
    on_unseen = train_and_evaluate(tested)
    for p in on_unseen.predictions:
        mine = p["predictions"]["smol"]
        assert mine["prediction"] == answers[p["id"]]["answer"], p["id"]
        assert mine["label_logprobs"] == answers[p["id"]]["label_logprobs"], p["id"]


def unseen_as_test(unseen, answers):
    """The unseen reviews as a test file (a test item needs a label: any will do here)."""
    out = unseen.with_name("unseen-test.jsonl")
    rows = [json.loads(line) for line in unseen.open()]
    out.write_text("".join(json.dumps({**r, "label": "fresh"}) + "\n" for r in rows))
    return out


def test_the_soft_target_losses_equal_a_hand_computation():
    import math

    import torch

    from finetune.train.loss import IGNORE, soft_cross_entropy, weighted_nll

    def log_softmax(row):
        top = max(row)
        total = math.log(sum(math.exp(x - top) for x in row)) + top
        return [x - total for x in row]

    logits = [[2.0, 0.0], [0.5, 1.5]]
    q = [[0.8, 0.2], [0.3, 0.7]]
    by_hand = (
        -sum(
            sum(qi * li for qi, li in zip(qs, log_softmax(row), strict=True))
            for qs, row in zip(q, logits, strict=True)
        )
        / 2
    )
    assert soft_cross_entropy(torch.tensor(logits), torch.tensor(q)).item() == pytest.approx(
        by_hand, rel=1e-6
    )
    # A decoder's rows, one per label, weighted by the teacher (0.75 and 0.25), two supervised
    # tokens each (the label's, the end of turn), one position not supervised.
    vocab = [[1.0, 0.0, -1.0], [0.2, 0.4, 0.1], [0.0, 2.0, 0.5]]
    logits = torch.tensor([[vocab[0], vocab[1], vocab[2]], [vocab[2], vocab[0], vocab[1]]])
    targets = torch.tensor([[0, 2, IGNORE], [1, 2, IGNORE]])
    weights = torch.tensor([[0.75, 0.75, 0.75], [0.25, 0.25, 0.25]])
    ce = [[-log_softmax(vocab[0])[0], -log_softmax(vocab[1])[2]]]
    ce += [[-log_softmax(vocab[2])[1], -log_softmax(vocab[0])[2]]]
    weighted = 0.75 * sum(ce[0]) + 0.25 * sum(ce[1])
    # Weighted tokens: 2 x 0.75 + 2 x 0.25 = 2 of the 4 supervised: the sum counts twice.
    assert weighted_nll(logits, targets, weights, None).item() == pytest.approx(
        weighted * 4 / 2 / 4, rel=1e-6
    )
    assert weighted_nll(logits, targets, None, None).item() == pytest.approx(
        (sum(ce[0]) + sum(ce[1])) / 4, rel=1e-6
    )
    assert weighted_nll(logits, targets, None, 8).item() == pytest.approx(
        (sum(ce[0]) + sum(ce[1])) / 8, rel=1e-6
    )


def test_soft_targets_give_a_decoder_a_row_per_label_weighted_by_the_teacher(api_teacher):
    from transformers import AutoTokenizer

    from finetune.tasks.prompts import prompt_format
    from finetune.train.dataset import encode_split
    from finetune.train.loss import TOKEN_WEIGHTS, WeightedCollator

    make, _ = api_teacher
    recipe = load_recipe(make({"targets": "soft", "temperature": 2.0}))
    teach(recipe)
    rows = load_split(recipe, "train")
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.base)
    fmt = prompt_format(tokenizer, recipe.task)
    data = encode_split(recipe, "train", fmt, tokenizer).dataset
    assert len(data) == 2 * len(rows)
    for i, row in enumerate(rows):
        scores = {label: _logprob(label, row["text"]) / 2.0 for label in ("fresh", "rotten")}
        expected = probabilities(scores)
        assert row["soft_targets"] == expected
        assert data[2 * i]["weight"] == pytest.approx(expected["fresh"])
        assert data[2 * i + 1]["weight"] == pytest.approx(expected["rotten"])
    # Each token of a row carries its row's weight, padded with 0, laid out as the labels are.
    examples = [{**data[i]} for i in range(2)]

    def inner(batch):
        width = max(len(e["input_ids"]) for e in batch)
        return {"labels": torch_zeros(len(batch), width)}

    batch = WeightedCollator(inner, padding_free=False)(examples)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch[TOKEN_WEIGHTS][i, :n].tolist() == pytest.approx([e["weight"]] * n)
        assert batch[TOKEN_WEIGHTS][i, n:].sum() == 0


def torch_zeros(*shape):
    import torch

    return torch.zeros(*shape, dtype=torch.long)


def test_a_decoder_student_trains_on_the_teachers_weights(api_teacher, monkeypatch):
    from conftest import train_from

    import finetune.train.loss as loss

    make, _ = api_teacher
    path = make({"targets": "soft"})
    teach(load_recipe(path))
    seen, plain = set(), loss.weighted_nll

    def recording(logits, targets, weights, num_items):
        if weights is not None:  # the weights of the supervised tokens, by row
            seen.update(round(w, 6) for w in weights.max(dim=1).values.tolist())
        return plain(logits, targets, weights, num_items)

    monkeypatch.setattr(loss, "weighted_nll", recording)
    run = train_from(path).run_dir
    rows = load_split(load_recipe(path), "train")
    taught = {round(p, 6) for r in rows for p in r["soft_targets"].values()}
    assert seen and seen <= taught
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["teacher"]["settings"]["targets"] == "soft"
    # A review trained as one row per label is still one training example.
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["train_examples"] == len(rows)


def test_a_classifier_student_trains_on_the_teachers_distribution(
    api_teacher, tmp_path, monkeypatch
):
    from conftest import train_from
    from test_encoder import build_tiny_bert

    from finetune.train.dataset import encode_text_split

    make, _ = api_teacher
    bert = build_tiny_bert(tmp_path / "bert")
    path = make({"targets": "soft"})
    text = path.read_text().replace(f"base: {load_recipe(path).model.base}", f"base: {bert}")
    path.write_text(text)
    recipe = load_recipe(path)
    teach(recipe)
    rows = load_split(recipe, "train")
    from transformers import AutoTokenizer

    data = encode_text_split(recipe, "train", AutoTokenizer.from_pretrained(bert)).dataset
    flat = [p for row in data["soft_labels"] for p in row]
    assert flat == pytest.approx(
        [p for r in rows for p in (r["soft_targets"]["fresh"], r["soft_targets"]["rotten"])]
    )
    import finetune.train.loss as loss

    calls, plain = [], loss.soft_cross_entropy
    monkeypatch.setattr(loss, "soft_cross_entropy", lambda a, b: calls.append(b) or plain(a, b))
    train_from(path)
    assert calls and all(c.shape[1] == 2 for c in calls)


def math_finite(x: float) -> bool:
    import math

    return math.isfinite(x)


def test_an_experiment_crosses_human_and_teacher_labels_with_sizes(
    tiny_recipe, monkeypatch, capsys, tmp_path
):
    """`labels` makes a human and a teacher curve; the report has both, each taught run's call
    against the teacher, the fewest teacher labels it keeps the teacher's quality from, and a
    recommendation that weighs labelling against serving at the recipe's request volume."""
    import yaml
    from conftest import run_cli

    from finetune.experiment import load_experiment
    from finetune.experiment.entries import entries
    from finetune.experiment.labelling import keeps_from, taught

    monkeypatch.setenv("TEST_ENDPOINT_KEY", "sk-test")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    fast = {
        "tfidf": {"enabled": False},
        "latency_items": 2,
        "bootstrap_samples": 100,
        "timing": {"rounds": 6, "throughput_items": 4},
    }
    recipe = tiny_recipe(eval=fast)
    with FakeServer(fake_api) as server:
        path = tmp_path / "exp.yaml"
        experiment = {
            "name": "exp",
            "recipe": recipe.name,
            "general": [endpoint_teacher(server.url)],
            "teacher": {"system": "api", "rows": "train", "margin": 0.6},
            "labels": {"human": [16], "teacher": [16, 48]},
            # Set in every cell, not an axis: the cells are not named by it.
            "set": {"eval.prices.per_human_label": 0.5, "eval.prices.requests": 1000},
        }
        path.write_text(yaml.safe_dump(experiment, sort_keys=False))
        code, output = run_cli(monkeypatch, capsys, "experiment", str(path))
        assert code == 0, output
    spec, cells = load_experiment(path)
    assert [c.label for c in cells] == [
        "data.max_train_examples=16, labels=human",
        "data.max_train_examples=16, labels=teacher api",
        "data.max_train_examples=48, labels=teacher api",
    ]
    text = (tmp_path / "runs" / "experiments" / "exp" / "report.md").read_text()
    _, found = entries(spec, cells)
    curves = taught(found)
    assert list(curves) == ["specialist (labels=teacher)"]
    assert {e.kind for e in found if e.kind.startswith("specialist")} == {
        "specialist (labels=human)",
        "specialist (labels=teacher)",
    }
    for cell in cells[1:]:
        t = json.loads((cell.run_dir() / "eval" / "results.json").read_text())["teacher"]
        n = cell.values["data.max_train_examples"]
        call = "keeps" if t["non_inferior"] else "does not keep"
        assert (
            f"| specialist (labels=teacher) | {n} | 3 | {t['student_value']:.3f} vs "
            f"{t['teacher_value']:.3f} | {t['difference']:+.3f} | {t['lower']:+.3f} (margin "
            f"-0.600) | {t['agreement']:.0%} | {call} |" in text
        )
    smallest = keeps_from(curves["specialist (labels=teacher)"])
    if smallest is None:
        assert "specialist (labels=teacher) does not keep api's accuracy" in text
    else:
        assert (
            f"specialist (labels=teacher) keeps api's accuracy (non-inferior within 0.6) from {smallest} teacher labels on."
            in text
        )
    # Human labels at $0.50 each; the teacher's at what its labelling cost (no token prices:
    # the machine's time).
    assert "| specialist (labels=human) @ 16 | " in text and "| $8.00 |" in text
    # The best (api, interval [1, 1]) is the only system within its interval; the runner-up
    # is the cheapest of the rest in all: a teacher's student (which of its two sizes, timing
    # decides: their serving costs differ by more than their labelling), never the $8 of
    # human labels.
    assert "## Recommendation\n\nDeploy api (accuracy 1.000). The runner-up, specialist " in text
    assert "The runner-up, specialist (labels=teacher) @ " in text
    assert "At that volume, api costs $" in text and " in all over 1,000 requests (" in text


def test_with_a_request_volume_the_cheapest_system_within_the_bests_interval_is_chosen():
    from finetune.experiment.entries import Entry
    from finetune.experiment.labelling import decide
    from finetune.recipe.schema import ConstraintsConfig
    from finetune.report.decision import Candidate

    def entry(name, value, low, labelling, per_1k):
        candidate = Candidate(name, value, usd_per_1k=per_1k, labelling_usd=labelling)
        metric = {"value": value, "low": low, "high": value + 0.05}
        return Entry(name, "k", 100, 0, metric, candidate, {}, labelling_usd=labelling)

    systems = [
        entry("taught", 0.90, 0.85, 100.0, 1.0),  # $100 to label, $1 per 1k to serve
        entry("general", 0.88, 0.83, 0.0, 10.0),  # within taught's interval, no labels
        entry("cheap", 0.80, 0.75, 0.0, 0.1),  # cheapest, but below the interval
    ]
    none = ConstraintsConfig()
    # 1,000,000 requests: taught $1,100 in all, general $10,000.
    assert decide(systems, none, 1_000_000).best.name == "taught"
    # 1,000 requests: taught $101, general $10: labelling no longer pays for itself.
    few = decide(systems, none, 1_000)
    assert (few.best.name, few.runner_up.name) == ("general", "taught")
    assert few.describe("accuracy").startswith(
        "Deploy general (accuracy 0.880). The runner-up, taught, scores 0.020 more accuracy;"
    )
    assert decide(systems, none, None).best.name == "taught"  # by quality alone


def test_an_experiments_labels_axis_is_checked(tiny_recipe, tmp_path):
    import yaml

    from finetune.experiment import load_experiment
    from finetune.recipe import RecipeError

    recipe = tiny_recipe()
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "exp",
                "recipe": recipe.name,
                "axes": {"data.max_train_examples": [8]},
                "labels": {"teacher": [16]},
            }
        )
    )
    with pytest.raises(RecipeError) as info:
        load_experiment(path)
    assert [f"{p.key}: {p.message}" for p in info.value.problems] == [
        "axes.data.max_train_examples: labels sets it in every cell; remove it from the axes",
        "teacher: labels.teacher has sizes, but no teacher is named; add one",
    ]


def test_the_shipped_api_teacher_stops_before_any_request_when_its_key_is_unset(
    monkeypatch, capsys, tmp_path
):
    from conftest import REPO

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    recipe = REPO / "recipes" / "rt-sentiment-gpt4o-mini-teacher.yaml"
    prepared = f"data.prepared_dir={tmp_path / 'data'}"
    code, output = run_cli(monkeypatch, capsys, "teach", str(recipe), prepared)
    assert code == 2
    assert (
        "eval.baselines.2.endpoint.api_key_env: the environment variable OPENAI_API_KEY that "
        "should hold the key for https://api.openai.com/v1 is not set" in output
    )
    assert not list((tmp_path / "data").glob("*/teacher/*.jsonl"))
    spec = load_recipe(recipe)
    assert spec.data.teacher.system == "gpt-4o-mini zero-shot"
    assert spec.eval.baselines[2].endpoint.max_usd == 1.0
    assert spec.eval.prices.per_million_input_tokens["gpt-4o-mini zero-shot"] == 0.15


def test_an_unparsable_generated_answer_is_marked_invalid_and_not_taught(tiny_recipe):
    from finetune.tasks.types import task_type

    extraction = {"type": "extraction", "labels": [], "instruction": "Entities?"}
    recipe = load_recipe(
        tiny_recipe(
            task=extraction,
            data={"teacher": {"system": "x", "rows": "train"}},
            eval={"baselines": [{"name": "x", "model": "base"}], "metrics": ["micro_f1"]},
        )
    )
    kind = task_type(recipe.task)
    assert kind.read("Sure! Here they are.", []) == (
        [],
        {"raw": "Sure! Here they are.", "invalid": True},
    )
    assert kind.read("[]", []) == ([], {"raw": "[]"})  # no entities is an answer
    rows = [{"id": f"r{i}", "text": f"Ann met Bob {i}"} for i in range(3)]
    ann = [{"text": "Ann", "type": "PER"}]
    answers = {
        "r0": {"answer": ann, "confidence": None},
        "r1": {"answer": [], "confidence": None, "invalid": True},
        "r2": {"answer": [], "confidence": None},
    }
    answers = {
        i: {"id": i, "text_sha": text_digest(f"Ann met Bob {i[1:]}"), **a}
        for i, a in answers.items()
    }
    chosen = select(recipe, rows, answers)
    assert [(r["id"], r["entities"]) for r in chosen.kept] == [("r0", ann), ("r2", [])]
    assert chosen.dropped == collections.Counter({INVALID: 1})
