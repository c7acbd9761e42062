"""One worker per model: queued requests, batched when they share settings, streamed to callers.

Every adapter (LangChain, DSPy, the HTTP server) hands its :class:`~power_sampling.Request` to
the :class:`Scheduler` of its backend (:func:`scheduler_for`), so requests from any of them that
arrive together share one batched sampler run, and the model runs one batch at a time.

- Requests queued within ``window`` seconds with equal settings (:attr:`Request.batch_key`) run
  as one batch of at most ``max_batch``. A request with a seed runs alone, so its output does
  not depend on what else was queued.
- A bad prompt fails its own request, never its batch.
- :meth:`Scheduler.submit` returns a :class:`Job` at once; ``Job.cancel()`` (also called when a
  caller stops reading a stream or an ``await`` is cancelled) stops the request at the sampler's
  next step and frees its place.
- At most ``max_queue`` requests wait; one more raises :class:`QueueFull` at once instead of
  waiting without bound.
- The worker thread starts on demand and exits after a minute without work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..backends.base import Backend
from ..generation import Chunk, Generation
from ..request import Request
from ..samplers.power_sampler import PowerSampler

__all__ = ["Job", "QueueFull", "Scheduler", "scheduler_for"]

logger = logging.getLogger(__name__)

_STOP = object()
_IDLE_EXIT = 60.0  # seconds an idle worker waits before its thread exits
_ANNOUNCED_WAIT = 1.0  # seconds the worker waits for requests announced by expect()


class QueueFull(RuntimeError):
    """The scheduler already holds ``max_queue`` waiting requests; retry later."""


@dataclass(eq=False)
class Job:
    """A submitted request: its result arrives in ``future``; ``on_chunk`` gets streamed pieces."""

    request: Request
    on_chunk: Callable[[Chunk], None] | None = None
    future: concurrent.futures.Future[Generation] = field(default_factory=concurrent.futures.Future)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop this request at the sampler's next step (or before it starts)."""
        self._cancelled.set()
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class Scheduler:
    """Runs requests on one backend from a worker thread; see the module docstring."""

    def __init__(
        self,
        backend: Backend | PowerSampler,
        *,
        window: float = 0.005,
        max_batch: int = 8,
        max_queue: int = 256,
    ) -> None:
        self.sampler = backend if isinstance(backend, PowerSampler) else PowerSampler(backend)
        self.window, self.max_batch, self.max_queue = window, max_batch, max_queue
        self._queue: queue.Queue[Any] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._expected = 0  # requests announced by expect(), for the worker to wait for

    @property
    def backend(self) -> Backend:
        return self.sampler.backend

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, request: Request, on_chunk: Callable[[Chunk], None] | None = None) -> Job:
        """Queue ``request``; the returned job's future gets its ``Generation``."""
        job = Job(request, on_chunk)
        with self._lock:
            if self._queue.qsize() >= self.max_queue:
                raise QueueFull(
                    f"{self.max_queue} requests are already waiting for the model; retry later "
                    "(or raise max_queue)"
                )
            if self._worker is None:
                self._queue = queue.Queue()
                self._worker = threading.Thread(
                    target=self._loop, args=(self._queue,), name="power-sampling", daemon=True
                )
                self._worker.start()
            self._queue.put(job)
        return job

    @contextlib.contextmanager
    def expect(self, count: int) -> Iterator[None]:
        """Announce ``count`` requests about to be submitted from several threads (e.g. a
        LangChain ``batch``): the worker waits up to a second for them, so they share one batch
        even when the threads start slowly."""
        with self._lock:
            self._expected += count
        try:
            yield
        finally:
            with self._lock:
                self._expected -= count

    def generate(self, request: Request) -> Generation:
        """Run ``request`` and wait for its generation."""
        job = self.submit(request)
        try:
            return job.future.result()
        except BaseException:
            job.cancel()  # e.g. KeyboardInterrupt while waiting
            raise

    def stream(self, request: Request) -> Iterator[Chunk]:
        """Yield the request's chunks as they are committed; stopping early cancels it."""
        chunks: queue.Queue[Any] = queue.Queue()
        job = self.submit(request, on_chunk=chunks.put)
        job.future.add_done_callback(lambda _: chunks.put(_STOP))
        try:
            while (chunk := chunks.get()) is not _STOP:
                yield chunk
            job.future.result()  # raises the request's error, if any
        finally:
            job.cancel()

    async def agenerate(self, request: Request) -> Generation:
        """:meth:`generate` without blocking the event loop; cancelling the await cancels it."""
        job = self.submit(request)
        try:
            return await asyncio.wrap_future(job.future)
        finally:
            job.cancel()  # a no-op once finished

    async def astream(self, request: Request) -> AsyncIterator[Chunk]:
        """:meth:`stream` for async callers; closing the iterator or cancelling cancels it."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is listening
                job.cancel()

        job = self.submit(request, on_chunk=put)
        job.future.add_done_callback(lambda _: put(_STOP))
        try:
            while (chunk := await chunks.get()) is not _STOP:
                yield chunk
            if not job.future.cancelled():
                job.future.result()
        finally:
            job.cancel()

    def close(self) -> None:
        """Finish what is queued, then stop the worker thread (a later call starts a new one)."""
        with self._lock:
            worker, work, self._worker = self._worker, self._queue, None
        if worker is not None:
            work.put(_STOP)
            worker.join()

    # -- the worker ------------------------------------------------------------------------------

    def _loop(self, work: queue.Queue[Any]) -> None:
        while True:
            try:
                job = work.get(timeout=_IDLE_EXIT)
            except queue.Empty:
                with self._lock:  # idle: exit (submit starts a new worker when needed)
                    if work.empty() and self._worker is threading.current_thread():
                        self._worker = None
                        return
                continue
            if job is _STOP:
                return
            jobs, start = [job], time.monotonic()
            while len(jobs) < self.max_batch:
                announced = len(jobs) < min(self._expected, self.max_batch)
                wait = start + (_ANNOUNCED_WAIT if announced else self.window) - time.monotonic()
                if wait <= 0:
                    break
                try:
                    more = work.get(timeout=wait)
                except queue.Empty:
                    break
                if more is _STOP:
                    work.put(_STOP)  # run what was collected, then stop
                    break
                jobs.append(more)
            groups: dict[Any, list[Job]] = {}
            for item in jobs:
                seeded = item.request.config.seed is not None
                groups.setdefault(object() if seeded else item.request.batch_key, []).append(item)
            with self._run_lock:
                for group in groups.values():
                    self._run(group)

    def _run(self, jobs: list[Job]) -> None:
        ready: list[tuple[Job, Request]] = []
        for job in jobs:  # a bad prompt fails its own request, not the batch
            if job.cancelled or not job.future.set_running_or_notify_cancel():
                continue
            try:
                ids = self.sampler.encode_prompt(job.request.prompt)
                self.sampler.check_fits(ids)
                ready.append((job, replace(job.request, prompt=ids)))
            except Exception as exc:
                job.future.set_exception(exc)
        if not ready:
            return
        try:
            requests = [request for _, request in ready]
            for index, chunk in self.sampler.run(requests, lambda i: ready[i][0].cancelled):
                job = ready[index][0]
                if job.on_chunk is not None:
                    job.on_chunk(chunk)
                if chunk.generation is not None:
                    job.future.set_result(chunk.generation)
        except BaseException as exc:  # the callers' futures carry the error
            for job, _ in ready:
                if not job.future.done():
                    job.future.set_exception(exc)
        for job, _ in ready:  # cancelled while running
            if not job.future.done():
                job.future.set_exception(concurrent.futures.CancelledError())


_SHARED: weakref.WeakValueDictionary[int, Scheduler] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def scheduler_for(backend: Backend) -> Scheduler:
    """The process-wide scheduler of ``backend``: every adapter on one model shares it."""
    with _SHARED_LOCK:
        scheduler = _SHARED.get(id(backend))
        if scheduler is None or scheduler.backend is not backend:
            scheduler = _SHARED[id(backend)] = Scheduler(backend)
        return scheduler
