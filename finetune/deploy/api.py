"""The HTTP routes of `finetune serve` (FastAPI), over the runs `finetune.deploy.serve` loads.

Errors take OpenAI's shape, `{"error": {"message", "type", "code"}}`: 400 for a malformed or
invalid body, 404 for a model not served, 413 for a text or a request too large, 503 with
Retry-After when the run's queue is full, 500 with the cause when inference fails. Sampling
settings (`temperature`, `max_tokens`, ...) are accepted and ignored: a run answers as it was
evaluated.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finetune.deploy.serve import MAX_INPUT_CHARS, Overloaded, Served, answer_text, new_id
from finetune.deps import require
from finetune.systems.answers import Answers


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[str]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI's sampling settings: accepted, ignored
    model: str
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    prompt: str | list[str]
    echo: bool = False


def build_app(served: dict[str, Served]) -> Any:
    fastapi = require("fastapi", needed_for="finetune serve")
    app = fastapi.FastAPI(title="finetune serve", docs_url=None, redoc_url=None)
    _error_handlers(app)
    _info_routes(app, served)
    _predict_routes(app, served)
    _openai_routes(app, served)
    return app


def _error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    def error(status: int, message: str, kind: str, headers: dict | None = None) -> Any:
        body = {"error": {"message": message, "type": kind, "code": status}}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Any, exc: ApiError) -> Any:
        return error(exc.status, exc.message, exc.kind)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Any, exc: Overloaded) -> Any:
        message = f"the server is busy: too many texts are waiting; retry after {exc.retry_after} s"
        return error(503, message, "overloaded", {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        return error(400, _validation_message(exc.errors()), "invalid_request_error")

    @app.exception_handler(Exception)
    async def failed(request: Any, exc: Exception) -> Any:
        return error(500, f"inference failed: {type(exc).__name__}: {exc}", "server_error")


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one line: `body.messages: Field required; ...`."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()))
        if e.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', e['msg'])})")
        else:
            parts.append(f"{where}: {e['msg']}")
    return "; ".join(dict.fromkeys(parts))


def _info_routes(app: Any, served: dict[str, Served]) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": {n: _counts(s) for n, s in served.items()}}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_entry(s) for s in served.values()]}


def _counts(s: Served) -> dict[str, Any]:
    b = s.batcher
    counts = {"requests": b.requests, "batches": b.batches, "pending": b.pending}
    return counts | (s.escalation.counts() if s.escalation else {})


def _model_entry(s: Served) -> dict[str, Any]:
    task = s.recipe.task
    return {
        "id": s.name,
        "object": "model",
        "created": int(s.run_dir.stat().st_mtime),
        "owned_by": "finetune",
        "run": str(s.run_dir),
        "task": task.type,
        **({"labels": list(task.labels)} if task.type == "classification" else {}),
        "chat": s.prompted,
    }


def _predict_routes(app: Any, served: dict[str, Served]) -> None:
    @app.post("/v1/predict")
    async def predict(body: PredictRequest) -> dict[str, Any]:
        return await _predict(_run(served, body.model), body.input)

    @app.post("/v1/classify")
    async def classify(body: PredictRequest) -> dict[str, Any]:
        run = _run(served, body.model)
        if run.recipe.task.type != "classification":
            raise ApiError(400, f"{run.name} is a {run.recipe.task.type} run; use /v1/predict")
        return await _predict(run, body.input)


async def _predict(run: Served, given: str | list[str]) -> dict[str, Any]:
    answers = await _answers(run, _texts(run, given))
    data = [{"index": i, **_without_id(r)} for i, r in enumerate(answers.rows)]
    return {"object": "list", "model": run.name, "data": data}


def _without_id(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "id"}


def _run(served: dict[str, Served], name: str) -> Served:
    if name not in served:
        raise ApiError(
            404, f"model {name!r} is not served here; served: {', '.join(served)}", "not_found"
        )
    return served[name]


def _texts(run: Served, given: str | list[str]) -> list[str]:
    """The request's texts, refused when empty or larger than the server takes."""
    texts = [given] if isinstance(given, str) else given
    if not texts:
        raise ApiError(400, "input: give a text or a non-empty list of texts")
    if len(texts) > run.batcher.max_queue:
        raise ApiError(413, f"input: at most {run.batcher.max_queue} texts per request")
    for i, text in enumerate(texts):
        if len(text) > MAX_INPUT_CHARS:
            raise ApiError(
                413, f"input[{i}]: {len(text)} characters; at most {MAX_INPUT_CHARS} per text"
            )
    return texts


