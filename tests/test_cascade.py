"""Cascades and calibration, on hand-made answers: every figure equals a count by hand, and the
threshold is chosen on validation items alone."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import yaml
from conftest import evaluated_run
from test_endpoint import FAILING, KEY, FakeServer, _sentiment, fake_api
from test_serve import call, wait_until_up

from finetune.data import load_split
from finetune.errors import FinetuneError
from finetune.evaluate import cascade as C
from finetune.evaluate.calibration import (
    fit_temperature,
    label_scores,
    nll,
    probabilities,
    reliability,
)
from finetune.evaluate.cascade_results import add_cascades, check_first_scores
from finetune.evaluate.machine_load import LoadSample
from finetune.evaluate.results import Outcome
from finetune.evaluate.timing import Measurement, Record, Rounds
from finetune.recipe import Recipe, RecipeError, load_recipe
from finetune.recipe.schema import CascadeConfig
from finetune.report import write_report
from finetune.systems.base import System

LABELS = ["a", "b"]
LABELS_TINY = ["fresh", "rotten"]
QUIET = LoadSample(1.0, 0.0, 0.0, 0.0)


def _logprobs(confidences: list[float], preds: list[str]) -> list[dict]:
    """Label scores whose normalized top probability is each confidence, on each prediction."""
    out = []
    for c, p in zip(confidences, preds, strict=True):
        other = "b" if p == "a" else "a"
        out.append({"label_logprobs": {p: math.log(c), other: math.log(1 - c)}})
    return out


def _outcome(name: str, role: str, preds: list[str], details: list[dict], peak=100) -> Outcome:
    return Outcome(
        system=System(name, role, "m"),
        description=name,
        serving="as loaded",
        prompt_style="chat",
        predictions=list(preds),
        details=details,
        truncated=[False] * len(preds),
        seconds=1.0,
        peak_memory=peak,
        weights_bytes=10,
        parameters={"total": 5, "trainable": 1 if role == "specialist" else 0},
        disk_bytes={"model": 10},
        input_tokens=20.0,
        output_tokens=1.0,
    )


def _rounds(latencies: dict[str, list[float]], throughput: dict[str, float]) -> Rounds:
    """Two timing rounds of one evaluation, each system with the same latencies in both."""
    rounds = Rounds(requested=2, evaluation="e1")
    for number in (1, 2):
        rounds.orders.append(list(latencies))
        for name, lat in latencies.items():
            m = Measurement(lat, 8 / throughput[name], 8)
            rounds.records.append(Record(number, 1, name, m, QUIET))
    return rounds


def _recipe(**cascade) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "hand",
            "task": {"type": "classification", "labels": LABELS},
            "data": {"source": "x.jsonl"},
            "model": {"base": "tiny"},
            "eval": {
                "baselines": [{"name": "big", "model": "base"}],
                "tfidf": {"enabled": False},
                "bootstrap_samples": 200,
                "prices": {"machine_per_hour": 3.6},
                "cascades": [{"name": "casc", "fallback": "big", **cascade}],
            },
        }
    )


# Validation: 10 items in ascending order of the specialist's confidence.
VAL_CONF = [0.55, 0.58, 0.6, 0.62, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99]
VAL_GOLD = ["a"] * 10
# Right (a) or wrong (b): the specialist 6 of 10, the big model 8 of 10.
VAL_FIRST = list("bbabaaaaab")
VAL_BIG = list("babaaaaaaa")
# Test: 8 items.
TEST_CONF = [0.95, 0.6, 0.9, 0.56, 0.99, 0.7, 0.85, 0.65]
TEST_GOLD = list("abababab")
TEST_FIRST = list("aaabbbab")
TEST_BIG = list("abababaa")


def _evaluate(recipe: Recipe, test_first=TEST_FIRST, test_conf=TEST_CONF, test_big=TEST_BIG):
    """`add_cascades` on the hand-made answers; returns the document and the routing."""
    first = _outcome("specialist", "specialist", test_first, _logprobs(test_conf, test_first))
    big = _outcome("big", "baseline", test_big, [{}] * 8, peak=300)
    outcomes = [first, big]
    validation = {
        "specialist": _outcome(
            "specialist", "specialist", VAL_FIRST, _logprobs(VAL_CONF, VAL_FIRST)
        ),
        "big": _outcome("big", "baseline", VAL_BIG, [{}] * 10),
    }
    rounds = _rounds(
        {"specialist": [10.0, 20.0], "big": [100.0, 300.0]}, {"specialist": 40.0, "big": 4.0}
    )
    costs = {"specialist": 3.6 * 1000 / 40 / 3600, "big": 3.6 * 1000 / 4 / 3600}
    document = {
        "systems": [{"name": n, "cost_per_1k": {"usd": c}} for n, c in costs.items()],
        "comparisons": [],
    }
    routed = add_cascades(recipe, document, outcomes, validation, TEST_GOLD, VAL_GOLD, rounds)
    return document, routed


def test_cascade_answers_and_figures_equal_a_count_by_hand():
    document, (routed,) = _evaluate(_recipe(pick="fixed", threshold=0.8, calibrate=False))
    casc = document["systems"][-1]
    # Confidence below 0.8: test items 1, 3, 5, 7 go to the big model.
    assert routed.sent.tolist() == [False, True, False, True, False, True, False, True]
    expected = ["a", "b", "a", "b", "b", "b", "a", "a"]
    assert routed.predictions == expected
    assert casc["metrics"]["accuracy"]["value"] == pytest.approx(6 / 8)
    info = casc["cascade"]
    assert info["test"]["escalated"] == 0.5 and info["test"]["escalated_items"] == 4
    # The specialist alone is right on 0, 2, 3, 5, 6, 7; the cascade on 0, 1, 2, 3, 5, 6.
    versus = {v["system"]: v for v in info["versus"]}
    assert versus["specialist"]["other"] == pytest.approx(6 / 8)
    assert versus["specialist"]["mcnemar"]["cascade_only"] == 1  # item 1
    assert versus["specialist"]["mcnemar"]["other_only"] == 1  # item 7
    # The big model is right on all but 7: it alone gets item 4 right.
    assert versus["big"]["other"] == pytest.approx(7 / 8)
    assert (
        versus["big"]["mcnemar"]["other_only"] == 1
        and versus["big"]["mcnemar"]["cascade_only"] == 0
    )
    # Cost: every item pays the specialist, half of them the big model too.
    usd = 3.6 * 1000 / 40 / 3600 + 0.5 * 3.6 * 1000 / 4 / 3600
    assert casc["cost_per_1k"]["usd"] == pytest.approx(usd)
    # Memory: both stay loaded.
    assert casc["peak_memory_bytes"] == 400
    assert document["comparisons"][0]["baseline"] == "casc"
    assert [r["escalated"] for r in routed.items] == routed.sent.tolist()


def test_the_latency_mixture_equals_an_expanded_sample():
    """Share 1/4 of 2 x 2 latencies: the mixture is 16 equally likely values, each first
    latency 6 times and each sum once."""
    a, b = [10.0, 20.0], [100.0, 300.0]
    values, weights = C.mixed_latencies(a, b, 0.25)
    expanded = [x for x in a for _ in range(6)] + [x + y for x in a for y in b]
    for q in (0.5, 0.95):
        expected = float(np.quantile(expanded, q, method="inverted_cdf"))
        if q == 0.5:
            expected = float(np.median(expanded))
        assert C.weighted_quantile(values, weights, q) == pytest.approx(expected)
    # No escalation: the first system's own median.
    values, weights = C.mixed_latencies([10.0, 30.0, 20.0, 40.0], b, 0.0)
    assert C.weighted_quantile(values, weights, 0.5) == 25.0


def test_the_cascades_timing_is_the_mixture_round_by_round():
    document, _ = _evaluate(_recipe(pick="fixed", threshold=0.8, calibrate=False))
    casc = document["systems"][-1]
    values, weights = C.mixed_latencies([10.0, 20.0], [100.0, 300.0], 0.5)
    assert casc["latency_ms"]["p50"] == pytest.approx(C.weighted_quantile(values, weights, 0.5))
    assert casc["throughput_items_per_s"] == pytest.approx(1 / (1 / 40 + 0.5 / 4))


def test_a_maximum_escalation_share_escalates_exactly_that_share_of_validation_items():
    for share, k in ((0.3, 3), (0.0, 0), (1.0, 10), (0.25, 2)):
        document, _ = _evaluate(_recipe(pick="max_escalated", max_escalated=share, calibrate=False))
        info = document["systems"][-1]["cascade"]
        assert info["validation"]["escalated"] == pytest.approx(k / 10)
        conf = np.array(VAL_CONF)
        assert int((conf < info["threshold"]).sum()) == k


def test_non_inferiority_picks_the_cheapest_qualifying_threshold():
    """Escalating the k least confident validation items gives accuracy 0.6, 0.6, 0.7, 0.6,
    then 0.7 up to k = 9 and 0.8 at k = 10; the big model alone scores 0.8. With a
    margin of 0.1 the first k reaching 0.7 is 2; with none, only escalating all qualifies."""
    conf = np.array(VAL_CONF)
    metric = lambda preds: float(np.mean([p == g for p, g in zip(preds, VAL_GOLD, strict=True)]))  # noqa: E731
    by_k = [metric(C.combine(VAL_FIRST, VAL_BIG, np.arange(10) < k)) for k in range(11)]
    assert by_k == pytest.approx([0.6, 0.6, 0.7, 0.6, *[0.7] * 6, 0.8])
    config = CascadeConfig(name="c", fallback="big", margin=0.1)
    threshold = C.pick_threshold(config, conf, VAL_FIRST, VAL_BIG, metric)
    assert threshold == VAL_CONF[2] and int((conf < threshold).sum()) == 2
    config = CascadeConfig(name="c", fallback="big")
    assert int((conf < C.pick_threshold(config, conf, VAL_FIRST, VAL_BIG, metric)).sum()) == 10


def test_no_test_item_moves_the_threshold():
    recipe = _recipe(margin=0.1)  # non-inferior, calibrated
    first, _ = _evaluate(recipe)
    flipped = ["b" if p == "a" else "a" for p in TEST_FIRST]
    second, _ = _evaluate(recipe, flipped, [1 - c / 2 for c in TEST_CONF], TEST_GOLD)
    a, b = first["systems"][-1]["cascade"], second["systems"][-1]["cascade"]
    assert a["threshold"] == b["threshold"] and a["temperature"] == b["temperature"]
    assert a["validation"] == b["validation"]
    assert a["test"] != b["test"]  # the test figures did change


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_system():
    """Scores that claim 99% on items right 70% of the time: the fitted temperature softens
    them, lowering the NLL on held-out items too, and never changes the winning label."""
    rng = np.random.default_rng(0)
    n = 600
    right = rng.random(n) < 0.7
    pred = rng.integers(0, 2, n)
    gold = np.where(right, pred, 1 - pred)
    scores = np.full((n, 2), math.log(0.01))
    scores[np.arange(n), pred] = math.log(0.99)
    fit, held = slice(0, 300), slice(300, n)
    t = fit_temperature(scores[fit], gold[fit])
    assert t > 1.5
    assert nll(scores[held], gold[held], t) < nll(scores[held], gold[held]) - 0.5
    # The likeliest single probability for the predicted label is the share of items it is right.
    p_fit = probabilities(scores[fit], t)[np.arange(300), pred[fit]]
    assert p_fit.mean() == pytest.approx(right[fit].mean(), abs=0.005)
    assert (probabilities(scores, t).argmax(axis=1) == pred).all()


def test_expected_calibration_error_equals_a_count_by_hand():
    conf = np.array([0.95, 0.95, 0.65, 0.65, 0.65])
    right = np.array([True, False, True, True, False])
    found = reliability(conf, right)
    # Bin [0.9, 1]: 0.95 vs 1/2, 2 of 5 items; bin [0.6, 0.7): 0.65 vs 2/3, 3 of 5.
    assert found["ece"] == pytest.approx(2 / 5 * 0.45 + 3 / 5 * abs(2 / 3 - 0.65))
    assert [(b["low"], b["items"]) for b in found["bins"]] == [
        (pytest.approx(0.6), 3),
        (pytest.approx(0.9), 2),
    ]


def test_a_failed_item_has_no_confidence_and_is_escalated():
    scores = label_scores(
        [{"label_logprobs": {"a": -0.1, "b": -3.0}}, {"failed": "timeout"}], LABELS
    )
    conf = C.confidence("margin", scores, 1.0)
    assert conf[1] == 0.0 and C.escalated(conf, 0.1).tolist() == [False, True]
    assert conf[0] == pytest.approx(1 / (1 + math.exp(-2.9)) - 1 / (1 + math.exp(2.9)))


def test_a_first_system_without_label_scores_is_refused_naming_the_key():
    recipe = _recipe(first="big", fallback="specialist", pick="fixed", threshold=0.5)
    with pytest.raises(Exception, match=r"eval.cascades.0.first: 'big' stores no label scores"):
        _evaluate(recipe)
    # The evaluator asks as soon as the validation answers are in, before timing anything.
    validation = {"big": _outcome("big", "baseline", VAL_BIG, [{}] * 10)}
    with pytest.raises(FinetuneError, match=r"eval.cascades.0.first: 'big' stores no label"):
        check_first_scores(recipe, validation)


@pytest.mark.parametrize(
    ("cascade", "key", "message"),
    [
        ({"fallback": "bigg"}, "eval.cascades.0.fallback", "Did you mean 'big'?"),
        ({"fallback": "big", "pick": "fixed"}, "eval.cascades.0.threshold", "(set threshold)"),
        ({"fallback": "big", "threshold": 0.7}, "eval.cascades.0.threshold", "(remove threshold)"),
        ({"fallback": "specialist"}, "eval.cascades.0.fallback", "is the first system"),
        ({"fallback": "big", "name": "big"}, "eval.cascades.0.name", "already a system's name"),
        ({"fallback": "big", "treshold": 0.5}, "eval.cascades.0.treshold", "threshold"),
    ],
)
def test_cascade_settings_are_checked_with_the_key_to_fix(tmp_path, cascade, key, message):
    recipe = {
        "name": "hand",
        "task": {"type": "classification", "labels": LABELS},
        "data": {"source": "rotten-tomatoes"},
        "model": {"base": "smollm2-135m-instruct"},
        "eval": {
            "baselines": [{"name": "big", "model": "base"}],
            "cascades": [{"name": "casc", **cascade}],
        },
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    found = [p for p in error.value.problems if p.key == key]
    assert found and message in found[0].message, error.value.problems


def test_an_evaluated_cascade_traces_to_stored_answers_and_reaches_the_report(
    tiny_recipe, tiny_run_copy
):
    """On a real evaluation: each test item's cascade answer is the specialist's, or the
    fallback's when its stored label scores (at the fitted temperature) fall below the stored
    threshold; the report shows the cascade's row, curve and sentence."""
    path = tiny_recipe(
        eval={
            "baselines": [{"name": "base zero-shot", "model": "base"}],
            "bootstrap_samples": 200,
            "cascades": [
                {
                    "name": "casc",
                    "fallback": "base zero-shot",
                    "pick": "max_escalated",
                    "max_escalated": 0.5,
                }
            ],
        }
    )
    found = evaluated_run(path, tiny_run_copy)
    casc = next(s for s in found.results["systems"] if s["name"] == "casc")
    info = casc["cascade"]
    validation = load_split(found.recipe, "validation")
    assert info["validation"]["items"] == len(validation)
    assert info["validation"]["escalated"] <= 0.5
    right = []
    for row in found.predictions:
        first, fallback = row["predictions"]["specialist"], row["predictions"]["base zero-shot"]
        scores = label_scores([first], LABELS_TINY)
        conf = float(probabilities(scores, info["temperature"]).max())
        sent = conf < info["threshold"]
        answer = row["predictions"]["casc"]
        assert answer["escalated"] == sent
        assert answer["prediction"] == (fallback if sent else first)["prediction"]
        right.append(answer["prediction"] == row["gold"])
    assert casc["metrics"]["accuracy"]["value"] == pytest.approx(np.mean(right))
    assert info["test"]["escalated"] == pytest.approx(
        np.mean([r["predictions"]["casc"]["escalated"] for r in found.predictions])
    )
    paths = write_report(found.run_dir)
    text = paths.markdown.read_text()
    assert "## Cascades" in text and "| casc |" in text
    assert "Cascade casc: the specialist answers and escalates" in text
    assert (found.run_dir / "report" / "cascade_0.png").is_file()
    assert (found.run_dir / "report" / "reliability.png").is_file()


