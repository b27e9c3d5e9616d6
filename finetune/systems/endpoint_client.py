"""Requests to an OpenAI-compatible endpoint, and the three ways its answers score a label.

The client is the official `openai` library's, which retries 408, 409, 429, 5xx, connection
errors and timeouts with exponential backoff and jitter, honouring `Retry-After`
(`max_retries`). Around it: a cache on disk (`ResponseCache`), keyed by endpoint, model and
request, so that a repeated or killed evaluation never pays twice for an answer it has; a
requests-per-minute limit; a spend cap that refuses a request before it could take the spend
past `max_usd` (its cost estimated from its prompt and its token limit, settled from the usage
the API returns); and the check that fails fast, before any work, on a missing or refused key,
an unknown model or an unreachable host. A request that still fails after its retries is a
`Reply` with an error: the item is counted as failed and scored wrong, never dropped. The key
is read from the environment variable the recipe names and goes nowhere but the client.

Scoring: `prompt_logprobs` sums the echoed log-probabilities of a label's tokens after the
prompt (completions with `echo`), the exact log-likelihood the local scorer computes, on a
server that passes the position probe (`check_echo_positions`); `top_logprobs` reads each
label's first answer token among the chat answer's top alternatives; `generate` maps a greedy
answer to a label by exact match after normalization.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.deps import require
from finetune.errors import FinetuneError
from finetune.tasks.labels import normalized


@dataclass(frozen=True)
class EndpointSettings:
    """One endpoint baseline's connection, limits and prices; `key` is its dotted recipe key."""

    base_url: str
    model: str
    key: str = "endpoint"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_seconds: float = 60.0
    max_retries: int = 5
    requests_per_minute: int | None = None
    max_usd: float | None = None
    input_usd_per_million: float = 0.0
    output_usd_per_million: float = 0.0


@dataclass(frozen=True)
class Request:
    """One API call: `route` is `chat` or `completion`; `chars` sizes its prompt for the cap."""

    route: str
    body: dict[str, Any]
    chars: int


@dataclass
class Reply:
    response: dict[str, Any] | None
    error: str | None = None
    seconds: float = 0.0
    cached: bool = False
    usage: tuple[int, int] = (0, 0)  # prompt and completion tokens, from the API's usage


class SpendCapReached(FinetuneError):
    pass


def api_key(settings: EndpointSettings) -> str:
    """The key from the environment variable the recipe names (never from the recipe)."""
    value = os.environ.get(settings.api_key_env, "")
    if not value:
        raise FinetuneError(
            f"{settings.key}.api_key_env: the environment variable {settings.api_key_env} that "
            f"should hold the key for {settings.base_url} is not set; export it, or name "
            "another variable"
        )
    return value


class ResponseCache:
    """Responses on disk by a digest of endpoint, model and request (never the key). SQLite
    commits each response as it comes, so a killed evaluation keeps every answer it had."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, body TEXT)")
        self._lock = threading.Lock()

    @staticmethod
    def key(settings: EndpointSettings, request: Request) -> str:
        what = [settings.base_url.rstrip("/"), settings.model, request.route, request.body]
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The response and the seconds it took when it was fetched."""
        with self._lock:
            row = self._db.execute("SELECT body FROM replies WHERE key = ?", (key,)).fetchone()
        if not row:
            return None
        stored = json.loads(row[0])
        return stored["response"], stored["seconds"]

    def put(self, key: str, response: dict[str, Any], seconds: float) -> None:
        body = json.dumps({"response": response, "seconds": seconds})
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, body))

    def close(self) -> None:
        self._db.close()


