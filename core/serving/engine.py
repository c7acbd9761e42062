"""Where calls run: :class:`LocalEngine` on a backend in this process, through its scheduler.

An engine turns a :class:`~.translate.Call` into events: :class:`Started` once every choice is
queued (so a bad prompt or a full queue is known before a response starts), then
:class:`~.translate.Delta` pieces of content and one :class:`~.translate.Choice` per finished
choice. :class:`~.replicas.RayEngine` offers the same two methods over Ray actors.

Every choice is a :class:`~power_sampling.engine.scheduler.Job` of the backend's
:class:`~power_sampling.engine.scheduler.Scheduler`, so concurrent requests of any settings
share the model's calls step by step. Leaving the event stream early (a client that disconnects,
a cancelled task) cancels the call's jobs, which frees their places at their next model call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..backends.base import Backend, TextBackend, validate_prefixes
from ..chat import tools as tc
from ..engine.scheduler import Job, Scheduler
from ..generation import Chunk
from ..request import Request
from ..samplers.power_sampler import PowerSampler
from . import model_api, model_run
from .model_api import ModelCall
from .translate import Call, Choice, Delta, Prepared, finish, prepare

__all__ = ["Engine", "Event", "LocalEngine", "ShuttingDown", "Started"]

_DONE = object()


class ShuttingDown(RuntimeError):
    """The server is stopping and cancelled this request; retry elsewhere or later."""


@dataclass(frozen=True)
class Started:
    """Every choice of the call is queued; ``prompt_tokens`` per choice."""

    prompt_tokens: tuple[int, ...]


Event = Started | Delta | Choice


class Engine(Protocol):
    """What the HTTP app needs from where the model runs."""

    @property
    def max_context(self) -> int | None: ...

    def stream(self, call: Call) -> AsyncIterator[Event]: ...

    async def model_call(self, call: ModelCall) -> dict[str, Any]: ...

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    def close(self) -> None: ...


class LocalEngine:
    """Runs calls on ``backend`` (or a ``PowerSampler``'s backend) in this process.

    ``window``, ``max_batch``, ``max_queue`` and ``max_kv_tokens`` configure the scheduler: at
    most ``max_batch`` choices run at once (within ``max_kv_tokens`` KV slots), their model calls
    merged in rounds of at most ``window`` seconds' wait; beyond ``max_queue`` waiting choices a
    call fails at once with :class:`~power_sampling.engine.scheduler.QueueFull`.
    ``close_backend``: :meth:`close` also closes the backend (its ``close()``, where it has one,
    e.g. a vLLM async engine's processes), for a backend this engine owns.
    """

    def __init__(
        self,
        backend: Backend | PowerSampler,
        *,
        window: float = 0.005,
        max_batch: int = 64,
        max_queue: int = 256,
        max_kv_tokens: int | None = None,
        close_backend: bool = False,
    ) -> None:
        self._close_backend = close_backend
        self.scheduler = Scheduler(
            backend,
            window=window,
            max_batch=max_batch,
            max_queue=max_queue,
            max_kv_tokens=max_kv_tokens,
        )
        self._jobs: set[Job] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def sampler(self) -> PowerSampler:
        return self.scheduler.sampler

    @property
    def active(self) -> int:
        """Choices queued or running."""
        with self._lock:
            return len(self._jobs)

    async def stream(self, call: Call) -> AsyncIterator[Event]:
        """The call's events; see the module docstring."""
        prepared = await asyncio.to_thread(prepare, call, self.sampler)  # tokenizer work
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        jobs: list[Job] = []

        def put(item: tuple[int, Any]) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is listening
                self._cancel(jobs)

        try:
            for k, choice in enumerate(prepared):
                job = self._submit(choice.request, lambda c, k=k: put((k, c)))
                job.future.add_done_callback(functools.partial(_done, put, k))
                jobs.append(job)
            yield Started(tuple(len(p.request.prompt) for p in prepared))
            splitters = [tc.ReplySplitter(tools=bool(p.tools)) for p in prepared]
            left = len(prepared)
            while left:
                k, item = await events.get()
                if item is _DONE:
                    self._check(jobs[k])
                    left -= 1
                    continue
                for event in _read(prepared[k], splitters[k], item):
                    yield event
        finally:
            self._cancel(jobs)

    @property
    def max_context(self) -> int | None:
        """The model's context length in tokens, if known."""
        return getattr(self.scheduler.backend, "max_context", None)

    async def model_call(self, call: ModelCall) -> dict[str, Any]:
        """A model-API call's ``choices`` and ``usage`` (:mod:`.model_api`): one job of the
        scheduler; cancelling the await cancels it."""
        backend = self.scheduler.backend
        prepared = await asyncio.to_thread(model_api.prepare, call, backend)  # tokenizer work
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down; retry later")
            job = self.scheduler.submit_work(
                functools.partial(model_run.run, prepared), prepared.slots
            )
            self._jobs.add(job)
        try:
            answer: dict[str, Any] = await asyncio.wrap_future(job.future)
            return answer
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            if self._closed:
                raise ShuttingDown("the server is shutting down; retry later") from None
            raise
        finally:
            self._cancel([job])

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        """``text``'s token ids on this engine's model."""
        return await asyncio.to_thread(
            _text(self.scheduler.backend).encode, text, add_special_tokens=add_special_tokens
        )

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens`` on this engine's model."""
        if tokens:
            validate_prefixes([tokens], self.scheduler.backend.vocab_size)
        return await asyncio.to_thread(_text(self.scheduler.backend).decode, tokens)

    def close(self) -> None:
        """Cancel what is queued or running and stop the scheduler's worker; calls after this
        fail with :class:`ShuttingDown`."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
        self._cancel(jobs)
        self.scheduler.close()
        close = getattr(self.scheduler.backend, "close", None)
        if self._close_backend and callable(close):
            close()

    # -- jobs ------------------------------------------------------------------------------------

    def _submit(self, request: Request, on_chunk: Any) -> Job:
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down; retry later")
            job = self.scheduler.submit(request, on_chunk)  # QueueFull when full
            self._jobs.add(job)
        return job

    def _check(self, job: Job) -> None:
        """Raise the job's error; a job cancelled by :meth:`close` is :class:`ShuttingDown`."""
        try:
            job.future.result(timeout=0)
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            raise ShuttingDown("the server is shutting down; retry later") from None

    def _cancel(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.cancel()
        with self._lock:
            self._jobs.difference_update(jobs)


def _text(backend: Backend) -> TextBackend:
    if not isinstance(backend, TextBackend):
        raise ValueError("this server's model has no tokenizer: it takes and returns token ids")
    return backend


def _done(put: Any, index: int, _: Any) -> None:
    put((index, _DONE))


def _read(prepared: Prepared, splitter: tc.ReplySplitter, chunk: Chunk) -> list[Event]:
    events: list[Event] = []
    if text := splitter.push(chunk.text):
        events.append(Delta(prepared.index, text))
    if chunk.generation is not None:
        events.append(finish(prepared, splitter, chunk.generation))
    return events
