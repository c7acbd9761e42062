"""DSPy integration: any DSPy program, power-sampled.

    import dspy
    from power_sampling.integrations.dspy import power_lm

    dspy.configure(lm=power_lm(alpha=4, num_rollouts=8))   # the embedded SmolLM2-135M-Instruct

``power_lm`` returns an ordinary ``dspy.LM`` whose engine (DSPy 3.4's supported route for custom
LMs) runs a :class:`~power_sampling.PowerSampler`. The engine only translates:

- ``Request.system`` and ``Request.messages`` become chat messages for the tokenizer's template;
  ``max_tokens`` -> ``max_new_tokens``, ``stop`` -> stop strings, ``seed`` -> the sampler seed.
- ``temperature``: the proposal is the base model at temperature 1 and the target is p^alpha, so
  None and 1.0 run the sampler as configured, 0 makes it deterministic (seed 0 unless a seed is
  set) and 0.7, the value ``dspy.Predict`` sends by itself when ``n > 1``, is accepted as "draw
  diverse samples" (which the sampler does). Any other value is refused with the fix (set alpha).
- Per-call sampler settings travel in ``metadata={"alpha": 2, ...}`` (config field names).
- ``n > 1``: DSPy completes the same Request n times; each repeat draws with the next seed.
- Concurrent calls (``dspy.Evaluate`` threads, ``acall``) queue to one worker thread that runs
  requests arriving within ``batch_window`` seconds with equal settings as one ``generate_batch``.

DSPy's cache key holds the model string, the messages and the call's kwargs (metadata included),
not engine state, so the model string carries the settings: ``power/<model>@a4-k8-m8-<digest>``,
where the digest covers the model reference and every config field.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import dspy
    from dspy import lm15
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "power_sampling.integrations.dspy needs DSPy: pip install 'power-sampling[dspy]'"
    ) from exc

from power_sampling.config import PowerSamplingConfig
from power_sampling.generation import Chunk, Generation
from power_sampling.sampler import PowerSampler

__all__ = ["AsyncPowerEngine", "PowerEngine", "model_string", "power_lm"]

_SETTINGS = frozenset(PowerSamplingConfig.model_fields)
_ACCEPTED_TEMPERATURES = (0.0, 0.7, 1.0)  # see the module docstring
_UNSUPPORTED = ("top_p", "top_k", "frequency_penalty", "presence_penalty", "logprobs")
_CLOSE = object()
_IDLE_EXIT = 60.0  # seconds an idle worker thread waits before it exits


def model_string(name: str, config: PowerSamplingConfig, model_ref: str | None = None) -> str:
    """``power/<name>@<summary>-<digest>``: the digest covers ``model_ref`` and every config field,
    so DSPy's cache never serves an answer made with other settings or another model."""
    c = config
    summary = f"a{c.alpha:g}-k{c.top_k}-m{c.num_rollouts}" if c.method == "power" else c.method
    blob = json.dumps({"model": model_ref or name, "config": c.model_dump()}, sort_keys=True)
    return f"power/{name}@{summary}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


@dataclass
class _Job:
    """One request for the worker: prompt, generate() options, and where the result goes."""

    messages: list[dict[str, str]]
    options: dict[str, Any]
    batch_key: Any  # jobs with equal keys may share one generate_batch call
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    on_chunk: Callable[[Chunk], None] | None = None  # set for streaming jobs
    cancelled: threading.Event = field(default_factory=threading.Event)


