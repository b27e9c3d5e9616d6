"""The endpoint kind: a model behind an OpenAI-compatible API (a hosted model, `vllm serve`,
llama.cpp's server) as a baseline, on the same test items with the same instruction and shots.

Requests go through `endpoint_client.EndpointClient` (retries, cache, rate limit, spend cap). The
prompt is the chat form every local chat model gets: the instruction (with the label list, as
every untrained system's, per `task.list_labels`) and the text as the user turn, shots as
earlier turns; `prompt_logprobs` sends the recipe's plain template to the
completions route instead, with each label after it. Classification is scored by the recipe's
`scoring` (`auto` probes the server once: prompt log-probabilities where they pass the position
probe, else the chat answer's top log-probabilities, else generation); QA and extraction
generate. An item whose request failed, or whose answer names no label, predicts nothing and
counts as wrong; the details say which. The system is timed by its own requests: each item's
latency is its requests' (the seconds cached with each answer, so a re-evaluation answered from
the cache reports the same), and throughput is `concurrency` items over the mean latency. Its
memory and size are the server's, not this machine's: `None` in the results, "remote" in the
report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune.errors import FinetuneError
from finetune.fetch import cache_dir
from finetune.recipe import Recipe
from finetune.systems.base import (
    Context,
    Inference,
    Kind,
    Loaded,
    Measurement,
    Plan,
    System,
    baseline_config,
)
from finetune.systems.common import draw_shots
from finetune.systems.endpoint_client import (
    EndpointClient,
    EndpointSettings,
    Request,
    ResponseCache,
    check_echo_positions,
    check_first_tokens_apart,
    check_reachable,
    echoed_logprob,
    probe_request,
    top_logprob_scores,
)
from finetune.tasks.prompts import PromptFormat, render_prompt, untrained_instruction
from finetune.tasks.types import LABELS, task_type

log = logging.getLogger(__name__)
CACHE_FILE = "endpoints.sqlite"


class Endpoint(Kind):
    """The `Kind` of an endpoint baseline; its key is `endpoint:<name>`."""

    name = "endpoint"
    baseline_field = "endpoint"
    prompted = True

    def system(self, baseline: Any) -> System:
        b = baseline
        return System(b.name, "baseline", b.endpoint.model, b.shots, "chat", kind=self.name)

    def check(self, recipe: Recipe, key: str) -> None:
        check_reachable(settings(recipe, key))

    def load(self, recipe: Recipe, run_dir: Path, key: str) -> Loaded:
        s = settings(recipe, key)
        client = EndpointClient(s, ResponseCache(cache_dir() / CACHE_FILE))
        method = scoring_method(recipe, key, client)
        return Loaded(
            client,
            None,
            f"{s.model} at {s.base_url}",
            self,
            {"adapter": None, "model": None},
            serving=f"remote API; scoring: {method}",
            identity=method,
        )

    def plan(
        self, recipe: Recipe, system: System, key: str, loaded: Loaded, context: Context
    ) -> Plan:
        method, endpoint = loaded.identity, baseline_config(recipe, key)[1].endpoint
        shots = draw_shots(recipe, context.train_rows, system.shots)
        requests = [
            _requests(recipe, endpoint, method, item["text"], shots) for item in context.items
        ]
        n = len(requests)
        input_tokens = [0] * n  # filled from the API's usage as the answers come
        infer = Inference(0, None, remote=True)
        infer.run = _runner(recipe, method, infer, input_tokens)
        style = "plain (completions)" if method == "prompt_logprobs" else "chat"
        return Plan(system, key, style, infer, requests, input_tokens, [False] * n)

    def sizes(self, model: Any) -> tuple[int | None, int | None, int]:
        return None, None, 0

    def instance_bytes(self, recipe: Recipe, key: str) -> int | None:
        return 0


def settings(recipe: Recipe, key: str) -> EndpointSettings:
    """The baseline's endpoint settings, its token prices from `eval.prices` by its name."""
    index, baseline = baseline_config(recipe, key)
    name, e, prices = baseline.name, baseline.endpoint, recipe.eval.prices
    return EndpointSettings(
        base_url=e.base_url,
        model=e.model,
        key=f"eval.baselines.{index}.endpoint",
        api_key_env=e.api_key_env,
        concurrency=e.concurrency,
        timeout_seconds=e.timeout_seconds,
        max_retries=e.max_retries,
        requests_per_minute=e.requests_per_minute,
        max_usd=e.max_usd,
        input_usd_per_million=prices.per_million_input_tokens.get(name, 0.0),
        output_usd_per_million=prices.per_million_output_tokens.get(name, 0.0),
    )