@dataclass
class SpendCap:
    """Spend so far and reserved for requests in flight; a request whose estimate would take
    the total past `max_usd` is refused before it is sent."""

    settings: EndpointSettings
    spent: float = 0.0
    reserved: float = 0.0
    # Prompt tokens per character: 1/3 until the API's usage says otherwise (English is ~1/4).
    tokens_per_char: float = 1 / 3
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        s = self.settings
        return (
            prompt_tokens * s.input_usd_per_million + completion_tokens * s.output_usd_per_million
        ) / 1e6

    def reserve(self, request: Request) -> float:
        limit = self.settings.max_usd
        with self._lock:
            estimate = self.cost(
                math.ceil(request.chars * self.tokens_per_char),
                request.body.get("max_tokens") or 0,
            )
            if limit is not None and self.spent + self.reserved + estimate > limit:
                raise SpendCapReached(
                    f"{self.settings.key}.max_usd: stopped before spending more than "
                    f"${limit:g} on {self.settings.model}: ${self.spent:.4f} spent, and the next "
                    f"request could cost ${estimate:.4f}. The answers so far are cached; raise "
                    "max_usd to go on"
                )
            self.reserved += estimate
            return estimate

    def settle(self, estimate: float, request: Request, usage: tuple[int, int]) -> None:
        with self._lock:
            self.reserved -= estimate
            self.spent += self.cost(*usage)
            if usage[0] and request.chars:
                self.tokens_per_char = max(self.tokens_per_char, usage[0] / request.chars)