class PowerEngine:
    """A DSPy 3.4 engine (``complete``/``stream``/``close``) over a power sampler.

    ``model`` is a model name or path (None: the embedded default), loaded on first use; or pass a
    ``backend`` / ``sampler`` you already have. ``config`` (a ``PowerSamplingConfig`` or a preset
    name) plus ``settings`` (config fields) set the sampler. ``name`` labels the model in the
    model string (default: the model's name).
    """

    supported_params = frozenset({"max_tokens", "stop", "seed", "temperature"})

    def __init__(
        self,
        model: str | None = None,
        config: PowerSamplingConfig | str | None = None,
        *,
        backend: Any = None,
        sampler: PowerSampler | None = None,
        name: str | None = None,
        batch_window: float = 0.005,
        max_batch: int = 8,
        **settings: Any,
    ) -> None:
        if sum(x is not None for x in (model, backend, sampler)) > 1:
            raise ValueError("pass one of model=, backend= or sampler=, not several")
        base = PowerSamplingConfig.preset(config) if isinstance(config, str) else config
        base = base or (sampler.config if sampler is not None else PowerSamplingConfig())
        self.config: PowerSamplingConfig = base.replace(**settings) if settings else base
        self._backend = sampler.backend if sampler is not None else backend
        if model is not None:
            self.model_ref: str | None = str(model)
        elif self._backend is not None:
            self.model_ref = getattr(self._backend, "name", None) or type(self._backend).__name__
        else:
            from power_sampling.models import DEFAULT_MODEL

            self.model_ref = DEFAULT_MODEL
        self.name = name or Path(self.model_ref).name
        self.batch_window, self.max_batch = batch_window, max_batch
        same = sampler is not None and sampler.config == self.config
        self._sampler: PowerSampler | None = sampler if same else None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock, self._load_lock, self._run_lock = (threading.Lock() for _ in range(3))
        self._repeats: dict[int, tuple[lm15.Request, int]] = {}

    @property
    def model(self) -> str:
        """The DSPy model string of this engine's settings."""
        return model_string(self.name, self.config, self.model_ref)

    @property
    def sampler(self) -> PowerSampler:
        """The sampler, loading the model on first use."""
        with self._load_lock:  # separate from _lock: loading takes seconds
            if self._sampler is None:
                if self._backend is None:
                    from power_sampling.models import resolve_model

                    self._backend = resolve_model(self.model_ref)
                self._sampler = PowerSampler(self._backend, self.config)
            return self._sampler

    # -- DSPy engine protocol ---------------------------------------------------------------

    def complete(self, request: lm15.Request) -> lm15.Response:
        return self._response(request, self.submit(request).future.result())

    def stream(self, request: lm15.Request) -> Iterator[Any]:
        chunks: queue.Queue[Any] = queue.Queue()
        job = self.submit(request, on_chunk=chunks.put)
        job_future = job.future
        job_future.add_done_callback(lambda _: chunks.put(_CLOSE))
        try:
            yield lm15.StreamStartEvent(model=request.model)
            while (chunk := chunks.get()) is not _CLOSE:
                if chunk.text:
                    yield lm15.StreamDeltaEvent(delta=lm15.TextDelta(text=chunk.text))
            response = self._response(request, job_future.result())
            yield lm15.StreamEndEvent(finish_reason=response.finish_reason, usage=response.usage)
        finally:
            job.cancelled.set()  # the consumer stopped early: the worker drops the rest

    def close(self) -> None:
        """Stop the worker thread (it restarts on the next call); the model stays loaded."""
        with self._lock:
            worker, work, self._worker = self._worker, self._queue, None
        if worker is not None:
            work.put(_CLOSE)
            worker.join()

    def dump_state(self) -> dict[str, Any]:
        """Settings only (JSON): the model reference, config and batching; never weights."""
        return {
            "model": self.model_ref,
            "name": self.name,
            "config": self.config.model_dump(),
            "batch_window": self.batch_window,
            "max_batch": self.max_batch,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> PowerEngine:
        """An engine with the saved settings; the model is loaded by reference on first use.
        Equal states (e.g. a saved LM's engine and async engine) share one engine."""
        key = json.dumps(state, sort_keys=True)
        engine = _LOADED.get(key)
        if engine is None:
            config = PowerSamplingConfig(**state["config"])
            options = {k: state[k] for k in ("name", "batch_window", "max_batch") if k in state}
            engine = _LOADED[key] = cls(state.get("model"), config, **options)
        return engine

    # -- translation --------------------------------------------------------------------------

    def submit(
        self, request: lm15.Request, on_chunk: Callable[[Chunk], None] | None = None
    ) -> _Job:
        """Translate ``request`` and queue it for the worker; the job's future gets the result."""
        messages, options = self._translate(request)
        seeded = options["seed"] is not None or on_chunk is not None
        # A seeded request runs alone: its output must not depend on what shares its batch.
        shared = (options["max_new_tokens"], options["stop"], options["overrides"])
        key = object() if seeded else shared
        job = _Job(messages, options, key, on_chunk=on_chunk)
        with self._lock:
            if self._worker is None:
                self._queue = queue.Queue()
                self._worker = threading.Thread(
                    target=self._loop, args=(self._queue,), name="power-dspy", daemon=True
                )
                self._worker.start()
            self._queue.put(job)
        return job

    def _translate(self, request: lm15.Request) -> tuple[list[dict[str, str]], dict[str, Any]]:
        cfg = request.config
        if request.tools or cfg.tool_choice is not None:
            raise _unsupported("native tool calling", "use DSPy's text tools (dspy.ReAct) instead")
        if cfg.response_format is not None:
            raise _unsupported("response_format", "use DSPy's ChatAdapter or JSONAdapter text")
        for name in _UNSUPPORTED:
            if getattr(cfg, name) is not None:
                raise _unsupported(name, "set sampler settings with metadata={...} instead")
        extensions = dict(cfg.extensions or {})
        overrides = dict(extensions.pop("metadata", None) or {})
        if extensions:
            raise _unsupported(f"request options {sorted(extensions)}", "remove them")
        unknown = sorted(set(overrides) - _SETTINGS)
        if unknown:
            raise lm15.InvalidRequestError(
                f"metadata keys {unknown} are not power sampling settings; "
                f"use config field names: {', '.join(sorted(_SETTINGS))}"
            )
        try:
            config = self.config.replace(**overrides)
        except ValueError as exc:
            raise lm15.InvalidRequestError(f"invalid sampler setting in metadata: {exc}") from exc
        temperature = cfg.temperature
        if temperature is not None and temperature not in _ACCEPTED_TEMPERATURES:
            raise lm15.InvalidRequestError(
                f"temperature={temperature:g} is not supported: power sampling proposes from the "
                f"base model at temperature 1 and samples p(x)^alpha. Set alpha instead "
                f"(alpha={config.alpha:g} is like temperature {1 / config.alpha:.2g} per token), "
                "e.g. power_lm(alpha=...) or metadata={'alpha': ...}; temperature may be None, "
                "1.0, 0 (deterministic) or 0.7 (DSPy's value for n > 1)"
            )
        seed = cfg.seed if cfg.seed is not None else config.seed
        if seed is None and temperature == 0.0:
            seed = 0
        repeat = self._repeat_count(request)
        if repeat and seed is not None:
            seed += repeat  # DSPy's n > 1 completes one Request n times: independent samples
        for key in ("seed", "max_new_tokens"):  # passed as generate() arguments below
            overrides.pop(key, None)
        options = {
            "max_new_tokens": cfg.max_tokens or config.max_new_tokens,
            "stop": tuple(cfg.stop),
            "seed": seed,
            "overrides": tuple(sorted(overrides.items())),
        }
        return _chat_messages(request), options

    def _repeat_count(self, request: lm15.Request) -> int:
        """How many times this very Request object was completed before (DSPy's n > 1)."""
        with self._lock:
            seen = self._repeats.get(id(request))
            count = seen[1] + 1 if seen is not None and seen[0] is request else 0
            self._repeats[id(request)] = (request, count)
            while len(self._repeats) > 256:
                self._repeats.pop(next(iter(self._repeats)))
            return count

    def _response(self, request: lm15.Request, generation: Generation) -> lm15.Response:
        stats = generation.stats
        return lm15.Response(
            id=None,
            model=request.model,
            message=lm15.Message.assistant([lm15.TextPart(generation.text or "")]),
            finish_reason=generation.finish_reason,
            usage=lm15.Usage(
                input_tokens=stats.prompt_tokens, output_tokens=stats.completion_tokens
            ),
            provider_data={"power_sampling": stats.to_dict()},
        )

    # -- the worker: one thread runs every generation, batching concurrent requests ------------

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
            if job is _CLOSE:
                return
            jobs, deadline = [job], time.monotonic() + self.batch_window
            while len(jobs) < self.max_batch and (wait := deadline - time.monotonic()) > 0:
                try:
                    more = work.get(timeout=wait)
                except queue.Empty:
                    break
                if more is _CLOSE:
                    work.put(_CLOSE)  # finish what was collected, then stop
                    break
                jobs.append(more)
            groups: dict[Any, list[_Job]] = {}
            for item in jobs:
                groups.setdefault(item.batch_key, []).append(item)
            with self._run_lock:  # one generation at a time, even across a restarted worker
                for group in groups.values():
                    self._run(group)

    def _run(self, jobs: list[_Job]) -> None:
        prompts: dict[int, list[int]] = {}
        for index, job in enumerate(jobs):  # a bad prompt fails its own request, not the batch
            if job.future.set_running_or_notify_cancel():
                try:
                    prompts[index] = self._encode(job.messages)
                except Exception as exc:
                    job.future.set_exception(exc)
        jobs = [jobs[i] for i in prompts]
        if not jobs:
            return
        first, options = jobs[0], jobs[0].options
        kwargs = dict(
            options["overrides"],
            max_new_tokens=options["max_new_tokens"],
            stop=list(options["stop"]) or None,
            seed=options["seed"],
        )
        try:
            if first.on_chunk is None:
                generations = self.sampler.generate_batch(list(prompts.values()), **kwargs)
                for job, generation in zip(jobs, generations, strict=True):
                    job.future.set_result(generation)
                return
            final = None
            for chunk in self.sampler.stream(next(iter(prompts.values())), **kwargs):
                if first.cancelled.is_set():
                    break
                first.on_chunk(chunk)
                final = chunk.generation or final
            first.future.set_result(final)
        except BaseException as exc:  # the callers' futures carry the error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat; a prompt too long for the model is DSPy's context error, on
        which e.g. ``dspy.ReAct`` truncates its trajectory and retries."""
        ids = self.sampler.encode_prompt(messages)
        context = getattr(self.sampler.backend, "max_context", None)
        if context is not None and len(ids) >= context:
            raise lm15.ContextLengthError(
                f"the prompt has {len(ids)} tokens but {self.name}'s context is {context}; "
                "shorten the prompt"
            )
        return ids


_LOADED: weakref.WeakValueDictionary[str, PowerEngine] = weakref.WeakValueDictionary()


class AsyncPowerEngine:
    """The async counterpart DSPy's ``acall`` needs; it shares the sync engine's worker."""

    def __init__(self, engine: PowerEngine) -> None:
        self.engine = engine

    async def complete(self, request: lm15.Request) -> lm15.Response:
        generation = await asyncio.wrap_future(self.engine.submit(request).future)
        return self.engine._response(request, generation)

    async def stream(self, request: lm15.Request) -> AsyncIterator[Any]:
        loop, chunks = asyncio.get_running_loop(), asyncio.Queue[Any]()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, item)

        job = self.engine.submit(request, on_chunk=put)
        job.future.add_done_callback(lambda _: put(_CLOSE))
        try:
            yield lm15.StreamStartEvent(model=request.model)
            while (chunk := await chunks.get()) is not _CLOSE:
                if chunk.text:
                    yield lm15.StreamDeltaEvent(delta=lm15.TextDelta(text=chunk.text))
            response = self.engine._response(request, job.future.result())
            yield lm15.StreamEndEvent(finish_reason=response.finish_reason, usage=response.usage)
        finally:
            job.cancelled.set()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.close)

    def dump_state(self) -> dict[str, Any]:
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncPowerEngine:
        return cls(PowerEngine.load_state(state))


def power_lm(
    model: str | None = None,
    alpha: float | None = None,
    num_rollouts: int | None = None,
    *,
    config: PowerSamplingConfig | str | None = None,
    backend: Any = None,
    sampler: PowerSampler | None = None,
    name: str | None = None,
    cache: bool = True,
    batch_window: float = 0.005,
    max_batch: int = 8,
    **settings: Any,
) -> dspy.LM:
    """A ``dspy.LM`` that power-samples: ``dspy.configure(lm=power_lm(alpha=4, num_rollouts=8))``.

    ``model``: a model name or path (None: the embedded SmolLM2-135M-Instruct), loaded on first
    call; or ``backend=`` / ``sampler=`` objects you have. ``alpha`` (default 4) and
    ``num_rollouts`` (default 8), ``config`` (a ``PowerSamplingConfig`` or preset name such as
    ``"cpu"``) and ``settings`` (any other config field: ``top_k``, ``rollout_length``,
    ``block_size``, ``method``, ``seed``, ``max_new_tokens``, ...) set the sampler. ``cache`` is
    DSPy's response cache. Concurrent calls arriving within ``batch_window`` seconds run as one
    batch of at most ``max_batch``.
    """
    if alpha is not None:
        settings["alpha"] = alpha
    if num_rollouts is not None:
        settings["num_rollouts"] = num_rollouts
    engine = PowerEngine(
        model,
        config,
        backend=backend,
        sampler=sampler,
        name=name,
        batch_window=batch_window,
        max_batch=max_batch,
        **settings,
    )
    return dspy.LM(engine.model, engine=engine, async_engine=AsyncPowerEngine(engine), cache=cache)


def _chat_messages(request: lm15.Request) -> list[dict[str, str]]:
    """``Request.system`` + ``Request.messages`` as ``{"role", "content"}`` dicts (text only)."""
    messages = []
    if request.system is not None:
        messages.append({"role": "system", "content": _text(request.system, "system")})
    for message in request.messages:
        if message.role == "tool":
            raise _unsupported("tool messages", "use DSPy's text tools (dspy.ReAct) instead")
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": _text(message.parts, f"{message.role} message")})
    return messages


def _text(parts: Any, where: str) -> str:
    if isinstance(parts, str):
        return parts
    kinds = sorted({p.type for p in parts} - {"text", "thinking"})
    if kinds:
        raise _unsupported(f"{', '.join(kinds)} parts in the {where}", "send text only")
    return "".join(p.text for p in parts if p.type == "text")


def _unsupported(what: str, fix: str) -> lm15.UnsupportedFeatureError:
    return lm15.UnsupportedFeatureError(
        f"power sampling runs a local text model and does not support {what}; {fix}",
        feature=what,
    )
