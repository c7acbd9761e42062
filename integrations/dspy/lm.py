"""DSPy integration: any DSPy program, power-sampled.

    import dspy
    from power_sampling.integrations.dspy.lm import power_lm

    dspy.configure(lm=power_lm(preset="cpu"))   # the embedded SmolLM2-135M-Instruct

``power_lm`` returns a :class:`PowerLM`, a ``dspy.LM`` whose engine (DSPy 3.4's supported route
for custom LMs) translates DSPy requests into :class:`~power_sampling.request.Request` objects
for the model's shared :class:`~power_sampling.engine.scheduler.Scheduler`:

- ``Request.system`` and ``Request.messages`` become chat messages for the tokenizer's template;
  ``max_tokens`` -> ``max_new_tokens``, ``stop`` -> stop strings, ``seed`` -> the sampler seed.
- ``temperature``: the proposal is the base model at temperature 1 and the target is p^alpha, so
  None and 1.0 run the sampler as configured, 0 makes it deterministic (seed 0 unless a seed is
  set) and 0.7, the value ``dspy.Predict`` sends by itself when ``n > 1``, is accepted as "draw
  diverse samples" (which the sampler does). Any other value is refused with the fix (set alpha).
- Per-call sampler settings travel in ``metadata={"alpha": 2, ...}`` (config field names);
  ``lm.copy(alpha=8)`` makes an LM with other settings on the same loaded model.
- ``response_format`` (what ``dspy.JSONAdapter`` sends: a JSON schema of the output fields, or
  ``json_object`` when a field is an open mapping) constrains the reply to JSON valid under it
  (:mod:`power_sampling.constraints`), so a JSONAdapter reply parses unless ``max_tokens`` cuts
  it. The engine declares ``supports_response_schema`` so JSONAdapter sends the schema;
  :class:`SchemaJSONAdapter` sends it for open mappings too (ReAct's tool arguments).
- ``n > 1``: DSPy completes the same Request n times; each repeat draws with the next seed.
- Concurrent calls (``dspy.Evaluate`` threads, ``acall``) with equal settings share batched
  sampler runs (see the scheduler).

DSPy's cache key holds the model string, the messages and the call's kwargs (metadata included),
not engine state, so the model string carries the settings: ``power/<model>@a4-k8-m8-<digest>``,
where the digest covers the model reference and every config field. Responses carry the model
string of the settings that actually ran, so history names them too.

Over 400 lines: the engine's translation of every lm15 field, its sync and async forms, the LM
wrapper and the model string (DSPy's cache key) are one contract with DSPy and read best
together; the adapter is in :mod:`.dspy_adapter`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

try:
    import dspy
    from dspy import lm15
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "power_sampling.integrations.dspy.lm needs DSPy: pip install 'power-sampling[dspy]'"
    ) from exc

from ...config import PowerSamplingConfig
from ...constraints.chat import response_format_constraint
from ...engine.registry import load_shared
from ...engine.scheduler import Scheduler, scheduler_for
from ...generation import Generation
from ...request import Request, resolve_settings
from ...samplers.power_sampler import PowerSampler
from .adapter import SchemaJSONAdapter

__all__ = [
    "AsyncPowerEngine",
    "PowerEngine",
    "PowerLM",
    "SchemaJSONAdapter",
    "model_string",
    "power_lm",
]

_SETTINGS = frozenset(PowerSamplingConfig.model_fields)
_ACCEPTED_TEMPERATURES = (0.0, 0.7, 1.0)  # see the module docstring
_UNSUPPORTED = ("top_p", "top_k", "frequency_penalty", "presence_penalty", "logprobs")


def model_string(name: str, config: PowerSamplingConfig, model_ref: str | None = None) -> str:
    """``power/<name>@<summary>-<digest>``: the digest covers ``model_ref`` and every config field,
    so DSPy's cache never serves an answer made with other settings or another model."""
    c = config
    summary = f"a{c.alpha:g}-k{c.top_k}-m{c.num_rollouts}" if c.method == "power" else c.method
    blob = json.dumps({"model": model_ref or name, "config": c.model_dump()}, sort_keys=True)
    return f"power/{name}@{summary}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


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
        **settings: Any,
    ) -> None:
        if sum(x is not None for x in (model, backend, sampler)) > 1:
            raise ValueError("pass one of model=, backend= or sampler=, not several")
        base = PowerSamplingConfig.preset(config) if isinstance(config, str) else config
        base = base or (sampler.config if sampler is not None else PowerSamplingConfig())
        self.config: PowerSamplingConfig = resolve_settings(base, settings)
        self._backend = sampler.backend if sampler is not None else backend
        self._load: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "model_kwargs": model_kwargs,
        }
        if model is not None:
            self.model_ref: str = str(model)
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
            self._backend = load_shared(self.model_ref, **self._load)
        return scheduler_for(self._backend)

    def with_settings(self, **settings: Any) -> PowerEngine:
        """An engine with ``settings`` changed, on the same model (nothing is loaded again)."""
        engine = PowerEngine(self.model_ref, self.config, name=self.name, **self._load, **settings)
        engine._backend = self._backend
        return engine

    # -- DSPy engine protocol ---------------------------------------------------------------

    def complete(self, request: lm15.Request) -> lm15.Response:
        ours = self._translate(request)
        return self._response(self.scheduler.generate(ours))

    def stream(self, request: lm15.Request) -> Iterator[Any]:
        ours = self._translate(request)
        yield lm15.StreamStartEvent(model=request.model)
        final = None
        for chunk in self.scheduler.stream(ours):
            if chunk.text:
                yield lm15.StreamDeltaEvent(delta=lm15.TextDelta(text=chunk.text))
            final = chunk.generation or final
        assert final is not None
        response = self._response(final)
        yield lm15.StreamEndEvent(finish_reason=response.finish_reason, usage=response.usage)

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
        cfg = request.config
        if request.tools or cfg.tool_choice is not None:
            raise _unsupported("native tool calling", "use DSPy's text tools (dspy.ReAct) instead")
        for name in _UNSUPPORTED:
            if getattr(cfg, name) is not None:
                raise _unsupported(name, "set sampler settings with metadata={...} instead")
        extensions = dict(cfg.extensions or {})
        metadata = dict(extensions.pop("metadata", None) or {})
        if extensions:
            raise _unsupported(f"request options {sorted(extensions)}", "remove them")
        try:
            config = resolve_settings(self.config, metadata)
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
        config = resolve_settings(config, {"seed": seed, "max_new_tokens": cfg.max_tokens})
        messages = _chat_messages(request)
        sampler = self.scheduler.sampler
        ids = sampler.encode_prompt(messages)
        context = getattr(sampler.backend, "max_context", None)
        if context is not None and len(ids) >= context:
            raise lm15.ContextLengthError(  # on which e.g. dspy.ReAct truncates and retries
                f"the prompt has {len(ids)} tokens but {self.name}'s context is {context}; "
                "shorten the prompt"
            )
        return Request(ids, config, tuple(cfg.stop), constraint=_constraint(cfg.response_format))

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
        stats, config = generation.stats, generation.config or self.config
        return lm15.Response(
            id=None,
            model=model_string(self.name, config, self.model_ref),  # the settings that ran
            message=lm15.Message.assistant([lm15.TextPart(generation.text or "")]),
            finish_reason=generation.finish_reason,
            usage=lm15.Usage(
                input_tokens=stats.prompt_tokens, output_tokens=stats.completion_tokens
            ),
            provider_data={"power_sampling": {**stats.to_dict(), "settings": config.model_dump()}},
        )