def test_the_served_fallback_answers_the_texts_below_the_threshold(
    tiny_recipe, tiny_run_copy, monkeypatch, tmp_path
):
    """`serve RUN --fallback api` on a real server on 127.0.0.1, the fallback a fake
    OpenAI-compatible endpoint: a text whose specialist confidence is below the evaluated
    threshold is answered by the endpoint (and says so), every other by the specialist; a
    fallback request that fails leaves the specialist's answer, with the reason."""
    import uvicorn

    from finetune.deploy.api import build_app
    from finetune.deploy.llama_server import free_port
    from finetune.deploy.serve import served_runs

    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TEST_ENDPOINT_KEY", KEY)
    with FakeServer(fake_api) as api:
        endpoint = {"base_url": api.url, "model": "m", "api_key_env": "TEST_ENDPOINT_KEY"}
        path = tiny_recipe(
            eval={
                "baselines": [
                    {
                        "name": "api",
                        "endpoint": {**endpoint, "scoring": "generate", "max_retries": 0},
                    }
                ],
                "bootstrap_samples": 100,
                "cascades": [
                    {
                        "name": "casc",
                        "fallback": "api",
                        "pick": "max_escalated",
                        "max_escalated": 0.5,
                    }
                ],
            }
        )
        found = evaluated_run(path, tiny_run_copy)
        info = next(s for s in found.results["systems"] if s["name"] == "casc")["cascade"]
        texts = [f"a film {w} and {v}" for w in ("good", "dull", "fine") for v in ("fun", "slow")]
        monkeypatch.setitem(FAILING, "text", texts[0])
        with served_runs([found.run_dir], fallback="api", max_batch=8) as served:
            (name, one), port = next(iter(served.items())), free_port()
            own = one.run([{"id": str(i), "text": t} for i, t in enumerate(texts)]).rows
            server = uvicorn.Server(
                uvicorn.Config(build_app(served), port=port, log_level="warning")
            )
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until_up(url)
                before = api.count
                status, body, _ = call(f"{url}/v1/predict", {"model": name, "input": texts})
                _, health, _ = call(f"{url}/health")
            finally:
                server.should_exit = True
                thread.join(10)
    assert status == 200, body
    scores = label_scores(own, LABELS_TINY)
    conf = probabilities(scores, info["temperature"]).max(axis=1)
    sent = conf < info["threshold"]
    assert 0 < sent.sum() < len(texts), conf  # both kinds of answer are exercised
    for row, mine, c, s, text in zip(body["data"], own, conf, sent, texts, strict=True):
        assert row["escalated"] == bool(s) and row["confidence"] == pytest.approx(c, abs=1e-6)
        if s and text != FAILING["text"]:
            assert row["answered_by"] == "api" and row["label"] == _sentiment(text)
        else:
            assert row["answered_by"] == "specialist" and row["label"] == mine["label"]
        if s and text == FAILING["text"]:
            assert row["fallback_error"].startswith("api: ")
    assert api.count - before == sent.sum()  # only the escalated texts reached the endpoint
    assert health["models"][name]["escalated"] == sent.sum()
