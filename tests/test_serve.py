"""`finetune serve`: runs behind a real HTTP server on 127.0.0.1.

The server is the real command in its own process, serving the tiny run. Its answers equal
the evaluation's, both through `/v1/predict` and through the workbench's own endpoint baseline
pointed at it; bad requests get 4xx with a message; SIGTERM stops it. The batching and the 503
of a full queue are shown on the `Batcher` itself and on an in-process server whose worker the
test holds busy: a real server answers too fast for a test to fill its queue reliably."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import copy_run, evaluated_run, tiny_recipe_factory, train_from

from finetune.deploy.llama_server import free_port
from finetune.deploy.serve import MAX_INPUT_CHARS, Batcher, Overloaded
from finetune.systems.answers import Answers

WAIT = 240  # seconds for the server to answer: a fresh interpreter imports the model stack
NAME = "<the served run>"  # in a parametrized body: the served run's name
KEY_ENV = "SERVE_TEST_KEY"  # the server checks no key; the endpoint baseline needs one set


def call(url: str, body: dict | bytes | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a GET, or of a POST when `body` is given."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def wait_until_up(url: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if process is not None:
            assert process.poll() is None, process.stdout.read()[-3000:]
        try:
            call(f"{url}/health")
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the server did not answer within {WAIT} s")


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model fully fine-tuned until it tells the two labels apart on 24 test items
    (LoRA on it answers one label throughout, which would prove little here)."""
    root = tmp_path_factory.mktemp("served-run")
    path = tiny_recipe_factory(root, tiny_model_dir)(
        train={"method": "full", "max_steps": 60, "eval_every": 30, "save_every": 60},
        data={"split": {"train": 0.6, "validation": 0.1, "test": 0.3}},
    )
    return train_from(path).run_dir


