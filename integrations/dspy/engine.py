"""The DSPy 3.4 engine over a power sampler (DSPy's supported route for custom LMs): it runs
every call on the model's shared :class:`~power_sampling.engine.scheduler.Scheduler` after
:mod:`.translate` has turned it into a :class:`~power_sampling.request.Request`.

A full queue (``QueueFull``) is DSPy's ``RateLimitError``, which ``dspy.LM`` retries
``num_retries`` times with backoff, as it retries a hosted model's 429. Concurrent calls
(``dspy.Evaluate`` threads, ``acall``) with equal settings share batched sampler runs;
``n > 1`` (DSPy completes the same Request n times) draws each repeat with the next seed.
"""

from __future__ import annotations

import contextlib
import json
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from dspy import lm15

from ...config import PowerSamplingConfig
from ...engine.registry import load_shared
from ...engine.scheduler import QueueFull, Scheduler, scheduler_for
from ...generation import Generation
from ...request import Request, resolve_settings
from ...samplers.power_sampler import PowerSampler
from .translate import (
    call_settings,
    delta_event,
    end_event,
    model_string,
    response,
    sampler_request,
)

__all__ = ["AsyncPowerEngine", "PowerEngine"]

RETRY_AFTER = 1.0
"""Seconds DSPy waits before retrying a call the model's queue had no room for."""


@contextlib.contextmanager
def _queue_full_is_a_rate_limit() -> Iterator[None]:
    try:
        yield
    except QueueFull as exc:
        raise lm15.RateLimitError(str(exc), retry_after=RETRY_AFTER) from exc


