"""The endpoint path against a real llama.cpp server (llama-cpp-python 0.3.36) that the test
starts on 127.0.0.1 with SmolLM2-135M's GGUF: each scoring method equals the same quantity
computed in process by llama.cpp, and the position probe refuses the server's echoed prompt
log-probabilities, which are one position late (llama-cpp-python issue #1983)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import evaluated_run

from finetune.errors import FinetuneError

pytestmark = pytest.mark.slow
KEY_ENV = "LLAMA_SERVER_TEST_KEY"  # the server checks no key; the endpoint path needs one set


@pytest.fixture(scope="module")
def server(gguf):
    from finetune.deploy.llama_server import llama_server

    with llama_server(gguf, context=1024, threads=2, alias="smollm2") as url:
        yield url


@pytest.fixture(scope="module")
def local(gguf):
    """The same GGUF in process, and its tokenizer."""
    from llama_cpp import Llama

    from finetune.systems.engine import Served, _tokenizer

    return Served(Llama(str(gguf), n_ctx=1024, n_threads=2, verbose=False), "x"), _tokenizer(gguf)


def _evaluated(tiny_recipe, run, monkeypatch, tmp_path, server, scoring: str):
    """The tiny run `run` evaluated beside the server's model, scored by `scoring`."""
    monkeypatch.setenv(KEY_ENV, "unused")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    endpoint = {"base_url": server, "model": "smollm2", "api_key_env": KEY_ENV}
    path = tiny_recipe(
        eval={
            "baselines": [{"name": "llama-server", "endpoint": {**endpoint, "scoring": scoring}}],
            "tfidf": {"enabled": False},
            "latency_items": 2,
            "bootstrap_samples": 100,
            "timing": {"rounds": 6},
            "max_new_tokens": 8,
        },
    )
    recipe, _, _, results, predictions = evaluated_run(path, run)
    return recipe, results["systems"][1], predictions


def _user_turn(recipe, text: str) -> dict[str, str]:
    """The endpoint's one user turn: the instruction an untrained system reads (with the label
    list: the tiny recipe's "Sentiment?" names no label), then the text."""
    from finetune.tasks.prompts import untrained_instruction

    return {"role": "user", "content": f"{untrained_instruction(recipe.task)}\n\n{text}"}


def _chat_ids(tokenizer, recipe, text: str) -> list[int]:
    """The chat prompt llama.cpp's server builds from the endpoint's one user turn."""
    messages = [_user_turn(recipe, text)]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_auto_scores_by_top_logprobs_equal_to_llama_cpps_own_next_token_distribution(
    tiny_recipe, tiny_run_copy, monkeypatch, tmp_path, server, local
):
    from finetune.systems.endpoint_client import top_logprob_scores

    recipe, system, predictions = _evaluated(
        tiny_recipe, tiny_run_copy, monkeypatch, tmp_path, server, "auto"
    )
    # The probe refused prompt_logprobs (see below), so auto fell to the next most exact method.
    assert system["serving"] == "remote API; scoring: top_logprobs"
    served, tokenizer = local
    for p in predictions:
        logprobs = served.next_logprobs(_chat_ids(tokenizer, recipe, p["text"]), run=2)
        top = [
            (served.llm.detokenize([int(i)]).decode(errors="replace"), float(logprobs[i]))
            for i in np.argsort(-logprobs)[:20]
        ]
        expected, unlisted = top_logprob_scores(top, recipe.task.labels)
        entry = p["predictions"]["llama-server"]
        assert entry["label_logprobs"] == pytest.approx(expected, abs=1e-3)
        assert entry.get("unlisted", []) == unlisted


def test_generate_answers_equal_llama_cpps_own_greedy_chat_completion(
    tiny_recipe, tiny_run_copy, monkeypatch, tmp_path, server, gguf
):
    from llama_cpp import Llama

    recipe, system, predictions = _evaluated(
        tiny_recipe, tiny_run_copy, monkeypatch, tmp_path, server, "generate"
    )
    assert system["serving"] == "remote API; scoring: generate"
    own = Llama(str(gguf), n_ctx=1024, n_threads=2, verbose=False)
    for p in predictions:
        messages = [_user_turn(recipe, p["text"])]
        done = own.create_chat_completion(messages, max_tokens=8, temperature=0.0)
        assert p["predictions"]["llama-server"]["raw"] == done["choices"][0]["message"]["content"]
    own.close()
    # An answer that names no label word for word is invalid, and counted.
    invalid = sum(bool(p["predictions"]["llama-server"].get("invalid")) for p in predictions)
    assert system["invalid_items"] == invalid


def test_the_probe_refuses_echoed_logprobs_that_are_one_position_late(
    server, local, tmp_path, monkeypatch
):
    from finetune.systems.endpoint_client import (
        PROBE_TEXT,
        EndpointClient,
        EndpointSettings,
        ResponseCache,
        check_echo_positions,
        probe_request,
    )

    monkeypatch.setenv(KEY_ENV, "unused")
    settings = EndpointSettings(
        base_url=server, model="smollm2", key="eval.baselines.0.endpoint", api_key_env=KEY_ENV
    )
    client = EndpointClient(settings, ResponseCache(tmp_path / "cache.sqlite"))
    response = client.call(probe_request("smollm2")).response
    with pytest.raises(FinetuneError) as err:
        check_echo_positions(response, "eval.baselines.0.endpoint")
    assert "eval.baselines.0.endpoint.scoring" in str(err.value)
    assert "#1983" in str(err.value)
    # In process: the server scores token i with the distribution after token i (the one that
    # predicts token i + 1), where it should take the distribution before it.
    served, _ = local
    tokens = served.llm.tokenize(PROBE_TEXT.encode(), add_bos=True, special=False)
    echoed = response["choices"][0]["logprobs"]["token_logprobs"]
    assert len(echoed) == len(tokens) and echoed[0] is None
    rows = _all_positions(served, tokens)
    for i in range(1, len(tokens)):
        assert echoed[i] == pytest.approx(rows[i, tokens[i]], abs=1e-3)
    right = [rows[i - 1, tokens[i]] for i in range(1, len(tokens))]
    assert np.mean(right) > -1.0 > np.mean(echoed[1:])


def _all_positions(served, tokens: list[int]) -> np.ndarray:
    """Each position's next-token log-probabilities, one prefix at a time (every run >= 2)."""
    return np.stack(
        [served.next_logprobs(tokens[: k + 1], reuse=False, run=2) for k in range(len(tokens))]
    )
