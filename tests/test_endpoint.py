"""Endpoint requests and scoring against a fake OpenAI-compatible server on 127.0.0.1: the
faults a real server cannot be made to produce (429 with Retry-After, 500, timeouts, malformed
JSON, missing log-probabilities, 401, 404), the cache, the spend cap, the rate limit, the
fail-fast check, the position probe, and the key written nowhere. Every server is started and
stopped by its test; every request is bounded by a short timeout."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from finetune.errors import FinetuneError
from finetune.systems.endpoint_client import (
    PROBE_TEXT,
    EndpointClient,
    EndpointSettings,
    Request,
    ResponseCache,
    SpendCapReached,
    check_echo_positions,
    check_first_tokens_apart,
    check_reachable,
    echoed_logprob,
    probe_request,
    top_logprob_scores,
)
from finetune.tasks.labels import label_of

KEY = "sk-test-planted-0123456789abcdef"
Answer = Callable[[dict, int], tuple[int, dict, bytes]]


def chat(text: str, prompt_tokens: int = 10, completion_tokens: int = 1, top=None) -> bytes:
    choice = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": text},
    }
    if top is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": top[0][0],
                    "logprob": top[0][1],
                    "bytes": None,
                    "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top],
                }
            ]
        }
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    usage["total_tokens"] = prompt_tokens + completion_tokens
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
    return json.dumps({**body, "usage": usage}).encode()


class FakeServer:
    """A threaded HTTP server answering every POST with `answer(body, n)` (n: the request's
    number, from 1), counting requests and keeping their headers."""

    def __init__(self, answer: Answer, delay: float = 0.0) -> None:
        self.answer, self.delay, self.count, self.headers = answer, delay, 0, []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.count += 1
                    n = server.count
                    server.headers.append(dict(self.headers))
                time.sleep(server.delay)
                status, headers, payload = server.answer(body, n)
                try:
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("TEST_ENDPOINT_KEY", KEY)


def settings(url: str, **kwargs) -> EndpointSettings:
    base = dict(
        base_url=url,
        model="m",
        key="eval.baselines.0.endpoint",
        api_key_env="TEST_ENDPOINT_KEY",
        timeout_seconds=2.0,
        max_retries=2,
    )
    return EndpointSettings(**{**base, **kwargs})


def client(tmp_path, url: str, **kwargs) -> EndpointClient:
    return EndpointClient(settings(url, **kwargs), ResponseCache(tmp_path / "cache.sqlite"))


def ask(text: str, max_tokens: int = 4) -> Request:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    return Request("chat", body, len(text))


def always(payload: bytes, status: int = 200, headers: dict | None = None) -> Answer:
    return lambda body, n: (status, headers or {}, payload)


# --- faults -------------------------------------------------------------------------------------


def test_a_429_is_retried_after_the_servers_retry_after(tmp_path, keyed):
    def answer(body, n):
        if n == 1:
            return 429, {"Retry-After": "1"}, b'{"error": {"message": "slow down"}}'
        return 200, {}, chat("fresh")

    with FakeServer(answer) as server:
        start = time.monotonic()
        (reply,) = client(tmp_path, server.url).map([ask("a review")])
        waited = time.monotonic() - start
    assert reply.error is None and reply.response["choices"][0]["message"]["content"] == "fresh"
    assert server.count == 2 and 1.0 <= waited < 5.0


def test_5xx_is_retried_and_an_item_that_keeps_failing_is_marked_not_dropped(tmp_path, keyed):
    def answer(body, n):
        text = body["messages"][0]["content"]
        if text == "broken" or n == 1:
            return 500, {}, b'{"error": {"message": "internal"}}'
        return 200, {}, chat("fresh")

    with FakeServer(answer) as server:
        replies = client(tmp_path, server.url, concurrency=1).map([ask("ok"), ask("broken")])
    assert replies[0].error is None
    assert replies[1].response is None and replies[1].error.startswith("InternalServerError 500")
    # One 500 retried for the first item; the second tried 1 + max_retries times.
    assert server.count == 2 + 3


def test_a_timeout_is_retried_then_the_item_fails(tmp_path, keyed):
    with FakeServer(always(chat("fresh")), delay=1.5) as server:
        start = time.monotonic()
        (reply,) = client(tmp_path, server.url, timeout_seconds=0.3, max_retries=1).map(
            [ask("slow")]
        )
        took = time.monotonic() - start
    assert reply.error.startswith("APITimeoutError") and server.count == 2 and took < 5


def test_malformed_json_fails_the_item(tmp_path, keyed):
    with FakeServer(always(b"{not json")) as server:
        (reply,) = client(tmp_path, server.url, max_retries=0).map([ask("x")])
    assert reply.response is None and reply.error


@pytest.mark.parametrize(
    ("status", "key", "message"),
    [
        (
            401,
            "api_key_env",
            "refused the key in TEST_ENDPOINT_KEY (401); check the key, or the variable named",
        ),
        (404, "model", "has no model 'm' (404); check the name the server lists at /models"),
    ],
)
def test_a_refused_key_or_an_unknown_model_fails_fast_naming_the_key(keyed, status, key, message):
    with FakeServer(always(b'{"error": {"message": "no"}}', status)) as server:
        with pytest.raises(FinetuneError) as info:
            check_reachable(settings(server.url))
        assert server.count == 1  # not retried
    assert str(info.value) == f"eval.baselines.0.endpoint.{key}: {server.url} {message}"


def test_an_unreachable_host_fails_fast(keyed):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    with pytest.raises(FinetuneError) as info:
        check_reachable(settings(url))
    assert time.monotonic() - start < 10
    assert str(info.value) == (
        f"eval.baselines.0.endpoint.base_url: no answer from {url} (APIConnectionError); "
        "check the address and that the server is running"
    )


def test_no_key_fails_before_any_request(monkeypatch, tmp_path):
    monkeypatch.delenv("TEST_ENDPOINT_KEY", raising=False)
    with FakeServer(always(chat("fresh"))) as server:
        with pytest.raises(FinetuneError) as info:
            check_reachable(settings(server.url))
        assert server.count == 0
    assert str(info.value).startswith(
        "eval.baselines.0.endpoint.api_key_env: the environment variable TEST_ENDPOINT_KEY "
        "that should hold the key for"
    )


# --- cache, spend cap, rate limit, the key -----------------------------------------------------


def test_a_second_evaluation_is_answered_from_the_cache_with_no_request(tmp_path, keyed):
    requests = [ask(f"review {i}") for i in range(6)]
    with FakeServer(always(chat("fresh"))) as server:
        first = client(tmp_path, server.url).map(requests)
        assert server.count == 6
        again = client(tmp_path, server.url).map(requests)  # a new process would open it anew
        assert server.count == 6
    assert [r.response for r in again] == [r.response for r in first]
    assert all(r.cached for r in again) and not any(r.cached for r in first)


def test_a_killed_evaluation_resumes_from_the_answers_it_had(tmp_path, keyed):
    requests = [ask(f"review {i}") for i in range(5)]
    with FakeServer(always(chat("fresh", prompt_tokens=100, completion_tokens=1))) as server:
        # The cap stops the first evaluation after two answers, as a kill would.
        capped = client(
            tmp_path, server.url, concurrency=1, max_usd=0.00025, input_usd_per_million=1.0
        )
        with pytest.raises(SpendCapReached):
            capped.map(requests)
        assert server.count == 2
        client(tmp_path, server.url).map(requests)
        assert server.count == 5


def test_the_spend_cap_stops_before_a_request_that_could_exceed_it(tmp_path, keyed):
    # Each answer costs 100 prompt + 4 completion tokens at $10 / $30 per million: $0.00112.
    priced = dict(input_usd_per_million=10.0, output_usd_per_million=30.0, concurrency=1)
    with FakeServer(always(chat("fresh", prompt_tokens=100, completion_tokens=4))) as server:
        capped = client(tmp_path, server.url, max_usd=0.005, **priced)
        with pytest.raises(SpendCapReached) as info:
            capped.map([ask(f"r{i}") for i in range(10)])
        sent = server.count
    assert capped.cap.spent == pytest.approx(sent * 0.00112)
    assert capped.cap.spent <= 0.005 and sent == 4
    assert str(info.value).startswith(
        "eval.baselines.0.endpoint.max_usd: stopped before spending more than $0.005 on m: "
        "$0.0045 spent, and the next request could cost $0."
    )


def test_requests_per_minute_spaces_the_requests(tmp_path, keyed):
    with FakeServer(always(chat("fresh"))) as server:
        start = time.monotonic()
        client(tmp_path, server.url, requests_per_minute=600, concurrency=4).map(
            [ask(f"r{i}") for i in range(5)]
        )
        took = time.monotonic() - start
    assert server.count == 5 and took >= 0.4  # four intervals of 0.1 s


def test_the_key_is_sent_as_the_bearer_and_written_nowhere(tmp_path, keyed, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeServer(always(chat("fresh"))) as server:
        client(tmp_path, server.url).map([ask("x")])
    headers = {k.lower(): v for k, v in server.headers[0].items()}
    assert headers["authorization"] == f"Bearer {KEY}"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not [p for p in files if KEY.encode() in p.read_bytes()]
    assert KEY not in caplog.text


# --- scoring ------------------------------------------------------------------------------------


def test_a_generated_answer_names_a_label_exactly_after_normalization_or_is_invalid():
    labels = ["fresh", "rotten"]
    assert label_of("  Fresh. ", labels) == "fresh"
    assert label_of('"ROTTEN"!', labels) == "rotten"
    assert label_of("fresh, I think", labels) is None
    assert label_of("", labels) is None


def test_top_logprobs_take_each_labels_likeliest_first_token_and_bound_the_unlisted():
    top = [(" fresh", -0.2), ("fr", -2.5), ("Rot", -1.9), ("The", -3.0)]
    scores, unlisted = top_logprob_scores(top, ["fresh", "rotten", "mixed"])
    assert scores == {"fresh": -0.2, "rotten": -1.9, "mixed": -3.0}
    assert unlisted == ["mixed"]


def test_top_logprobs_refuse_labels_one_of_which_begins_another():
    check_first_tokens_apart(["fresh", "rotten"], "eval.baselines.0.endpoint")
    with pytest.raises(FinetuneError) as info:
        check_first_tokens_apart(["pos", "positive"], "eval.baselines.0.endpoint")
    assert str(info.value).startswith(
        "eval.baselines.0.endpoint.scoring: top_logprobs reads each label's first answer token, "
        "but 'pos' begins 'positive'"
    )


def echo(tokens: list[tuple[str, float | None]]) -> dict:
    offsets, at = [], 0
    for token, _ in tokens:
        offsets.append(at)
        at += len(token)
    logprobs = {
        "tokens": [t for t, _ in tokens],
        "token_logprobs": [lp for _, lp in tokens],
        "text_offset": offsets,
        "top_logprobs": None,
    }
    return {"choices": [{"index": 0, "text": "".join(t for t, _ in tokens), "logprobs": logprobs}]}


def test_the_echoed_label_logprob_sums_the_tokens_after_the_prompt():
    prompt = "Review: great fun\nAnswer:"
    response = echo(
        [("Review", None), (": great fun\nAnswer", -7.0), (":", -0.5), (" fre", -0.3), ("sh", -0.1)]
    )
    assert echoed_logprob(response, len(prompt)) == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="no echoed token log-probabilities"):
        echoed_logprob({"choices": [{"text": "x", "logprobs": None}]}, 3)


def _probe_response(later: float) -> dict:
    parts = PROBE_TEXT.split(" ")
    tokens = [(parts[0], None)] + [
        (" " + p, later if i >= 9 else -2.0) for i, p in enumerate(parts[1:])
    ]
    return echo(tokens)


def test_the_position_probe_passes_a_correct_server_and_refuses_an_off_by_one_one():
    check_echo_positions(_probe_response(-0.05), "eval.baselines.0.endpoint")
    with pytest.raises(FinetuneError) as info:
        check_echo_positions(_probe_response(-6.0), "eval.baselines.0.endpoint")
    assert "fail the position probe (mean -6.00" in str(info.value)
    assert "llama-cpp-python 0.3.36 does, its issue #1983" in str(info.value)
    with pytest.raises(FinetuneError, match="the server returned none"):
        check_echo_positions({"choices": [{"text": "", "logprobs": None}]}, "k")
    body = probe_request("m").body
    assert (body["prompt"], body["echo"], body["logprobs"]) == (PROBE_TEXT, True, 1)


# --- an endpoint baseline in an evaluation -----------------------------------------------------

GOOD = ("fresh and funny", "a delight", "great fun", "a wonderful film")


def _sentiment(text: str) -> str:
    return "fresh" if any(g in text for g in GOOD) else "rotten"


def _logprob(label: str, text: str) -> float:
    return -0.1 if label == _sentiment(text) else -3.0


FAILING = {"text": "no such text"}  # the test sets one test item's text: its requests fail


def fake_api(body: dict, n: int) -> tuple[int, dict, bytes]:
    """Scores a review as the rule `_sentiment` says, by each method; one review always fails."""
    if "prompt" in body:  # completions with echo
        prompt = body["prompt"]
        if prompt == PROBE_TEXT:
            parts = PROBE_TEXT.split(" ")
            return (
                200,
                {},
                json.dumps(
                    echo([(parts[0], None)] + [(" " + p, -0.05) for p in parts[1:]])
                ).encode(),
            )
        head, _, label = prompt.rpartition(" ")
        if FAILING["text"] in head:
            return 500, {}, b'{"error": {"message": "boom"}}'
        response = echo([(head, None), (" " + label, _logprob(label, head))])
        response["usage"] = {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}
        return 200, {}, json.dumps(response).encode()
    text = body["messages"][-1]["content"]
    if FAILING["text"] in text:
        return 500, {}, b'{"error": {"message": "boom"}}'
    if body.get("logprobs"):
        top = [(" " + label, _logprob(label, text)) for label in ("fresh", "rotten")]
        return 200, {}, chat(top[0][0], top=sorted(top, key=lambda t: -t[1]))
    return 200, {}, chat(_sentiment(text).capitalize() + ".", prompt_tokens=30, completion_tokens=2)


@pytest.mark.parametrize("scoring", ["auto", "top_logprobs", "generate"])
def test_an_endpoint_baseline_is_scored_beside_the_specialist(
    tiny_recipe, tiny_run_copy, keyed, monkeypatch, tmp_path, scoring
):
    from finetune.data import load_split
    from finetune.evaluate import evaluate
    from finetune.recipe import load_recipe
    from finetune.report import write_report

    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    with FakeServer(fake_api) as server:
        path = tiny_recipe(
            eval={
                "baselines": [
                    {
                        "name": "api",
                        "endpoint": {
                            "base_url": server.url,
                            "model": "m",
                            "api_key_env": "TEST_ENDPOINT_KEY",
                            "scoring": scoring,
                            "max_retries": 1,
                            "timeout_seconds": 5,
                        },
                    }
                ],
                "prices": {"per_million_input_tokens": {"api": 1.0}},
                "tfidf": {"enabled": False},
                "latency_items": 2,
                "bootstrap_samples": 100,
                "timing": {"rounds": 6},
            },
        )
        recipe = load_recipe(path)
        run = tiny_run_copy
        monkeypatch.setitem(FAILING, "text", load_split(recipe, "test")[0]["text"])
        results = json.loads(evaluate(recipe, run).read_text())
        sent = server.count
        again = json.loads(evaluate(recipe, run).read_text())
        method = "prompt_logprobs" if scoring == "auto" else scoring
        # From the cache but for the one live check before any system, and the failed item's
        # requests (one per label with prompt_logprobs), tried again with their retry.
        retried = 2 * (2 if method == "prompt_logprobs" else 1)
        assert server.count == sent + 1 + retried
    predictions = [json.loads(x) for x in (run / "eval/predictions.jsonl").open()]
    api = results["systems"][1]
    assert api["serving"] == f"remote API; scoring: {method}"
    assert api["peak_memory_bytes"] is None and api["disk_bytes"] == {
        "adapter": None,
        "model": None,
    }
    failing = [p for p in predictions if p["text"] == FAILING["text"]]
    assert api["failed_items"] == len(failing) == 1
    for p in predictions:
        entry = p["predictions"]["api"]
        if p in failing:
            assert entry["prediction"] == "" and entry["failed"].startswith(
                "InternalServerError 500"
            )
            continue
        assert entry["prediction"] == _sentiment(p["text"])
        if method != "generate":
            assert entry["label_logprobs"] == {
                label: _logprob(label, p["text"]) for label in ("fresh", "rotten")
            }
    right = sum(p["predictions"]["api"]["prediction"] == p["gold"] for p in predictions)
    assert api["metrics"]["accuracy"]["value"] == pytest.approx(right / len(predictions))
    assert api["latency_ms"]["p50"] > 0 and api["throughput_items_per_s"] > 0
    # Cost from the API's usage at the recipe's price; the cached re-evaluation reports the same.
    tokens = {"prompt_logprobs": 40, "top_logprobs": 10, "generate": 30}[method]
    assert api["tokens"]["input_per_item"] == pytest.approx(tokens * (1 - 1 / len(predictions)))
    assert again["systems"][1]["metrics"] == api["metrics"]
    assert again["systems"][1]["latency_ms"]["p50"] == api["latency_ms"]["p50"]
    markdown = write_report(run).markdown.read_text()
    assert "| api " in markdown and "remote" in markdown
    assert "1 item(s) failed after retries" in markdown


def test_an_endpoint_that_refuses_the_key_stops_the_evaluation_before_any_system(
    tiny_recipe, tiny_run_copy, keyed, monkeypatch, tmp_path
):
    from finetune.evaluate import evaluate
    from finetune.recipe import load_recipe

    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    with FakeServer(always(b'{"error": {"message": "bad key"}}', 401)) as server:
        endpoint = {"base_url": server.url, "model": "m", "api_key_env": "TEST_ENDPOINT_KEY"}
        path = tiny_recipe(eval={"baselines": [{"name": "api", "endpoint": endpoint}]})
        recipe = load_recipe(path)
        run = tiny_run_copy
        with pytest.raises(FinetuneError) as info:
            evaluate(recipe, run)
        assert server.count == 1
    assert str(info.value).startswith("eval.baselines.0.endpoint.api_key_env: ")
    assert not (run / "eval").exists()


def test_the_shipped_api_recipe_stops_before_anything_when_its_key_is_unset(monkeypatch, tmp_path):
    from conftest import REPO

    from finetune.recipe import load_recipe
    from finetune.systems.registry import check_all

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    recipe = load_recipe(REPO / "recipes" / "rt-sentiment-gpt4o-mini.yaml")
    with pytest.raises(FinetuneError) as info:
        check_all(recipe, tmp_path)
    assert str(info.value) == (
        "eval.baselines.2.endpoint.api_key_env: the environment variable OPENAI_API_KEY that "
        "should hold the key for https://api.openai.com/v1 is not set; export it, or name "
        "another variable"
    )


def test_an_endpoint_baseline_names_no_local_model_and_its_keys_are_checked(problems_with):
    endpoint = {"base_url": "http://h/v1", "model": "m"}
    local = {"name": "api", "model": "qwen2.5-coder-0.5b-instruct", "endpoint": endpoint}
    assert problems_with(("eval.baselines", [local])) == [
        "eval.baselines.0: an endpoint baseline is the model behind its API; remove model"
    ]
    typo = {"name": "typo", "endpoint": {**endpoint, "scorng": "generate"}}
    (message,) = problems_with(("eval.baselines", [typo]))
    assert message.startswith("eval.baselines.0.endpoint.scorng: unknown key 'scorng'"), message