@pytest.fixture(scope="module")
def server(learned_run, tmp_path_factory):
    """`finetune serve` on the tiny run, as a user starts it; SIGTERM afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune", "serve", str(learned_run), "--port", str(port)],
        cwd=tmp_path_factory.mktemp("serve"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process)
        yield url, process, f"tiny/{learned_run.name}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def evaluated(server, learned_run, tmp_path_factory, keyed_module):
    """A copy of the tiny run evaluated with an endpoint baseline pointed at the served run."""
    url, _, name = server
    root = tmp_path_factory.mktemp("served-eval")
    run_dir = copy_run(learned_run, root, keep_eval=False)
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    endpoint = {"base_url": f"{url}/v1", "model": name, "api_key_env": KEY_ENV}
    recipe["eval"]["baselines"] = [{"name": "served", "endpoint": endpoint}]
    recipe["eval"]["tfidf"] = {"enabled": False}
    recipe["tracking"]["runs_dir"] = str(root / "runs")
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    evaluated = evaluated_run(path, run_dir)
    labels = [p["predictions"]["specialist"]["prediction"] for p in evaluated.predictions]
    assert len(labels) == 24 and labels.count("fresh") == labels.count("rotten"), labels
    return evaluated


@pytest.fixture(scope="module")
def keyed_module(tmp_path_factory):
    """A key set, and an answer cache of the module's own (answers are cached by address and
    model name, and another session may have used the port)."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv(KEY_ENV, "not-checked")
        m.setenv("FINETUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def test_health_and_models_list_the_served_run(server, learned_run):
    url, _, name = server
    status, health, _ = call(f"{url}/health")
    assert status == 200 and health["status"] == "ok" and list(health["models"]) == [name]
    _, models, _ = call(f"{url}/v1/models")
    (entry,) = models["data"]
    assert entry["id"] == name and entry["object"] == "model" and entry["chat"] is True
    assert entry["labels"] == ["fresh", "rotten"] and entry["run"] == str(learned_run)


def test_predict_answers_as_the_evaluation_did(server, evaluated):
    """Every test item in one request: each row's label and label log-likelihoods are the
    evaluation's, and its probabilities their softmax."""
    url, _, name = server
    items = evaluated.predictions
    status, body, _ = call(
        f"{url}/v1/classify", {"model": name, "input": [p["text"] for p in items]}
    )
    assert status == 200 and [r["index"] for r in body["data"]] == list(range(len(items)))
    for row, record in zip(body["data"], items, strict=True):
        expected = record["predictions"]["specialist"]
        assert row["label"] == expected["prediction"]
        assert row["label_logprobs"] == expected["label_logprobs"]
        scores = list(expected["label_logprobs"].values())
        top = max(scores)
        total = sum(2.718281828459045 ** (s - top) for s in scores)
        want = [round(2.718281828459045 ** (s - top) / total, 6) for s in scores]
        assert list(row["probabilities"].values()) == pytest.approx(want, abs=2e-6)


def test_the_endpoint_baseline_against_the_served_run_answers_as_the_specialist(evaluated):
    """The workbench's own endpoint baseline (scoring `auto`) pointed at the served run: the
    probe finds no echo and no top log-probabilities, so it reads generated answers, and every
    one is the specialist's label in the same evaluation."""
    served = next(s for s in evaluated.results["systems"] if s["name"] == "served")
    assert "scoring: generate" in served["serving"]
    for record in evaluated.predictions:
        got = record["predictions"]["served"]["prediction"]
        assert got == record["predictions"]["specialist"]["prediction"], record["id"]


def test_chat_and_completions_answer_with_the_runs_label(server):
    """The run's label as the answer, with the row `/v1/predict` gives the text alone, whether
    the message carries the run's instruction (taken off) or not."""
    url, _, name = server
    text = "a wonderful film, number 3"
    _, direct, _ = call(f"{url}/v1/predict", {"model": name, "input": text})
    row = direct["data"][0]
    for content in [f"Sentiment?\n\n{text}", text]:
        chat = {"model": name, "messages": [{"role": "user", "content": content}]}
        status, body, _ = call(f"{url}/v1/chat/completions", {**chat, "temperature": 0.9})
        assert status == 200 and body["object"] == "chat.completion"
        (choice,) = body["choices"]
        assert choice["message"] == {"role": "assistant", "content": row["label"]}
        assert {"index": 0, **choice["finetune"]} == row
        assert body["usage"]["prompt_tokens"] > 0
    status, body, _ = call(f"{url}/v1/completions", {"model": name, "prompt": [text, text]})
    assert status == 200 and [c["text"] for c in body["choices"]] == [row["label"]] * 2


def test_concurrent_requests_get_the_answers_each_gets_alone(server):
    url, _, name = server
    texts = [f"{w}, number {i}" for i, w in enumerate(["great fun", "a boring mess"] * 6)]
    alone = [call(f"{url}/v1/predict", {"model": name, "input": t})[1] for t in texts]
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        together = list(
            pool.map(lambda t: call(f"{url}/v1/predict", {"model": name, "input": t})[1], texts)
        )
    assert [b["data"][0]["label"] for b in together] == [b["data"][0]["label"] for b in alone]
    for a, b in zip(alone, together, strict=True):
        # Batched with other requests' texts, padded: float32 sums in another order.
        got, want = b["data"][0]["label_logprobs"], a["data"][0]["label_logprobs"]
        assert got == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize(
    ("route", "body", "status", "message"),
    [
        ("/v1/predict", b'{"model": "tiny",', 400, "the body is not valid JSON"),
        ("/v1/predict", {"model": NAME}, 400, "body.input: Field required"),
        ("/v1/predict", {"model": NAME, "input": []}, 400, "input: give a text"),
        ("/v1/predict", {"model": "tyni", "input": "x"}, 404, "model 'tyni' is not served here; served: tiny/"),
        ("/v1/predict", {"model": NAME, "input": "x" * (MAX_INPUT_CHARS + 1)}, 413, f"input[0]: {MAX_INPUT_CHARS + 1} characters; at most {MAX_INPUT_CHARS} per text"),
        ("/v1/predict", {"model": NAME, "input": ["x"] * 257}, 413, "input: at most 256 texts per request"),
        ("/v1/chat/completions", {"model": NAME, "messages": []}, 400, "body.messages: List should have at least 1 item"),
        ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "system", "content": "hi"}]}, 400, "messages: no user message"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "echo": True}, 400, "echo: not supported"),
    ],
)  # fmt: skip
def test_a_bad_request_gets_a_4xx_saying_why_and_the_server_goes_on(
    server, route, body, status, message
):
    url, process, name = server
    if isinstance(body, dict):
        body = {**body, "model": name if body["model"] == NAME else body["model"]}
    got, answer, _ = call(url + route, body)
    assert got == status and answer["error"]["message"].startswith(message), answer
    assert process.poll() is None and call(f"{url}/health")[0] == 200


def _echo(items: list[dict]) -> Answers:
    return Answers(
        [{"id": i["id"], "answer": i["text"]} for i in items], [1] * len(items), [1] * len(items)
    )


def test_requests_waiting_while_the_worker_is_busy_run_as_one_batch():
    gate, seen = threading.Event(), []

    def run(items):
        seen.append([i["text"] for i in items])
        gate.wait(10)
        return _echo(items)

    batcher = Batcher(run, max_batch=8, max_queue=64)
    try:
        first = batcher.submit([{"id": "0", "text": "a"}])
        while not seen:  # the worker holds the first request
            time.sleep(0.01)
        later = [
            batcher.submit([{"id": "0", "text": t}, {"id": "1", "text": t * 2}]) for t in "bcde"
        ]
        gate.set()
        assert first.result(10).rows == [{"id": "0", "answer": "a"}]
        assert [[r["answer"] for r in f.result(10).rows] for f in later] == [
            ["b", "bb"],
            ["c", "cc"],
            ["d", "dd"],
            ["e", "ee"],
        ]
        assert seen == [["a"], ["b", "bb", "c", "cc", "d", "dd", "e", "ee"]]
        assert (batcher.requests, batcher.batches, batcher.pending) == (5, 2, 0)
    finally:
        gate.set()
        batcher.close()


