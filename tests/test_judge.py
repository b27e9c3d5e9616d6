"""The judge (`eval.judge`): games in both orders, outcomes and their statistics against a hand
computation, unparsable verdicts counted, replies kept so that nothing is asked twice, the
sanity check, the recipe checks, and a whole evaluation and report with a real llama.cpp judge.

Endpoint judges talk to the fake OpenAI-compatible server of `test_endpoint` on 127.0.0.1,
answering by a known rule; the engine judge is a real llama.cpp running SmolLM2-135M's GGUF.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import tiny_recipe_factory
from test_endpoint import FakeServer, chat

from finetune.judge import judge_answers, judgments_path, parse_verdict
from finetune.judge.sanity import corrupted
from finetune.recipe import load_recipe
from finetune.report.results import quality_comparisons

SAMPLES = 300


def references() -> list[str]:
    """Eight reference answers; the even ones two sentences long."""
    return [f"Answer number {i}." + (" It is so." if i % 2 == 0 else "") for i in range(8)]


def items() -> list[dict]:
    return [
        {"id": f"q{i}", "text": f"What is {i}?", "answer": r} for i, r in enumerate(references())
    ]


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def rule_judge(always: str | None = None, truth: dict[str, str] | None = None):
    """A judge that knows each question's reference (`truth`, by default `items()`'): it
    prefers the answer equal to it, replies without a verdict when an answer says GARBLE, and
    otherwise picks A (position bias). With `always`, it always gives that verdict."""
    truth = truth or {item["text"]: item["answer"] for item in items()}

    def answer(body, n):
        prompt = body["messages"][-1]["content"]
        if prompt == "ping":
            return 200, {}, chat("ok")
        if always:
            return 200, {}, chat(f"[[{always}]] always")
        question = _between(prompt, "[Question]\n", "\n\n[")
        a = _between(prompt, "[Assistant A's answer]\n", "\n\n[Assistant B's answer]")
        b = _between(prompt, "[Assistant B's answer]\n", "\n\nReply with")
        if "GARBLE" in a + b:
            return 200, {}, chat("I cannot decide.")
        good = truth[question]
        verdict = "B" if b == good and a != good else "A"
        return 200, {}, chat(f"[[{verdict}]] because", completion_tokens=4)

    return answer


def judged_requests(server) -> int:
    """Requests that asked for a verdict (not the fail-fast ping)."""
    return server.count - server.pings


@pytest.fixture
def qa_recipe(tmp_path, tiny_model_dir, monkeypatch):
    """A factory of QA recipes whose judge is an endpoint at `url` (an engine with `engine`)."""
    monkeypatch.setenv("TEST_ENDPOINT_KEY", "sk-test")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "qa.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": f"x{i}", "question": f"what is {i}?", "answer": f"number {i}"}) + "\n"
            for i in range(30)
        )
    )
    make = tiny_recipe_factory(tmp_path, tiny_model_dir)

    def recipe(judge_system: dict, name: str = "qa", **judge):
        return make(
            name,
            task={"type": "qa", "instruction": "Answer.", "labels": []},
            data={"source": str(source), "fields": {"text": "question"}},
            train={"max_steps": 2, "eval_every": 2, "save_every": 2},
            eval={
                "max_new_tokens": 4,
                "bootstrap_samples": SAMPLES,
                "baselines": [{"name": "base zero-shot", "model": "base"}],
                "judge": {"system": judge_system, **judge},
            },
        )

    return recipe


def endpoint_judge(url: str) -> dict:
    return {
        "name": "rule judge",
        "endpoint": {
            "base_url": url,
            "model": "m",
            "api_key_env": "TEST_ENDPOINT_KEY",
            "max_retries": 0,
            "timeout_seconds": 5,
            "concurrency": 2,
        },
    }


class CountingServer(FakeServer):
    """A fake server that also counts the fail-fast pings apart."""

    def __init__(self, answer) -> None:
        self.pings = 0

        def counted(body, n):
            if body["messages"][-1]["content"] == "ping":
                self.pings += 1
            return answer(body, n)

        super().__init__(counted)


def hand_answers() -> dict[str, list[str]]:
    """The specialist wins q0-q2, loses q3, ties q4, q6 and q7 (the orders disagree), and
    q5 is unjudged (no verdict)."""
    ref = references()
    specialist = [ref[0], ref[1], ref[2], "wrong", "x y", "GARBLE", ref[6], "other"]
    baseline = ["wrong", "nope", "wrong two words", ref[3], "z", ref[5], ref[6], "other answer"]
    return {"specialist": specialist, "base zero-shot": baseline}


def test_outcomes_and_statistics_equal_a_hand_computation(qa_recipe, tmp_path):
    with CountingServer(rule_judge()) as server:
        recipe = load_recipe(qa_recipe(endpoint_judge(server.url)))
        section, rows = judge_answers(recipe, tmp_path, items(), hand_answers())
    (pair,) = section["pairs"]
    assert [r["outcome"] for r in rows] == [
        "win", "win", "win", "loss", "tie", "unparsable", "tie", "tie",
    ]  # fmt: skip
    assert (pair["wins"], pair["ties"], pair["losses"], pair["unparsable"]) == (3, 3, 1, 1)
    assert pair["judged"] == 7 and pair["items"] == 8
    assert pair["win_rate"] == pytest.approx((3 + 3 / 2) / 7)
    # The interval: the percentile bootstrap over the judged items, drawn as numpy draws it.
    scores = np.array([1, 1, 1, 0, 0.5, 0.5, 0.5])
    draws = np.random.default_rng(recipe.seed).integers(0, 7, size=(SAMPLES, 7))
    low, high = np.quantile(scores[draws].mean(axis=1), [0.025, 0.975])
    assert (pair["low"], pair["high"]) == pytest.approx((low, high))
    # Sign test on 3 wins and 1 loss: 2 P[X <= 1], X ~ Binomial(4, 1/2).
    assert pair["sign_test_p"] == pytest.approx(2 * (math.comb(4, 0) + math.comb(4, 1)) / 16)
    # Both verdicts parsed on 7 items; the same from both sides on the 4 decisive ones.
    assert pair["both_parsed"] == 7 and pair["inconsistent"] == 3
    assert pair["consistency"] == pytest.approx(4 / 7)
    # Decisive verdicts: each win and the loss give one A and one B; each tie two A's.
    assert pair["first_position"] == pytest.approx(10 / 14)
    length = pair["length"]
    assert length["first_words"] == pytest.approx(np.mean([6, 3, 6, 1, 2, 1, 6, 1]))
    assert length["second_words"] == pytest.approx(np.mean([1, 1, 3, 3, 1, 3, 6, 2]))
    # Four decisive items, their answers of different lengths: q0-q2 won by the specialist's
    # longer answer, q3 by the baseline's longer one.
    assert length["decisive_with_length_difference"] == 4 and length["longer_won"] == 1.0
    assert section["consistency"] == pytest.approx(4 / 7)
    # q6's two orders are one prompt (both answers are the reference): asked once.
    assert section["games"] == 16 - 1 + 16 + 8
    assert judged_requests(server) == section["games"]


def test_unparsable_and_conflicting_verdicts_are_counted_never_guessed():
    assert parse_verdict("[[A]] A is right") == "A"
    assert parse_verdict("Verdict: [[C]]; again [[C]]") == "C"
    assert parse_verdict("[[A]] or maybe [[B]]") is None
    assert parse_verdict("A is better") is None
    assert parse_verdict("[A]") is None
    assert parse_verdict(None) is None


def test_a_second_judging_asks_nothing_even_without_the_endpoints_cache(qa_recipe, tmp_path):
    with CountingServer(rule_judge()) as server:
        recipe = load_recipe(qa_recipe(endpoint_judge(server.url)))
        first, _ = judge_answers(recipe, tmp_path, items(), hand_answers())
        asked = judged_requests(server)
        for cached in (tmp_path / "cache").glob("*.sqlite*"):
            cached.unlink()  # the endpoint's own response cache: not what keeps verdicts
        second, _ = judge_answers(recipe, tmp_path, items(), hand_answers())
        assert judged_requests(server) == asked
        # A changed answer is a new game: only its two prompts are asked.
        changed = hand_answers()
        changed["specialist"][4] = "x y z"
        judge_answers(recipe, tmp_path, items(), changed)
        assert judged_requests(server) == asked + 2
    assert second["pairs"] == first["pairs"] and second["sanity"] == first["sanity"]
    kept = judgments_path(recipe).read_text().splitlines()
    assert len(kept) == asked + 2


def test_the_sanity_check_fails_a_judge_that_always_answers_a(qa_recipe, tmp_path):
    with CountingServer(rule_judge(always="A")) as server:
        recipe = load_recipe(qa_recipe(endpoint_judge(server.url)))
        section, _ = judge_answers(recipe, tmp_path, items(), hand_answers())
    sanity = section["sanity"]
    # Eight other-reference pairs and four first-sentence ones (the even references).
    assert sanity["pairs"] == 12 and sanity["preferred"] == 0
    assert sanity["rate"] == 0.0 and not sanity["passed"]
    assert section["pairs"][0]["consistency"] == 0.0
    assert section["pairs"][0]["first_position"] == 1.0


def test_the_sanity_check_passes_a_judge_that_follows_the_reference(qa_recipe, tmp_path):
    with CountingServer(rule_judge()) as server:
        recipe = load_recipe(qa_recipe(endpoint_judge(server.url)))
        section, _ = judge_answers(recipe, tmp_path, items(), hand_answers())
    sanity = section["sanity"]
    assert sanity["pairs"] == 12 and sanity["preferred"] == 12 and sanity["passed"]
    assert sanity["by_corruption"]["first_sentence"]["pairs"] == 4
    assert sanity["threshold"] == 0.9


def test_corruptions_take_another_items_reference_or_the_first_sentence():
    refs = references()
    other = corrupted("other_reference", refs, seed=3)
    assert sorted(other) == sorted(refs) and all(o != r for o, r in zip(other, refs, strict=True))
    first = corrupted("first_sentence", refs, seed=3)
    assert first[0] == "Answer number 0." and first[1] is None


def test_the_verdict_rests_on_the_judges_win_rate_where_it_judged():
    comparison = {"baseline": "b", "metric": "token_f1", "difference": 0.01, "low": -0.02}
    comparison |= {"high": 0.04, "significant": False, "specialist": 0.3, "baseline_value": 0.29}
    pair = {"baseline": "b", "win_rate": 0.7, "low": 0.6, "high": 0.8}
    (c,) = quality_comparisons({"comparisons": [comparison], "judge": {"pairs": [pair]}})
    assert c["metric"] == "judge_win_rate" and c["significant"]
    assert (c["difference"], c["low"], c["high"]) == pytest.approx((0.4, 0.2, 0.6))
    (plain,) = quality_comparisons({"comparisons": [comparison]})
    assert plain == comparison


def test_a_judge_is_checked(problems_with):
    problems = problems_with(("eval.judge", {"system": {"name": "j", "model": "base", "shots": 2}}))
    assert any("qa gives" in p for p in problems)


def test_a_qa_judges_settings_are_checked(qa_recipe, tmp_path):
    from conftest import recipe_problems

    path = qa_recipe(
        {"name": "j", "model": "base", "shots": 2},
        against=["bse zero-shot"],
        prompt="{question} {answer_a} {answer_b} {refrence}",
    )
    found = {p.key: p.message for p in recipe_problems(path)}
    assert "Did you mean 'base zero-shot'?" in found["eval.judge.against.0"]
    assert found["eval.judge.prompt"].startswith("unknown placeholder(s) ['refrence']")
    assert found["eval.judge.system.shots"] == "a judge is shown no examples; remove shots"


def test_an_evaluation_with_a_llama_cpp_judge_reports_it_and_asks_nothing_twice(
    qa_recipe, gguf, tmp_path
):
    """A real llama.cpp (SmolLM2-135M's GGUF) judges a tiny QA specialist against its base:
    the results, `judgments.jsonl` and the report agree, and a second evaluation adds no
    reply to the judge's file."""
    from conftest import train_and_evaluate

    from finetune.evaluate import evaluate
    from finetune.report import write_report
    from finetune.report.judge import consistency_text, sanity_text

    engine = {"name": "smol judge", "engine": {"model": str(gguf), "context": 1024}}
    done = train_and_evaluate(qa_recipe(engine, max_new_tokens=8))
    section = done.results["judge"]
    rows = [json.loads(line) for line in (done.run_dir / "eval/judgments.jsonl").open()]
    (pair,) = section["pairs"]
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("win", "tie", "loss")}
    assert (pair["wins"], pair["ties"], pair["losses"]) == tuple(counts.values())
    assert pair["items"] == len(rows) == done.results["test_items"]
    for row in rows:  # each outcome is its two replies read by the rule
        from finetune.judge.games import outcome

        expected = outcome(
            parse_verdict(row["specialist_first"]), parse_verdict(row["baseline_first"])
        )
        assert row["outcome"] == expected
    kept = judgments_path(done.recipe).read_text()
    assert len(kept.splitlines()) == section["games"]
    evaluate(done.recipe, done.run_dir)
    assert judgments_path(done.recipe).read_text() == kept
    paths = write_report(done.run_dir)
    report = paths.markdown.read_text()
    assert "## Judge" in report and "Quality is judged by smol judge" in report
    assert re.search(r"sanity check: .* in \d+ of \d+ pairs", report)
    # SmolLM2-135M rarely writes a verdict: whatever it did is what the report says.
    assert consistency_text(section) in report and sanity_text(section) in report
    unjudged = sum(r["outcome"] == "unparsable" for r in rows)
    assert pair["unparsable"] == unjudged
    if unjudged:
        assert f"The judge left {unjudged} item-pairs unjudged" in report
    if pair["win_rate"] is not None:
        assert "judge.png" in report and (done.run_dir / "report" / "judge.png").is_file()
    # The same run's report with the rule judge's verdicts on the hand-made answers: the table,
    # the plot and a verdict that rests on the win rate.
    with CountingServer(rule_judge()) as server:
        endpoint = load_recipe(qa_recipe(endpoint_judge(server.url), name="ruled"))
        ruled, _ = judge_answers(endpoint, tmp_path, items(), hand_answers())
    results_path = done.run_dir / "eval" / "results.json"
    results_path.write_text(json.dumps({**done.results, "judge": ruled}))
    report = write_report(done.run_dir).markdown.read_text()
    (p,) = ruled["pairs"]
    assert (
        f"| base zero-shot | 3 / 3 / 1 | 1 | {p['win_rate']:.3f} [{p['low']:.3f}, {p['high']:.3f}] "
        f"| 0.62 | 57% | 71% | 3 / 2 | 100% of 4 |" in report
    )
    assert "By the judge, " in report and f"win rate {p['win_rate']:.2f} " in report
    assert "3 wins, 3 ties, 1 losses, sign test p = 0.62; 1 items unjudged" in report
    assert "Quality is judged by rule judge" in report and "in 12 of 12 pairs (100%" in report
    assert "judge win rate" in report.split("Bottom line", 1)[1]
    assert (done.run_dir / "report" / "judge.png").is_file()


