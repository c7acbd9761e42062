"""One engine per model: every request in flight advances together, its model calls merged.

Every entry point (LangChain, DSPy, the HTTP server, Ray replicas) hands its
:class:`~power_sampling.request.Request` to the :class:`Scheduler` of its backend
(:func:`scheduler_for`). Each admitted request runs its sampler in a thread of its own, against
a lane of the scheduler's :class:`~.batcher.Batcher`, which merges the model calls of all
running requests at every step (continuous batching): a request joins the running batch at its
first call and leaves it when it ends, so nobody waits for another request to finish.

A backend whose engine batches concurrent calls itself
(:class:`~power_sampling.backends.continuous.ContinuousBackend`, vLLM's async engine) gets each
request's calls directly instead: the engine schedules every sub-call as it comes, so a power
step never waits for a round of the batcher, and plain decoding streams as one engine request.
With the batcher in front of that engine anyway (``merge=True``), power sampling got no
faster (``results/vllm-async.md``) and each step waited for a round, so merging is off there.

- A request's random numbers come from its own seed (or fresh entropy), and every prefix of a
  merged call carries its own seed, so a seeded request gives the same output alone or among
  others (up to batched arithmetic; see the docs' "Concurrency").
- Admission: at most ``max_batch`` requests run at once, and their KV footprint (rows × tokens,
  :func:`footprint`) stays within ``max_kv_tokens`` when one is set; beyond that requests wait
  in a queue of ``max_queue``, and one more raises :class:`QueueFull` at once. A request whose
  own footprint exceeds the budget can never run: ``ValueError`` with the numbers.
- A bad prompt fails its own request only.
- :meth:`Scheduler.submit` returns a :class:`Job` at once; ``Job.cancel()`` (also called when a
  caller stops reading a stream or an ``await`` is cancelled) stops the request at its next
  model call and frees its place (a continuous backend also aborts the call in flight). A
  ``timeout`` on :meth:`Scheduler.generate` or :meth:`Scheduler.stream` (and their async forms)
  is a deadline for the whole request: past it the request is cancelled and ``TimeoutError`` is
  raised.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..backends.base import Backend
from ..backends.cancel import cancellation
from ..backends.continuous import ContinuousBackend
from ..config import PowerSamplingConfig
from ..generation import Chunk, Generation
from ..request import Request
from ..samplers.power_sampler import PowerSampler
from .batcher import Batcher, Cancelled, Lane

__all__ = ["Job", "QueueFull", "Scheduler", "footprint", "scheduler_for"]

logger = logging.getLogger(__name__)

_STOP = object()


class QueueFull(RuntimeError):
    """The scheduler already holds ``max_queue`` waiting requests; retry later."""


@dataclass(eq=False)
class Job:
    """A submitted request: its result arrives in ``future``; ``on_chunk`` gets streamed pieces.
    A job of :meth:`Scheduler.submit_work` has no request: its ``work`` makes the model calls."""

    request: Request | None
    on_chunk: Callable[[Chunk], None] | None = None
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    work: Callable[[Backend], Any] | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _ended: threading.Event = field(default_factory=threading.Event)  # its place is free
    _slots: int = 0

    def cancel(self) -> None:
        """Stop this request at its next model call (or before it starts)."""
        self._cancelled.set()
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


def rows(config: PowerSamplingConfig) -> int:
    """The most sequences one request of ``config`` decodes at once."""
    if config.method == "power":
        return max(config.num_candidates, config.top_k * config.num_rollouts, 1)
    if config.method == "best_of_n":
        return config.best_of
    if config.method == "smc":
        return config.num_particles
    return 1


def footprint(config: PowerSamplingConfig, prompt_tokens: int) -> int:
    """KV slots (rows × tokens) a request holds at most: every row of :func:`rows` as long as
    the prompt, the output and a rollout past it."""
    longest = prompt_tokens + config.max_new_tokens
    if config.method == "power":
        longest += config.rollout_length
    return rows(config) * longest


class Scheduler:
    """Runs requests on one backend, their model calls merged; see the module docstring."""

    def __init__(
        self,
        backend: Backend | PowerSampler,
        *,
        window: float = 0.005,
        max_batch: int = 64,
        max_queue: int = 256,
        max_kv_tokens: int | None = None,
        merge: bool | None = None,
    ) -> None:
        self.sampler = backend if isinstance(backend, PowerSampler) else PowerSampler(backend)
        self.max_batch, self.max_queue, self.max_kv_tokens = max_batch, max_queue, max_kv_tokens
        self.batcher = Batcher(self.sampler.backend, window=window)
        self.merge = not isinstance(self.backend, ContinuousBackend) if merge is None else merge
        """Whether the requests' calls go through the batcher (default: unless the backend
        batches concurrent calls itself)."""
        self._lock = threading.Lock()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._used = 0  # KV slots of the running requests

    @property
    def backend(self) -> Backend:
        return self.sampler.backend

    @property
    def active(self) -> int:
        """Requests running or waiting."""
        with self._lock:
            return len(self._running) + len(self._waiting)

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, request: Request, on_chunk: Callable[[Chunk], None] | None = None) -> Job:
        """Queue ``request``; the returned job's future gets its ``Generation``. A bad prompt,
        or one that can never fit the KV budget, raises ``ValueError`` here."""
        ids = self.sampler.encode_prompt(request.prompt)
        self.sampler.check_fits(ids)
        job = Job(replace(request, prompt=ids), on_chunk)
        job._slots = footprint(request.config, len(ids))
        if self.max_kv_tokens is not None and job._slots > self.max_kv_tokens:
            raise ValueError(
                f"the request needs {job._slots} KV slots ({rows(request.config)} rows of up "
                f"to {job._slots // rows(request.config)} tokens) but the engine's budget is "
                f"{self.max_kv_tokens}; ask for fewer tokens or a smaller budget of rows"
            )
        return self._queue(job)

    def submit_work(self, work: Callable[[Backend], Any], slots: int) -> Job:
        """Queue ``work(backend)``, a function of a few direct model calls (the server's model
        API), admitted like a request of ``slots`` KV slots; its calls are merged with the
        others'. The job's future gets what ``work`` returns."""
        if self.max_kv_tokens is not None and slots > self.max_kv_tokens:
            raise ValueError(
                f"the call needs {slots} KV slots but the engine's budget is "
                f"{self.max_kv_tokens}; ask for fewer tokens or fewer sequences"
            )
        job = Job(None, work=work)
        job._slots = slots
        return self._queue(job)

    def _queue(self, job: Job) -> Job:
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{self.max_queue} requests are already waiting for the model; retry later "
                    "(or raise max_queue)"
                )
            self._waiting.append(job)
            self._admit()
        return job

    def generate(self, request: Request, *, timeout: float | None = None) -> Generation:
        """Run ``request`` and wait for its generation (at most ``timeout`` seconds)."""
        job = self.submit(request)
        try:
            return job.future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise _timed_out(timeout) from None
        finally:
            job.cancel()  # a no-op once finished; else e.g. KeyboardInterrupt while waiting

    def stream(self, request: Request, *, timeout: float | None = None) -> Iterator[Chunk]:
        """Yield the request's chunks as they are committed; stopping early cancels it, and so
        does ``timeout`` (seconds for the whole request), with ``TimeoutError``."""
        chunks: queue.Queue[Any] = queue.Queue()
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.submit(request, on_chunk=chunks.put)
        job.future.add_done_callback(lambda _: chunks.put(_STOP))
        try:
            while True:
                wait = None if deadline is None else max(deadline - time.monotonic(), 0)
                try:
                    chunk = chunks.get(timeout=wait)
                except queue.Empty:
                    raise _timed_out(timeout) from None
                if chunk is _STOP:
                    break
                yield chunk
            job.future.result()  # raises the request's error, if any
        finally:
            job.cancel()

    async def agenerate(self, request: Request, *, timeout: float | None = None) -> Generation:
        """:meth:`generate` without blocking the event loop; cancelling the await cancels it."""
        job = self.submit(request)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)
        except TimeoutError:
            if job.future.done() and not job.future.cancelled():
                raise  # the request's own error
            raise _timed_out(timeout) from None
        finally:
            job.cancel()  # a no-op once finished

    async def astream(
        self, request: Request, *, timeout: float | None = None
    ) -> AsyncIterator[Chunk]:
        """:meth:`stream` for async callers; closing the iterator, cancelling or ``timeout``
        cancels it."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        deadline = None if timeout is None else loop.time() + timeout

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is listening
                job.cancel()

        job = self.submit(request, on_chunk=put)
        job.future.add_done_callback(lambda _: put(_STOP))
        try:
            while True:
                wait = None if deadline is None else max(deadline - loop.time(), 0)
                try:
                    chunk = await asyncio.wait_for(chunks.get(), wait)
                except TimeoutError:
                    raise _timed_out(timeout) from None
                if chunk is _STOP:
                    break
                yield chunk
            if not job.future.cancelled():
                job.future.result()
        finally:
            job.cancel()

    def close(self) -> None:
        """Cancel what is waiting and wait for the running requests to end."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
            running = list(self._running)
        for job in waiting:
            job.cancel()
        for job in running:
            job._ended.wait()  # the future may be set before the job leaves the batch

    # -- running ---------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Start waiting requests while they fit (under the lock)."""
        while self._waiting and len(self._running) < self.max_batch:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            budget = self.max_kv_tokens
            if budget is not None and self._running and self._used + job._slots > budget:
                return
            self._waiting.popleft()
            self._running.add(job)
            self._used += job._slots
            # The lane joins now, so the next round waits for this request's first call.
            lane = self.batcher.lane(job._cancelled.is_set) if self.merge else None
            threading.Thread(
                target=self._run, args=(job, lane), name="power-sampling", daemon=True
            ).start()

    def _run(self, job: Job, lane: Lane | None) -> None:
        try:
            if job.cancelled or not job.future.set_running_or_notify_cancel():
                return
            sampler = copy.copy(self.sampler)
            if lane is not None:
                sampler.backend = lane
            try:
                with cancellation(job._cancelled.is_set):
                    if job.work is not None:
                        job.future.set_result(job.work(sampler.backend))
                    else:
                        _generate(sampler, job)
            except Cancelled:
                pass
            except BaseException as exc:  # the caller's future carries the error
                if not job.future.done():
                    job.future.set_exception(exc)
            if not job.future.done():  # cancelled while running
                job.future.set_exception(concurrent.futures.CancelledError())
        finally:
            if lane is not None:
                lane.close()
            with self._lock:
                self._running.discard(job)
                self._used -= job._slots
                self._admit()
            job._ended.set()


def _generate(sampler: PowerSampler, job: Job) -> None:
    assert job.request is not None
    for _, chunk in sampler.run([job.request], lambda _: job.cancelled):
        if job.on_chunk is not None:
            job.on_chunk(chunk)
        if chunk.generation is not None:
            job.future.set_result(chunk.generation)


def _timed_out(timeout: float | None) -> TimeoutError:
    return TimeoutError(
        f"the request took longer than timeout={timeout:g} s and was cancelled; raise the "
        "timeout or ask for less work (max_new_tokens, num_rollouts, a smaller preset)"
    )


_SHARED: weakref.WeakValueDictionary[int, Scheduler] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def scheduler_for(backend: Backend) -> Scheduler:
    """The process-wide scheduler of ``backend``: every adapter on one model shares it."""
    with _SHARED_LOCK:
        scheduler = _SHARED.get(id(backend))
        if scheduler is None or scheduler.backend is not backend:
            scheduler = _SHARED[id(backend)] = Scheduler(backend)
        return scheduler
