"""The FastAPI app: OpenAI's ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``.

Requests become :class:`~.translate.Call` objects (settings checked here, so bad ones are a 400
before any work), run on an :class:`~.engine.Engine`, and come back whole or as server-sent
events. Status codes: 400 bad request or settings (the config's own message), 404 another
model, 503 a full queue or a server that is shutting down (``Retry-After`` set). A client that
disconnects, streaming or not, cancels its choices; shutting down cancels what is still running
once uvicorn's graceful period is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from ..config import PowerSamplingConfig
from ..engine.scheduler import QueueFull
from ..errors import error_message
from .engine import Engine, Event, ShuttingDown, Started
from .responses import DONE, Reply, error_body, event
from .schemas import ChatCompletionRequest, CompletionRequest
from .translate import Call, Choice, Delta, chat_call, completion_call

__all__ = ["create_app"]

logger = logging.getLogger("power_sampling.serving")

_POLL = 0.25  # seconds between checks that a waiting (non-streaming) client is still there


class _ModelNotFound(LookupError):
    pass


def create_app(engine: Engine, *, model: str, defaults: PowerSamplingConfig) -> FastAPI:
    """An OpenAI-compatible app serving ``engine`` under the name ``model``; requests' settings
    apply on top of ``defaults``. Shutting the app down closes the engine."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="power-sampling", lifespan=lifespan)
    app.state.engine = engine
    created = int(time.time())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model, "object": "model", "created": created, "owned_by": "power-sampling"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def serve(http: HTTPRequest, schema: type[Any], to_call: Callable[..., Call]) -> Any:
        try:
            body = schema.model_validate(await http.json())
            if body.model not in (None, model):
                raise _ModelNotFound(
                    f"the model {body.model!r} does not exist: this server serves {model!r}"
                )
            call = to_call(body, defaults)
            events = engine.stream(call)
            first = await anext(events)  # Started, or the call's error (bad prompt, full queue)
        except Exception as exc:
            return _error(exc)
        assert isinstance(first, Started)
        reply = Reply(model, chat=schema is ChatCompletionRequest, n=call.n)
        if body.stream:
            sse = _sse(reply, events, len(first.prompt_tokens), body.include_usage)
            return StreamingResponse(sse, media_type="text/event-stream")
        try:
            choices = await _until_disconnect(http, _collect(events))
        except Exception as exc:
            return _error(exc)
        if choices is None:
            return Response(status_code=499)  # nobody is listening
        return JSONResponse(reply.whole(choices))

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HTTPRequest) -> Any:
        return await serve(http, ChatCompletionRequest, chat_call)

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest) -> Any:
        return await serve(http, CompletionRequest, completion_call)

    return app


async def _collect(events: AsyncIterator[Event]) -> list[Choice]:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        choices = [e async for e in events if isinstance(e, Choice)]
    return sorted(choices, key=lambda c: c.index)


async def _until_disconnect(http: HTTPRequest, work: Any) -> list[Choice] | None:
    """``work``'s result, or None (and ``work`` cancelled) once the client has gone."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_POLL)
            if done:
                return task.result()
            if await http.is_disconnected():
                logger.info("client disconnected: request cancelled")
                return None
    finally:
        task.cancel()


async def _sse(
    reply: Reply, events: AsyncIterator[Event], choices: int, include_usage: bool
) -> AsyncIterator[str]:
    """The stream's events; an error after the start is sent as an ``error`` event. Leaving
    early (the client disconnected) closes ``events``, which cancels the call."""
    finished: list[Choice] = []
    try:
        if reply.chat:
            for index in range(choices):
                yield reply.opening(index)
        async for item in events:
            if isinstance(item, Delta):
                yield reply.delta(item.index, item.text)
            elif isinstance(item, Choice):
                finished.append(item)
                for chunk in reply.ending(item):
                    yield chunk
        if include_usage:
            yield reply.usage_chunk(finished)
        yield DONE
    except Exception as exc:
        status, body = _error_parts(exc)
        logger.warning("stream failed with %d: %s", status, body["error"]["message"])
        yield event(body)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _error(exc: BaseException) -> JSONResponse:
    status, body = _error_parts(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _error_parts(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error body of ``exc`` (unwrapping a Ray task error's cause)."""
    exc = getattr(exc, "cause", None) or exc
    message = error_message(exc)
    if isinstance(exc, _ModelNotFound):
        return 404, error_body(message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, QueueFull | ShuttingDown):
        return 503, error_body(message, "server_overloaded")
    if isinstance(exc, ValueError | TypeError):  # pydantic's ValidationError included
        return 400, error_body(message, "invalid_request_error", _param(exc))
    logger.error("request failed", exc_info=exc)
    return 500, error_body(f"internal error: {message}", "server_error")


def _param(exc: BaseException) -> str | None:
    """The request field a validation error is about."""
    if not isinstance(exc, ValidationError) or not exc.errors():
        return None
    return ".".join(str(p) for p in exc.errors()[0].get("loc", ())) or None
