"""The FastAPI app: OpenAI's ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``,
and vLLM's ``/tokenize`` and ``/detokenize``.

Requests become :class:`~.translate.Call` objects (settings checked here, so bad ones are a 400
before any work), run on an :class:`~.engine.Engine`, and come back whole or as server-sent
events; a text completion for the model API (:mod:`.model_api`) comes back whole. Status
codes: 400 bad request or settings (the config's own message) or a request over the server's
:class:`~.limits.RequestLimits`, 401/413/415 from the :class:`~.access.AccessGuard`, 404
another model or path, 405 a wrong method, 503 a full queue or a server that is shutting down
(``Retry-After`` set), 504 a request past the server's deadline. Every error body has OpenAI's
shape. A client that disconnects, streaming or not, cancels its choices; shutting down cancels
what is still running once uvicorn's graceful period is over. A stream that fails after it
started ends with an ``error`` event and ``[DONE]``.
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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ..config import PowerSamplingConfig
from ..engine.scheduler import QueueFull
from ..errors import FieldError, error_message, field_path
from . import model_api
from .access import AccessGuard, AccessPolicy, PayloadTooLarge
from .engine import Engine, Event, ShuttingDown, Started
from .limits import RequestLimits
from .responses import DONE, Reply, error_body, event
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from .translate import Call, Choice, Delta, chat_call, completion_call

__all__ = ["create_app"]

logger = logging.getLogger("power_sampling.serving")

_POLL = 0.25  # seconds between checks that a waiting (non-streaming) client is still there


class _ModelNotFound(LookupError):
    pass


class _DeadlinePassed(TimeoutError):
    pass


def create_app(
    engine: Engine,
    *,
    model: str,
    defaults: PowerSamplingConfig,
    access: AccessPolicy | None = None,
    limits: RequestLimits | None = None,
    request_timeout: float | None = None,
    logprobs_mode: str = "raw_logprobs",
    root: str | None = None,
) -> FastAPI:
    """An OpenAI-compatible app serving ``engine`` under the name ``model``; requests' settings
    apply on top of ``defaults``, each request is held to ``limits`` and ends after
    ``request_timeout`` seconds, and ``access`` decides who gets in. ``logprobs_mode``: what the
    model API's log-probs are (:mod:`.model_api`); ``root``: the model's folder, named in
    ``/v1/models`` (where clients load its tokenizer). Shutting the app down closes the
    engine."""
    access = access or AccessPolicy()
    limits = limits or RequestLimits()
    limits.check(defaults, 1)  # the server's own defaults must be within its limits
    model_api.check_mode(logprobs_mode)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(engine.close)

    app = FastAPI(title="power-sampling", lifespan=lifespan)
    app.state.engine = engine
    app.add_middleware(AccessGuard, policy=access)
    if access.cors_origins:  # outermost, so that preflight requests get CORS headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(access.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(HTTPException)
    async def http_error(_: HTTPRequest, exc: HTTPException) -> JSONResponse:
        body = error_body(str(exc.detail), "invalid_request_error", None, exc.status_code)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: HTTPRequest, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=400)

    created = int(time.time())

    def check_model(name: str | None) -> None:
        if name not in (None, model):
            raise _ModelNotFound(f"the model {name!r} does not exist: this server serves {model!r}")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model, "object": "model", "created": created, "owned_by": "power-sampling"}
        card |= {"root": root or model, "max_model_len": engine.max_context}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def serve(http: HTTPRequest, schema: type[Any], to_call: Callable[..., Call]) -> Any:
        try:
            body = schema.model_validate(await http.json())
            check_model(body.model)
            if isinstance(body, CompletionRequest) and model_api.wanted(body):
                return await serve_model(http, body)
            call = to_call(body, defaults)
            limits.check(call.config, len(call.prompts) * call.n)
            events = engine.stream(call)
            first = await anext(events)  # Started, or the call's error (bad prompt, full queue)
        except Exception as exc:
            return _error(exc)
        assert isinstance(first, Started)
        reply = Reply(model, chat=schema is ChatCompletionRequest, n=call.n)
        if body.stream:
            sse = _sse(reply, events, len(first.prompt_tokens), body.include_usage, request_timeout)
            return StreamingResponse(sse, media_type="text/event-stream")
        try:
            choices = await _until_disconnect(http, _deadline(_collect(events), request_timeout))
        except Exception as exc:
            return _error(exc)
        if choices is None:
            return Response(status_code=499)  # nobody is listening
        return JSONResponse(reply.whole(choices))

    async def serve_model(http: HTTPRequest, body: CompletionRequest) -> Any:
        """A model-API completion (:mod:`.model_api`), whole."""
        try:
            call = model_api.model_call(body, defaults, limits, logprobs_mode)
            work = _deadline(engine.model_call(call), request_timeout)
            answer = await _until_disconnect(http, work)
        except Exception as exc:
            return _error(exc)
        if answer is None:
            return Response(status_code=499)  # nobody is listening
        reply = Reply(model, chat=False, n=call.n)
        return JSONResponse({**reply.head(), **answer})

    @app.post("/tokenize")
    async def tokenize(http: HTTPRequest) -> Any:
        """vLLM's ``/tokenize`` of a text ``prompt``."""
        try:
            body = TokenizeRequest.model_validate(await http.json())
            check_model(body.model)
            tokens = await engine.tokenize(body.prompt, body.add_special_tokens)
        except Exception as exc:
            return _error(exc)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.max_context}

    @app.post("/detokenize")
    async def detokenize(http: HTTPRequest) -> Any:
        """vLLM's ``/detokenize`` of token ids."""
        try:
            body = DetokenizeRequest.model_validate(await http.json())
            check_model(body.model)
            text = await engine.detokenize(body.tokens)
        except Exception as exc:
            return _error(exc)
        return {"prompt": text}

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