def test_an_experiments_learning_curve_can_be_the_judges_win_rate(
    qa_recipe, monkeypatch, capsys, tmp_path
):
    """`judge_against`: each cell's specialist is plotted at its judged win rate against the
    fixed general system (which sits at 0.5), and each size's crossover test is the sign test
    on that cell's judge verdicts."""
    import yaml
    from conftest import run_cli

    from finetune.experiment import load_experiment
    from finetune.experiment.entries import entries
    from finetune.stats import sign_test

    fast = {"latency_items": 2, "timing": {"rounds": 6, "throughput_items": 4}}
    truth = {f"what is {i}?": f"number {i}" for i in range(30)}
    with CountingServer(rule_judge(truth=truth)) as server:
        recipe = qa_recipe(endpoint_judge(server.url))
        base = yaml.safe_load(recipe.read_text())
        base["eval"] |= fast
        recipe.write_text(yaml.safe_dump(base))
        path = tmp_path / "exp.yaml"
        experiment = {
            "name": "judged",
            "recipe": recipe.name,
            "axes": {"data.max_train_examples": [8, 16]},
            "judge_against": "base zero-shot",
        }
        path.write_text(yaml.safe_dump(experiment, sort_keys=False))
        code, output = run_cli(monkeypatch, capsys, "experiment", str(path))
        assert code == 0, output
    spec, cells = load_experiment(path)
    metric, found = entries(spec, cells)
    assert metric == "judge_win_rate"
    general = [e for e in found if e.kind == "general"]
    assert [(e.name, e.metric["value"]) for e in general] == [("base zero-shot", 0.5)]
    text = (tmp_path / "runs" / "experiments" / "judged" / "report.md").read_text()
    assert "crossovers are exact sign tests on the judge's wins against its losses" in text
    for cell in cells:
        results = json.loads((cell.run_dir() / "eval" / "results.json").read_text())
        (pair,) = results["judge"]["pairs"]
        size = json.loads((cell.run_dir() / "train_summary.json").read_text())["train_examples"]
        (mine,) = [e for e in found if e.kind != "general" and e.train_examples == size]
        assert mine.metric["value"] == pair["win_rate"]
        p = f"{sign_test(pair['wins'], pair['losses']):.2g}"
        assert (
            f"| {size} | 1 | {pair['win_rate']:.3f} | {pair['wins']} vs {pair['losses']} | " in text
        )
        assert f"{pair['wins']} vs {pair['losses']}, p = {p}" in text