def test_a_full_queue_refuses_with_a_retry_after_and_a_failure_reaches_each_request():
    gate = threading.Event()

    def run(items):
        gate.wait(10)
        if any(i["text"] == "boom" for i in items):
            raise RuntimeError("boom")
        return _echo(items)

    batcher = Batcher(run, max_batch=4, max_queue=3)
    try:
        held = batcher.submit([{"id": "0", "text": "boom"}, {"id": "1", "text": "x"}])
        with pytest.raises(Overloaded) as refused:
            batcher.submit([{"id": "0", "text": "y"}, {"id": "1", "text": "z"}])
        assert refused.value.retry_after == 1  # no batch has run yet to measure a rate
        gate.set()
        with pytest.raises(RuntimeError, match="boom"):
            held.result(10)
        assert batcher.submit([{"id": "0", "text": "ok"}]).result(10).rows[0]["answer"] == "ok"
    finally:
        gate.set()
        batcher.close()


def test_a_full_queue_gets_503_with_retry_after_over_http(learned_run):
    """An in-process server on 127.0.0.1 whose worker the test holds busy."""
    import uvicorn

    from finetune.deploy.api import build_app
    from finetune.deploy.serve import Served

    gate = threading.Event()
    batcher = Batcher(lambda items: (gate.wait(10), _echo(items))[1], max_batch=4, max_queue=2)
    recipe_path = learned_run / "recipe.yaml"
    from finetune.recipe import load_recipe

    served = {"tiny": Served("tiny", learned_run, load_recipe(recipe_path), None, batcher)}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(served), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(call, f"{url}/v1/predict", {"model": "tiny", "input": ["a", "b"]})
            while batcher.pending < 2:
                time.sleep(0.01)
            status, body, headers = call(f"{url}/v1/predict", {"model": "tiny", "input": "c"})
            gate.set()
            assert held.result(10)[0] == 200
        assert status == 503 and headers["retry-after"] == "1"
        assert (
            body["error"]["message"]
            == "the server is busy: too many texts are waiting; retry after 1 s"
        )
    finally:
        gate.set()
        server.should_exit = True
        thread.join(10)
        batcher.close()


@pytest.mark.parametrize(
    ("signum", "said"),
    # Ctrl-C ends through typer, which exits 130 without a word.
    [(signal.SIGTERM, "terminated; every process it started is stopped"), (signal.SIGINT, None)],
)
def test_sigterm_and_sigint_stop_the_server_cleanly(learned_run, tmp_path, signum, said):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune", "serve", str(learned_run), "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}", process)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, output[-3000:]
    assert f"serving tiny/{learned_run.name} at http://127.0.0.1:" in output
    if said:
        assert output.rstrip().endswith(said), output[-3000:]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_serve_refuses_what_it_cannot_serve(tmp_path):
    from typer.testing import CliRunner

    from finetune.cli import app

    unfinished = tmp_path / "run.partial"
    unfinished.mkdir()
    result = CliRunner().invoke(app, ["serve", str(unfinished), str(tmp_path / "nowhere")])
    assert str(result.exception) == (
        "serve takes finished run directories, or one GGUF model; not found as directories: "
        f"{tmp_path / 'nowhere'}"
    )
    result = CliRunner().invoke(app, ["serve", str(unfinished)])
    assert str(result.exception) == (
        f"{unfinished}: not a finished training run; serve a complete run"
    )


@pytest.fixture(scope="module")
def two_lora_runs(tmp_path_factory, tiny_model_dir) -> list[Path]:
    """Two LoRA runs of the tiny base, trained apart (other seeds, other rates)."""
    runs = []
    for seed, rate in [(3, 0.01), (5, 0.05)]:
        root = tmp_path_factory.mktemp(f"lora-{seed}")
        path = tiny_recipe_factory(root, tiny_model_dir)(
            name=f"lora{seed}", seed=seed, train={"learning_rate": rate}
        )
        runs.append(train_from(path).run_dir)
    return runs


def test_lora_runs_of_one_base_share_it_and_answer_as_each_alone(two_lora_runs):
    from finetune.deploy.serve import served_runs

    texts = [f"{w}, number {i}" for i, w in enumerate(["great fun", "a boring mess", "a delight"])]

    def scores(answers):
        return [r["label_logprobs"] for r in answers.rows]

    alone = []
    for run in two_lora_runs:
        with served_runs([run], share_base=False) as served:
            alone.append(scores(next(iter(served.values())).answer(texts).result(30)))
    assert alone[0][0] != pytest.approx(alone[1][0], abs=1e-3)  # the adapters differ
    with served_runs(two_lora_runs) as served:
        a, b = served.values()
        assert a.loaded.model is b.loaded.model and a.batcher is b.batcher
        assert sorted(a.loaded.model.peft_config) == ["run0", "run1"]
        # Both at once: one batch, each text through its own adapter.
        futures = [a.answer(texts), b.answer(texts), a.answer(texts[:1])]
        together = [scores(f.result(30)) for f in futures]
    for got, want in zip(together, [alone[0], alone[1], alone[0][:1]], strict=True):
        for g, w in zip(got, want, strict=True):
            assert g == pytest.approx(w, abs=1e-3)  # unmerged here, merged alone