async def _answers(run: Served, texts: list[str]) -> Answers:
    return await asyncio.wrap_future(run.answer(texts))


def _openai_routes(app: Any, served: dict[str, Served]) -> None:
    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> dict[str, Any]:
        run = _prompted(served, body.model)
        answers = await _answers(run, _texts(run, _strip(run, _last_user(body.messages))))
        row = answers.rows[0]
        message = {"role": "assistant", "content": answer_text(run.recipe, row)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        choice["finetune"] = _without_id(row)
        return _completion("chat.completion", run, [choice], answers)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict[str, Any]:
        run = _prompted(served, body.model)
        if body.echo:
            raise ApiError(400, "echo: not supported; this server answers with the run's answer")
        texts = [_strip(run, p) for p in _texts(run, body.prompt)]
        answers = await _answers(run, texts)
        choices = [_text_choice(i, run, r) for i, r in enumerate(answers.rows)]
        return _completion("text_completion", run, choices, answers)


def _text_choice(index: int, run: Served, row: dict[str, Any]) -> dict[str, Any]:
    text = answer_text(run.recipe, row)
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": "stop"}
    return {**choice, "finetune": _without_id(row)}


def _prompted(served: dict[str, Served], name: str) -> Served:
    run = _run(served, name)
    if not run.prompted:
        raise ApiError(
            400,
            f"{run.name} is not a prompted model (it reads the text alone); "
            "use /v1/predict or /v1/classify",
        )
    return run


def _last_user(messages: list[Message]) -> str:
    """The text of the last user message (content parts joined)."""
    for message in reversed(messages):
        if message.role == "user":
            content = message.content or ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            return content
    raise ApiError(400, "messages: no user message")


def _strip(run: Served, text: str) -> str:
    """`text` without a leading copy of the run's instruction (and the blank line after it)."""
    for instruction in run.instructions:
        if text.startswith(instruction + "\n\n"):
            return text[len(instruction) + 2 :]
    return text


def _completion(kind: str, run: Served, choices: list, answers: Answers) -> dict[str, Any]:
    """OpenAI's response shape; each choice also carries the run's whole answer (`finetune`:
    the label's probabilities, entity spans), as `/v1/predict` gives it."""
    prompt, completion = sum(answers.input_tokens), sum(answers.output_tokens)
    return {
        "id": new_id("chatcmpl" if kind == "chat.completion" else "cmpl"),
        "object": kind,
        "created": int(time.time()),
        "model": run.name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def run_server(
    served: dict[str, Served], *, host: str = "127.0.0.1", port: int = 8000, ready: Any = None
) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn shuts down cleanly, then the signal goes on)."""
    uvicorn = require("uvicorn", needed_for="finetune serve")
    config = uvicorn.Config(
        build_app(served), host=host, port=port, log_level="warning", access_log=False
    )
    server = _server_class(uvicorn)(config)
    if ready is not None:
        _announce_when_started(server, ready)
    server.run()
    # uvicorn raises the signal it stopped on again once shut down, but asyncio's runner can
    # take a late Ctrl-C for a cancellation and return: Ctrl-C ends the command all the same.
    if server.stopped_by == signal.SIGINT:
        raise KeyboardInterrupt


def _server_class(uvicorn: Any) -> type:
    class Server(uvicorn.Server):
        """uvicorn's server, remembering the signal that stopped it."""

        stopped_by: int | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.stopped_by = sig
            super().handle_exit(sig, frame)

    return Server


def _announce_when_started(server: Any, ready: Callable[[], None]) -> None:
    def wait() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            ready()

    threading.Thread(target=wait, daemon=True).start()
