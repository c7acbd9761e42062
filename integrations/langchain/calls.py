"""How one LangChain call runs on the model's scheduler: under a deadline (``timeout``), with
retries of what is retryable (``max_retries``), always streamed so token callbacks fire on
``invoke`` as on ``stream`` (as ChatOllama does).

``timeout`` is seconds for the whole call, retries included: past it the request is cancelled
(it stops at its next model call and frees its place) and ``TimeoutError`` is raised. The one
retryable failure of a local model is a full queue (:class:`~power_sampling.engine.scheduler.
QueueFull`, the analogue of a hosted API's 429); it is retried ``max_retries`` times with
exponential backoff. Errors of the request itself (a bad prompt or setting) are never retried.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ...engine.scheduler import Job, QueueFull, Scheduler
from ...generation import Chunk, Generation
from ...request import Request

__all__ = ["CallOptions", "astream", "run_all", "stream"]

logger = logging.getLogger("power_sampling.integrations.langchain.chat_model")

BACKOFF = 0.5
"""Seconds before the first retry; doubled for each further one, at most :data:`MAX_BACKOFF`."""
MAX_BACKOFF = 8.0


@dataclass(frozen=True)
class CallOptions:
    """A call's ``timeout`` (seconds, None: none) and ``max_retries``."""

    timeout: float | None = None
    max_retries: int = 0

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout={self.timeout!r} is invalid: use seconds > 0, or None")
        if isinstance(self.max_retries, bool) or not (
            isinstance(self.max_retries, int) and self.max_retries >= 0
        ):
            raise ValueError(f"max_retries={self.max_retries!r} is invalid: use an integer >= 0")

    def deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _timed_out(options: CallOptions) -> TimeoutError:
    return TimeoutError(
        f"the call took longer than timeout={options.timeout:g} s and was cancelled; raise the "
        "timeout or ask for less work (max_new_tokens, num_rollouts, a smaller preset)"
    )


def _retry_delay(attempt: int, options: CallOptions, deadline: float | None) -> float | None:
    """Seconds to wait before retrying a full queue, or None when no retry is left."""
    delay = min(BACKOFF * 2**attempt, MAX_BACKOFF)
    left = _left(deadline)
    if attempt >= options.max_retries or (left is not None and left <= delay):
        return None
    logger.info("the model's queue is full; retry %d in %.1f s", attempt + 1, delay)
    return delay


def stream(scheduler: Scheduler, request: Request, options: CallOptions) -> Iterator[Chunk]:
    """The request's chunks, retried while the queue is full, cancelled at the deadline."""
    try:
        yield from _stream(scheduler, request, options)
    except TimeoutError:
        raise _timed_out(options) from None


def _stream(scheduler: Scheduler, request: Request, options: CallOptions) -> Iterator[Chunk]:
    deadline = options.deadline()
    attempt = 0
    while True:
        chunks = scheduler.stream(request, timeout=_left(deadline))
        try:
            first = next(chunks)  # submits: a full queue raises here, before any output
        except QueueFull:
            delay = _retry_delay(attempt, options, deadline)
            if delay is None:
                raise
            time.sleep(delay)
            attempt += 1
            continue
        yield first
        yield from chunks
        return


async def astream(
    scheduler: Scheduler, request: Request, options: CallOptions
) -> AsyncIterator[Chunk]:
    """:func:`stream` for async callers; the event loop never blocks."""
    try:
        async for chunk in _astream(scheduler, request, options):
            yield chunk
    except TimeoutError:
        raise _timed_out(options) from None


async def _astream(
    scheduler: Scheduler, request: Request, options: CallOptions
) -> AsyncIterator[Chunk]:
    deadline = options.deadline()
    attempt = 0
    while True:
        chunks = scheduler.astream(request, timeout=_left(deadline))
        try:
            first = await anext(chunks)
        except QueueFull:
            delay = _retry_delay(attempt, options, deadline)
            if delay is None:
                raise
            await asyncio.sleep(delay)
            attempt += 1
            continue
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()
        return


def _submit(
    scheduler: Scheduler,
    request: Request,
    on_chunk: Callable[[Chunk], None],
    options: CallOptions,
    deadline: float | None,
) -> Job:
    attempt = 0
    while True:
        try:
            return scheduler.submit(request, on_chunk=on_chunk)
        except QueueFull:
            delay = _retry_delay(attempt, options, deadline)
            if delay is None:
                raise
            time.sleep(delay)
            attempt += 1


def _put(pieces: queue.Queue[tuple[int, Chunk | None]], index: int, chunk: Chunk) -> None:
    pieces.put((index, chunk))


def run_all(
    scheduler: Scheduler,
    requests: Sequence[Request],
    options: CallOptions,
    on_text: Callable[[int, str], Any] | None = None,
) -> list[Generation]:
    """Run ``requests`` at once (their model calls merged) and wait for all of them; ``on_text``
    gets each committed piece (request index, text) in the calling thread."""
    deadline = options.deadline()
    pieces: queue.Queue[tuple[int, Chunk | None]] = queue.Queue()
    jobs: list[Job] = []
    try:
        for i, request in enumerate(requests):
            job = _submit(scheduler, request, functools.partial(_put, pieces, i), options, deadline)
            job.future.add_done_callback(lambda _, i=i: pieces.put((i, None)))
            jobs.append(job)
        running = len(jobs)
        while running:
            try:
                i, chunk = pieces.get(timeout=_left(deadline))
            except queue.Empty:
                raise _timed_out(options) from None
            if chunk is None:
                running -= 1
            elif on_text is not None and chunk.text:
                on_text(i, chunk.text)
        return [job.future.result() for job in jobs]
    finally:
        for job in jobs:
            job.cancel()