class RateLimit:
    """At most `per_minute` requests started per minute, evenly spaced."""

    def __init__(self, per_minute: int | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        time.sleep(max(0.0, start - now))


class EndpointClient:
    """Requests to one endpoint through the cache, the rate limit and the spend cap."""

    def __init__(self, settings: EndpointSettings, cache: ResponseCache) -> None:
        self.settings, self.cache = settings, cache
        self.cap, self.limit = SpendCap(settings), RateLimit(settings.requests_per_minute)
        self.client = _openai_client(settings, settings.timeout_seconds, settings.max_retries)

    def call(self, request: Request) -> Reply:
        key = ResponseCache.key(self.settings, request)
        cached = self.cache.get(key)
        if cached is not None:  # its latency is the one measured when it was fetched
            response, seconds = cached
            return Reply(response, seconds=seconds, cached=True, usage=_usage(response))
        estimate = self.cap.reserve(request)
        self.limit.wait()
        start = time.perf_counter()
        try:
            response = self._send(request)
        except Exception as exc:  # after the client's retries: the item fails, the rest go on
            self.cap.settle(estimate, request, (0, 0))
            return Reply(None, _failure(exc), time.perf_counter() - start)
        seconds = time.perf_counter() - start
        usage = _usage(response)
        self.cap.settle(estimate, request, usage)
        self.cache.put(key, response, seconds)
        return Reply(response, None, seconds, usage=usage)

    def _send(self, request: Request) -> dict[str, Any]:
        route = self.client.chat.completions if request.route == "chat" else self.client.completions
        return route.create(**request.body).model_dump()

    def map(
        self, requests: Sequence[Request], on_done: Callable[[], None] | None = None
    ) -> list[Reply]:
        """Every request at the configured concurrency, replies in order; a spend cap reached
        stops the rest and is raised."""
        with ThreadPoolExecutor(self.settings.concurrency) as pool:
            futures = [pool.submit(self.call, r) for r in requests]
            for future in futures:
                future.add_done_callback(lambda _: on_done and on_done())
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                for future in pending:
                    future.cancel()
                raise failed[0].exception()
        return [f.result() for f in futures]


def _openai_client(settings: EndpointSettings, timeout: float, max_retries: int) -> Any:
    openai = require("openai", needed_for="endpoint baselines")
    return openai.OpenAI(
        base_url=settings.base_url,
        api_key=api_key(settings),
        timeout=timeout,
        max_retries=max_retries,
    )


def _usage(response: dict[str, Any]) -> tuple[int, int]:
    usage = response.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _failure(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}{f' {status}' if status else ''}: {text}"


def check_reachable(settings: EndpointSettings) -> None:
    """Fail fast, naming the recipe key, on a refused key (401), an unknown model (404) or a
    host that does not answer; one small request, not retried."""
    openai = require("openai", needed_for="endpoint baselines")
    client = _openai_client(settings, min(settings.timeout_seconds, 15.0), max_retries=0)
    try:
        client.chat.completions.create(
            model=settings.model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
        )
    except openai.AuthenticationError as exc:
        raise FinetuneError(
            f"{settings.key}.api_key_env: {settings.base_url} refused the key in "
            f"{settings.api_key_env} ({exc.status_code}); check the key, or the variable named"
        ) from None
    except openai.NotFoundError as exc:
        raise FinetuneError(
            f"{settings.key}.model: {settings.base_url} has no model {settings.model!r} "
            f"({exc.status_code}); check the name the server lists at /models"
        ) from None
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise FinetuneError(
            f"{settings.key}.base_url: no answer from {settings.base_url} ({type(exc).__name__}); "
            "check the address and that the server is running"
        ) from None


# --- scoring ------------------------------------------------------------------------------------


def check_first_tokens_apart(labels: Sequence[str], key: str) -> None:
    """`top_logprobs` reads one token per label: labels one of which begins another cannot be
    told apart by their first token."""
    folded = {label: normalized(label) for label in labels}
    for a in labels:
        for b in labels:
            if a != b and folded[b].startswith(folded[a]):
                raise FinetuneError(
                    f"{key}.scoring: top_logprobs reads each label's first answer token, but "
                    f"{a!r} begins {b!r}, so their first tokens may be the same; use "
                    "prompt_logprobs or generate for these labels"
                )


def top_logprob_scores(
    top: Sequence[tuple[str, float]], labels: Sequence[str]
) -> tuple[dict[str, float], list[str]]:
    """Each label's score from the first answer token's alternatives: the log-probability of
    the likeliest listed token that begins the label (after normalization). A label with none
    listed gets the smallest listed log-probability, which bounds it from above; those labels
    are returned too."""
    floor = min((lp for _, lp in top), default=-math.inf)
    scores, unlisted = {}, []
    for label in labels:
        folded = normalized(label)
        matches = [lp for token, lp in top if (t := normalized(token)) and folded.startswith(t)]
        if matches:
            scores[label] = max(matches)
        else:
            scores[label], unlisted = floor, [*unlisted, label]
    return scores, unlisted


def echoed_logprob(response: dict[str, Any], prompt_chars: int) -> float:
    """The summed log-probability of the echoed tokens at or after character `prompt_chars`
    (the label's), from a completions response with `echo` and `logprobs`."""
    logprobs = (response["choices"][0].get("logprobs") or {}) if response.get("choices") else {}
    offsets, values = logprobs.get("text_offset"), logprobs.get("token_logprobs")
    if not offsets or values is None:
        raise ValueError("the response has no echoed token log-probabilities")
    picked = [lp for off, lp in zip(offsets, values, strict=False) if off >= prompt_chars]
    if not picked or any(lp is None for lp in picked):
        raise ValueError("the response does not score the label's tokens")
    return float(sum(picked))


# A text whose continuation any language model predicts: counting. On a server that scores each
# echoed token with the distribution of the position before it (correct), the later numbers
# are near certain; one that scores them with the next position's distribution (llama-cpp-
# python 0.3.36, its issue #1983) finds them improbable.
PROBE_TEXT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20"
PROBE_MEAN_LOGPROB = -1.0


def probe_request(model: str) -> Request:
    body = {
        "model": model,
        "prompt": PROBE_TEXT,
        "max_tokens": 1,
        "temperature": 0,
        "echo": True,
        "logprobs": 1,
    }
    return Request("completion", body, len(PROBE_TEXT))


def check_echo_positions(response: dict[str, Any], key: str) -> None:
    """Refuse a server whose echoed log-probabilities are not those of each token given the
    tokens before it."""
    half = PROBE_TEXT.index("11")
    try:
        logprobs = response["choices"][0]["logprobs"]
        values = [
            lp
            for off, lp in zip(logprobs["text_offset"], logprobs["token_logprobs"], strict=False)
            if half <= off < len(PROBE_TEXT) and lp is not None
        ]
    except (KeyError, IndexError, TypeError):
        values = []
    if not values:
        raise FinetuneError(
            f"{key}.scoring: prompt_logprobs needs echoed token log-probabilities, and the "
            "server returned none; use top_logprobs or generate (or auto)"
        )
    mean = sum(values) / len(values)
    if mean < PROBE_MEAN_LOGPROB:
        raise FinetuneError(
            f"{key}.scoring: the server's echoed log-probabilities fail the position probe (mean "
            f"{mean:.2f} on a counting sequence any model predicts, against at least "
            f"{PROBE_MEAN_LOGPROB:g}): it scores each token at the wrong position "
            "(llama-cpp-python 0.3.36 does, its issue #1983), so its label log-likelihoods would "
            "be wrong; use top_logprobs or generate (or auto)"
        )