_ENGINES: weakref.WeakValueDictionary[str, PowerEngine] = weakref.WeakValueDictionary()


class AsyncPowerEngine:
    """The async counterpart DSPy's ``acall`` needs; it shares the sync engine's scheduler."""

    def __init__(self, engine: PowerEngine) -> None:
        self.engine = engine

    async def complete(self, request: lm15.Request) -> lm15.Response:
        ours = self.engine._translate(request)
        return self.engine._response(await self.engine.scheduler.agenerate(ours))

    async def stream(self, request: lm15.Request) -> AsyncIterator[Any]:
        ours = self.engine._translate(request)
        yield lm15.StreamStartEvent(model=request.model)
        final = None
        async for chunk in self.engine.scheduler.astream(ours):
            if chunk.text:
                yield lm15.StreamDeltaEvent(delta=lm15.TextDelta(text=chunk.text))
            final = chunk.generation or final
        assert final is not None
        response = self.engine._response(final)
        yield lm15.StreamEndEvent(finish_reason=response.finish_reason, usage=response.usage)

    async def aclose(self) -> None:
        """Nothing to release (see :meth:`PowerEngine.close`)."""

    def dump_state(self) -> dict[str, Any]:
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncPowerEngine:
        return cls(PowerEngine.load_state(state))

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncPowerEngine:
        return self