def scoring_method(recipe: Recipe, key: str, client: EndpointClient) -> str:
    """The method this system is scored by: `generate` for QA and extraction; for
    classification the recipe's, checked against the server, or with `auto` the most exact
    one the server passes."""
    if task_type(recipe.task).request != LABELS:
        return "generate"
    wanted, where = baseline_config(recipe, key)[1].endpoint.scoring, client.settings.key
    if wanted in ("prompt_logprobs", "auto"):
        reply = client.call(probe_request(client.settings.model))
        try:
            if reply.response is None:
                raise FinetuneError(
                    f"{where}.scoring: the completions route failed the probe ({reply.error})"
                )
            check_echo_positions(reply.response, where)
            return "prompt_logprobs"
        except FinetuneError as exc:
            if wanted != "auto":
                raise
            log.info("%s: not prompt_logprobs: %s", key, exc)
    if wanted in ("top_logprobs", "auto"):
        try:
            check_first_tokens_apart(recipe.task.labels, where)
            probe = _chat(client.settings.model, [_turn("ping")], 1, top=5)
            if wanted == "top_logprobs" or _top_of(client.call(probe)):
                return "top_logprobs"
        except FinetuneError as exc:
            if wanted != "auto":
                raise
            log.info("%s: not top_logprobs: %s", key, exc)
    return "generate"


def _turn(content: str, role: str = "user") -> dict[str, str]:
    return {"role": role, "content": content}


def _chat(model: str, messages: list[dict[str, str]], max_tokens: int, top: int = 0) -> Request:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if top:
        body.update(logprobs=True, top_logprobs=top)
    return Request("chat", body, sum(len(m["content"]) for m in messages))


def chat_messages(recipe: Recipe, text: str, shots: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat turns an endpoint is sent for one item: its shots, then the item."""

    def user(t: str) -> dict[str, str]:
        instruction = untrained_instruction(recipe.task)  # an endpoint is never the specialist
        return _turn(f"{instruction}\n\n{t}" if instruction else t)

    turns = []
    for shot_text, answer in shots:
        turns += [user(shot_text), _turn(answer, "assistant")]
    return [*turns, user(text)]


def _requests(recipe, e, method, text, shots) -> list[Request]:
    """The requests one item needs (`e`: its endpoint config): one per label for
    `prompt_logprobs`, else one."""
    if method == "prompt_logprobs":
        instruction = untrained_instruction(recipe.task)
        fmt = PromptFormat("plain", instruction, recipe.task.template, None, " ", "")
        prompt = render_prompt(fmt, None, text, shots)
        return [
            Request(
                "completion",
                {
                    "model": e.model,
                    "prompt": f"{prompt} {label}",
                    "max_tokens": 1,
                    "temperature": 0,
                    "echo": True,
                    "logprobs": 1,
                },
                len(prompt),
            )
            for label in recipe.task.labels
        ]
    messages = chat_messages(recipe, text, shots)
    if method == "top_logprobs":
        return [_chat(e.model, messages, 1, top=e.top_logprobs)]
    return [_chat(e.model, messages, recipe.eval.max_new_tokens)]


def _runner(recipe: Recipe, method: str, infer: Inference, input_tokens: list[int]):
    def run(client, inputs, batch_size, share_prefix, on_batch=None):
        flat = [r for item in inputs for r in item]
        # Progress by request: an item with one request per label advances a share per answer.
        share = len(inputs) / len(flat) if flat else 1.0
        replies = iter(client.map(flat, on_done=on_batch and (lambda: on_batch(share))))
        predictions, details, output_tokens, latencies = [], [], [], []
        for i, requests in enumerate(inputs):
            mine = [next(replies) for _ in requests]
            prediction, detail = _read(recipe, method, requests, mine)
            predictions.append(prediction)
            details.append(detail)
            input_tokens[i] = sum(r.usage[0] for r in mine)
            output_tokens.append(sum(r.usage[1] for r in mine))
            latencies.append(1000 * max(r.seconds for r in mine))
        mean = sum(latencies) / len(latencies) / 1000 if latencies else 0.0
        n = client.settings.concurrency
        infer.measured = Measurement(latencies, mean, n)  # n items in flight over one latency
        return predictions, details, output_tokens

    return run


def _read(recipe: Recipe, method: str, requests: list[Request], replies: list) -> tuple[Any, dict]:
    """One item's prediction and details from its replies; nothing predicted on failure."""
    empty = task_type(recipe.task).empty()
    failed = next((r.error for r in replies if r.error), None)
    if failed:
        return empty, {"failed": failed}
    try:
        if method == "prompt_logprobs":
            scores = {
                label: round(echoed_logprob(r.response, q.chars), 5)
                for label, q, r in zip(recipe.task.labels, requests, replies, strict=True)
            }
            return max(scores, key=scores.get), {"label_logprobs": scores}
        if method == "top_logprobs":
            top = _top_of(replies[0])
            if top is None:
                raise ValueError("the response has no top_logprobs")
            scores, unlisted = top_logprob_scores(top, recipe.task.labels)
            detail = {"label_logprobs": {k: round(v, 5) for k, v in scores.items()}}
            if unlisted:
                detail["unlisted"] = unlisted
            if len(unlisted) == len(scores):
                return "", {**detail, "invalid": True}
            return max(scores, key=scores.get), detail
        text = replies[0].response["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return empty, {"failed": f"malformed response: {exc}"}
    return task_type(recipe.task).read(text, list(recipe.task.labels))


def _top_of(reply: Any) -> list[tuple[str, float]] | None:
    """The first answer token's alternatives in a chat response, or None."""
    try:
        first = reply.response["choices"][0]["logprobs"]["content"][0]
        return [(t["token"], float(t["logprob"])) for t in first["top_logprobs"]] or None
    except (KeyError, IndexError, TypeError):
        return None