def test_judge_against_names_a_system_the_cells_judge(qa_recipe, tmp_path):
    import yaml

    from finetune.experiment import load_experiment
    from finetune.recipe import RecipeError

    recipe = qa_recipe({"name": "j", "model": "base"})
    path = tmp_path / "exp.yaml"
    path.write_text(
        yaml.safe_dump({"name": "e", "recipe": recipe.name, "judge_against": "base zeroshot"})
    )
    with pytest.raises(RecipeError) as info:
        load_experiment(path)
    (problem,) = info.value.problems
    assert problem.key == "judge_against"
    assert problem.message == (
        "'base zeroshot' is not judged against the specialist (the judge compares it with base "
        "zero-shot). Did you mean 'base zero-shot'?"
    )


def test_the_shipped_api_judge_stops_before_any_request_when_its_key_is_unset(
    monkeypatch, tmp_path
):
    from conftest import REPO

    from finetune.errors import FinetuneError
    from finetune.judge import check_judge

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    recipe = load_recipe(REPO / "recipes" / "construction-faq-gpt4o-judge.yaml")
    with pytest.raises(FinetuneError) as info:
        check_judge(recipe, tmp_path)
    assert str(info.value).startswith(
        "eval.judge.system.endpoint.api_key_env: the environment variable OPENAI_API_KEY that "
        "should hold the key for https://api.openai.com/v1 is not set"
    )
    assert recipe.eval.judge.system.endpoint.max_usd == 2.0
    assert recipe.eval.prices.token_prices("gpt-4o judge") == (2.5, 10.0)
    assert [b.name for b in recipe.eval.baselines] == ["base zero-shot", "qwen2.5-0.5b zero-shot"]


def test_the_length_controlled_win_rate_equals_a_hand_fitted_regression():
    """sigmoid(intercept) of a logistic regression of the outcome (ties half) on tanh(length
    difference / its spread), an L2 penalty of 1/2 on the slope only, fitted here by Newton's
    method; and a specialist that wins only by being longer is marked down."""
    from finetune.judge.scores import at_equal_length

    scores = np.array([1, 1, 1, 1, 0.5, 0, 0, 1, 0.5, 0])
    delta = np.array([30, 25, 40, 12, 0, -10, -20, 35, 5, -15], dtype=float)
    x = np.tanh(delta / delta.std())
    theta = np.zeros(2)
    design = np.column_stack([np.ones_like(x), x])
    for _ in range(50):
        p = 1 / (1 + np.exp(-design @ theta))
        gradient = design.T @ (p - scores) + np.array([0.0, theta[1]])
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + np.diag([0.0, 1.0])
        theta -= np.linalg.solve(hessian, gradient)
    expected = 1 / (1 + np.exp(-theta[0]))
    assert at_equal_length(scores, x) == pytest.approx(expected, abs=1e-4)
    assert expected < scores.mean()  # its wins came with longer answers