async def _deadline(work: Any, seconds: float | None) -> Any:
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        raise _DeadlinePassed(_late(seconds)) from None


def _late(seconds: float | None) -> str:
    return (
        f"the request ran past this server's deadline of {seconds:g} s and was stopped "
        "(power-sampling serve --request-timeout); ask for fewer tokens or a smaller budget"
    )


async def _until_disconnect(http: HTTPRequest, work: Any) -> Any:
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
    reply: Reply,
    events: AsyncIterator[Event],
    choices: int,
    include_usage: bool,
    deadline: float | None,
) -> AsyncIterator[str]:
    """The stream's events; an error after the start (the deadline included) is sent as an
    ``error`` event, then ``[DONE]``. Leaving early (the client disconnected) closes
    ``events``, which cancels the call."""
    finished: list[Choice] = []
    try:
        if reply.chat:
            for index in range(choices):
                yield reply.opening(index)
        async with asyncio.timeout(deadline):
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
        if isinstance(exc, TimeoutError):
            exc = _DeadlinePassed(_late(deadline))
        status, body = _error_parts(exc)
        logger.warning("stream failed with %d: %s", status, body["error"]["message"])
        yield event(body)
        yield DONE
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
    if isinstance(exc, PayloadTooLarge):
        return 413, error_body(message, "invalid_request_error", None, "payload_too_large")
    if isinstance(exc, _DeadlinePassed):
        return 504, error_body(message, "timeout")
    if isinstance(exc, RecursionError):
        message = "the request is nested too deeply to parse; flatten its JSON"
        return 400, error_body(message, "invalid_request_error")
    if isinstance(exc, ValueError | TypeError):  # pydantic's ValidationError included
        return 400, error_body(message, "invalid_request_error", _param(exc))
    logger.error("request failed", exc_info=exc)
    return 500, error_body(f"internal error: {message}", "server_error")


def _param(exc: BaseException) -> str | None:
    """The request field an error is about."""
    if isinstance(exc, FieldError):
        return exc.field
    if not isinstance(exc, ValidationError) or not exc.errors():
        return None
    # A value that fits no member of a union has one error per member, each located under
    # the member's name (``stop.str``, ``stop.list[str]``): the field is what they share.
    locations = [tuple(e.get("loc", ())) for e in exc.errors()]
    shared = locations[0]
    for location in locations[1:]:
        while location[: len(shared)] != shared:
            shared = shared[:-1]
    return field_path(shared) or None
