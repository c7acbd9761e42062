"""Scale-out: calls spread over Ray actors, each holding a backend and its own scheduler.

``power-sampling serve --replicas N`` starts N :class:`Replica` actors (one GPU each with
``--gpus-per-replica 1``), on the local machine or on a Ray cluster (``--ray-address``); the
HTTP server sends each call to the replica with the fewest calls in flight. Each replica batches
its own concurrent requests.

Answers do not depend on the replica: a seeded request carries its seed (choice i's seed is
derived from it, :func:`~.translate.choice_seed`) and a replica's sampler draws only from that
seed, so any replica gives the answer one process gives. Requests without a seed stay unseeded
(so they can share batches); their ``power_sampling.seed`` in the response is null.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..backends.base import Backend
from .engine import Event, LocalEngine
from .model_api import ModelCall
from .translate import Call

__all__ = ["RayEngine", "Replica"]

logger = logging.getLogger("power_sampling.serving")


class Replica:
    """One model copy (``load()`` builds its backend) and its engine; run as a Ray actor."""

    def __init__(self, load: Callable[[], Backend], engine_options: dict[str, Any]) -> None:
        self.engine = LocalEngine(load(), **engine_options)
        self.calls = 0

    async def stream(self, call: Call) -> AsyncIterator[Event]:
        self.calls += 1
        async for item in self.engine.stream(call):
            yield item

    async def model_call(self, call: ModelCall) -> dict[str, Any]:
        self.calls += 1
        return await self.engine.model_call(call)

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return await self.engine.tokenize(text, add_special_tokens)

    async def detokenize(self, tokens: list[int]) -> str:
        return await self.engine.detokenize(tokens)

    async def max_context(self) -> int | None:
        return self.engine.max_context

    async def pid(self) -> int:
        return os.getpid()

    async def served(self) -> int:
        """Calls this replica has run (for logs and tests)."""
        return self.calls

    async def close(self) -> None:
        self.engine.close()


class RayEngine:
    """The :class:`~.engine.Engine` over ``replicas`` Ray actors, each with a backend from
    ``load`` (a picklable function, e.g. ``functools.partial(load_shared, "Qwen/...")``).

    Ray is started here (``ray.init(address, **init_options)``) unless it already is, and shut
    down by :meth:`close` when started here. ``num_cpus``/``num_gpus`` are each replica's
    resources; ``engine_options`` go to each replica's :class:`~.engine.LocalEngine`.
    """

    def __init__(
        self,
        load: Callable[[], Backend],
        replicas: int,
        *,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        init_options: dict[str, Any] | None = None,
        **engine_options: Any,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"replicas={replicas} is invalid: use 1 or more")
        try:
            import ray
        except ImportError as exc:
            raise ImportError("--replicas needs Ray: pip install 'power-sampling[ray]'") from exc
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            options = {"include_dashboard": False, "log_to_driver": False, **(init_options or {})}
            ray.init(address=address, **options)
        actor = ray.remote(Replica).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self.actors: list[Any] = [actor.remote(load, engine_options) for _ in range(replicas)]
        self.pids: list[int] = ray.get([a.pid.remote() for a in self.actors])  # loaded
        self.max_context: int | None = ray.get(self.actors[0].max_context.remote())
        self._in_flight = [0] * replicas
        self._turn = itertools.count()
        self._closed = False
        logger.info("%d replicas ready (pids %s)", replicas, self.pids)

    def _pick(self) -> int:
        """The replica with the fewest calls in flight (ties taken in turn)."""
        start = next(self._turn) % len(self.actors)
        order = [(start + i) % len(self.actors) for i in range(len(self.actors))]
        return min(order, key=lambda k: self._in_flight[k])

    async def stream(self, call: Call) -> AsyncIterator[Event]:
        """The call's events from one replica; leaving early cancels it there."""
        k = self._pick()
        self._in_flight[k] += 1
        refs = self.actors[k].stream.remote(call)
        try:
            async for ref in refs:
                yield await ref
        finally:
            self._in_flight[k] -= 1
            self._ray.cancel(refs)  # a no-op once the stream has ended

    async def model_call(self, call: ModelCall) -> dict[str, Any]:
        """A model-API call on the replica with the fewest calls in flight."""
        k = self._pick()
        self._in_flight[k] += 1
        ref = self.actors[k].model_call.remote(call)
        try:
            answer: dict[str, Any] = await ref
            return answer
        finally:
            self._in_flight[k] -= 1
            self._ray.cancel(ref)  # a no-op once it has ended

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        ids: list[int] = await self.actors[self._pick()].tokenize.remote(text, add_special_tokens)
        return ids

    async def detokenize(self, tokens: list[int]) -> str:
        text: str = await self.actors[self._pick()].detokenize.remote(tokens)
        return text

    def served(self) -> list[int]:
        """Calls each replica has run."""
        return list(self._ray.get([a.served.remote() for a in self.actors]))

    def close(self) -> None:
        """Stop every replica's work, end the actors, and Ray itself if started here."""
        ray = self._ray
        if self._closed or not ray.is_initialized():
            return
        self._closed = True
        try:
            ray.get([a.close.remote() for a in self.actors], timeout=30)
        except Exception as exc:  # a replica that died or hangs is killed below anyway
            logger.warning("closing replicas: %s", exc)
        for actor in self.actors:
            ray.kill(actor)
        if self._owns_ray:
            ray.shutdown()