class PowerLM(dspy.LM):
    """A ``dspy.LM`` over a :class:`PowerEngine`; ``copy`` also takes sampler settings
    (``lm.copy(alpha=8)``), giving an LM with its own model string on the same loaded model."""

    def copy(self, **kwargs: Any) -> PowerLM:
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in _SETTINGS - {"seed"}}
        if settings:
            engine = self._engine_spec.with_settings(**settings)
            kwargs.update(engine=engine, async_engine=AsyncPowerEngine(engine), model=engine.model)
        return super().copy(**kwargs)  # type: ignore[no-any-return]


def power_lm(
    model: str | None = None,
    alpha: float | None = None,
    num_rollouts: int | None = None,
    *,
    config: PowerSamplingConfig | str | None = None,
    preset: str | None = None,
    backend: Any = None,
    sampler: PowerSampler | None = None,
    name: str | None = None,
    cache: bool = True,
    max_tokens: int | None = None,
    temperature: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **settings: Any,
) -> PowerLM:
    """A ``dspy.LM`` that power-samples: ``dspy.configure(lm=power_lm(preset="cpu"))``.

    ``model``: a model name or path (None: the embedded SmolLM2-135M-Instruct), loaded on first
    call and shared by every LM naming it (``device``, ``dtype``, ``model_kwargs`` as for
    loading); or ``backend=`` / ``sampler=`` objects you have. ``alpha`` (default 4),
    ``num_rollouts`` (default 8), ``config`` or ``preset`` (a ``PowerSamplingConfig`` or preset
    name such as ``"cpu"``) and ``settings`` (any other config field) set the sampler.
    ``max_tokens`` and ``temperature`` are the request defaults every ``dspy.LM`` takes (see the
    module docstring for what temperature means here). ``cache`` is DSPy's response cache.
    """
    if preset is not None and config is not None:
        raise ValueError("pass config= or preset=, not both")
    settings |= {
        k: v for k, v in (("alpha", alpha), ("num_rollouts", num_rollouts)) if v is not None
    }
    engine = PowerEngine(
        model,
        preset or config,
        backend=backend,
        sampler=sampler,
        name=name,
        device=device,
        dtype=dtype,
        model_kwargs=model_kwargs,
        **settings,
    )
    defaults = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v}
    if temperature == 0:
        defaults["temperature"] = 0.0
    return PowerLM(
        engine.model,
        engine=engine,
        async_engine=AsyncPowerEngine(engine),
        cache=cache,
        **defaults,
    )


def _constraint(response_format: Any) -> Any:
    """The JSON constraint of a response_format (lm15's ``{"type": "json_schema", "schema":
    ...}`` or ``{"type": "json_object"}``); None for none or plain text."""
    if response_format is None:
        return None
    try:
        return response_format_constraint(response_format)
    except ValueError as exc:
        raise lm15.InvalidRequestError(str(exc)) from exc


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