class PowerEngine:
    """A DSPy 3.4 engine (``complete``/``stream``/``close``) over a power sampler.

    ``model`` is a model name or path (None: the embedded default), loaded on first use and
    shared in the process (``device``, ``dtype``, ``model_kwargs`` as for loading); or pass a
    ``backend`` / ``sampler`` you already have. ``config`` (a ``PowerSamplingConfig`` or a preset
    name) plus ``settings`` (config fields) set the sampler. ``name`` labels the model in the
    model string (default: the model's name). Copies (``deepcopy``) are the engine itself, and
    a pickled engine reloads its model by reference.
    """

    supported_params = frozenset({"max_tokens", "stop", "seed", "temperature", "response_format"})
    supports_response_schema = True

    def __init__(
        self,
        model: str | None = None,
        config: PowerSamplingConfig | str | None = None,
        *,
        backend: Any = None,
        sampler: PowerSampler | None = None,
        name: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        **settings: Any,
    ) -> None:
        if sum(x is not None for x in (model, backend, sampler)) > 1:
            raise ValueError("pass one of model=, backend= or sampler=, not several")
        if base_url is not None and (backend is not None or sampler is not None):
            raise ValueError("base_url= is for model= (a served model); a backend is built")
        base = PowerSamplingConfig.preset(config) if isinstance(config, str) else config
        base = base or (sampler.config if sampler is not None else PowerSamplingConfig())
        self.config: PowerSamplingConfig = resolve_settings(base, settings)
        self._backend = sampler.backend if sampler is not None else backend
        self._load: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "model_kwargs": model_kwargs,
        }
        if base_url is not None:
            self._load["base_url"] = base_url
        self._api_key = api_key  # never in dump_state: a saved program holds no key
        if model is not None:
            self.model_ref: str = str(model)
        elif base_url is not None:
            self.model_ref = "default"  # the only model the server serves
        elif self._backend is not None:
            self.model_ref = getattr(self._backend, "name", None) or type(self._backend).__name__
        else:
            from ...backends.models import DEFAULT_MODEL

            self.model_ref = DEFAULT_MODEL
        self.name = name or Path(self.model_ref).name
        self._lock = threading.Lock()
        self._repeats: dict[int, tuple[lm15.Request, int]] = {}

    @property
    def model(self) -> str:
        """The DSPy model string of this engine's settings."""
        return model_string(self.name, self.config, self.model_ref)

    @property
    def scheduler(self) -> Scheduler:
        """The model's shared scheduler, loading the model on first use."""
        if self._backend is None:
            key = {"api_key": self._api_key} if self._api_key is not None else {}
            self._backend = load_shared(self.model_ref, **self._load, **key)
        return scheduler_for(self._backend)

    def with_settings(self, **settings: Any) -> PowerEngine:
        """An engine with ``settings`` changed, on the same model (nothing is loaded again)."""
        engine = PowerEngine(
            self.model_ref,
            self.config,
            name=self.name,
            api_key=self._api_key,
            **self._load,
            **settings,
        )
        engine._backend = self._backend
        return engine

    # -- DSPy engine protocol ---------------------------------------------------------------

    def complete(self, request: lm15.Request) -> lm15.Response:
        ours = self._translate(request)
        with _queue_full_is_a_rate_limit():
            return self._response(self.scheduler.generate(ours))

    def stream(self, request: lm15.Request) -> Iterator[Any]:
        ours = self._translate(request)
        yield lm15.StreamStartEvent(model=request.model)
        final = None
        with _queue_full_is_a_rate_limit():
            for chunk in self.scheduler.stream(ours):
                if chunk.text:
                    yield delta_event(chunk.text)
                final = chunk.generation or final
        assert final is not None
        yield end_event(self._response(final))

    def close(self) -> None:
        """Nothing to release: the model and its worker are shared and stop when idle."""

    def dump_state(self) -> dict[str, Any]:
        """Settings only (JSON): the model reference, config and loading options; never weights."""
        return {
            "model": self.model_ref,
            "name": self.name,
            "config": self.config.model_dump(),
            **{k: v for k, v in self._load.items() if v is not None},
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> PowerEngine:
        """An engine with the saved settings; the model is loaded by reference on first use.
        Equal states (e.g. a saved LM's engine and async engine) share one engine."""
        key = json.dumps(state, sort_keys=True)
        engine = _ENGINES.get(key)
        if engine is None:
            options = {k: v for k, v in state.items() if k not in ("model", "config")}
            config = PowerSamplingConfig(**state["config"])
            engine = _ENGINES[key] = cls(state.get("model"), config, **options)
        return engine

    def __deepcopy__(self, memo: dict[int, Any]) -> PowerEngine:
        return self  # immutable settings over a shared model: a copy would only load it again

    def __reduce__(self) -> tuple[Any, ...]:
        return (PowerEngine.load_state, (self.dump_state(),))

    # -- translation --------------------------------------------------------------------------

    def _translate(self, request: lm15.Request) -> Request:
        config = call_settings(request, self.config)
        repeat = self._repeat_count(request)
        if repeat and config.seed is not None:
            # DSPy's n > 1 completes one Request n times: independent samples
            config = config.replace(seed=config.seed + repeat)
        return sampler_request(request, config, self.scheduler.sampler)

    def _repeat_count(self, request: lm15.Request) -> int:
        """How many times this very Request object was completed before (DSPy's n > 1)."""
        with self._lock:
            seen = self._repeats.get(id(request))
            count = seen[1] + 1 if seen is not None and seen[0] is request else 0
            self._repeats[id(request)] = (request, count)
            while len(self._repeats) > 256:
                self._repeats.pop(next(iter(self._repeats)))
            return count

    def _response(self, generation: Generation) -> lm15.Response:
        config = generation.config or self.config  # the settings that ran
        return response(generation, config, model_string(self.name, config, self.model_ref))


_ENGINES: weakref.WeakValueDictionary[str, PowerEngine] = weakref.WeakValueDictionary()


class AsyncPowerEngine:
    """The async counterpart DSPy's ``acall`` needs; it shares the sync engine's scheduler."""

    def __init__(self, engine: PowerEngine) -> None:
        self.engine = engine

    async def complete(self, request: lm15.Request) -> lm15.Response:
        ours = self.engine._translate(request)
        with _queue_full_is_a_rate_limit():
            return self.engine._response(await self.engine.scheduler.agenerate(ours))

    async def stream(self, request: lm15.Request) -> AsyncIterator[Any]:
        ours = self.engine._translate(request)
        yield lm15.StreamStartEvent(model=request.model)
        final = None
        with _queue_full_is_a_rate_limit():
            async for chunk in self.engine.scheduler.astream(ours):
                if chunk.text:
                    yield delta_event(chunk.text)
                final = chunk.generation or final
        assert final is not None
        yield end_event(self.engine._response(final))

    async def aclose(self) -> None:
        """Nothing to release (see :meth:`PowerEngine.close`)."""

    def dump_state(self) -> dict[str, Any]:
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncPowerEngine:
        return cls(PowerEngine.load_state(state))

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncPowerEngine:
        return self
