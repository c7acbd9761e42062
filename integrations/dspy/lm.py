"""DSPy integration: any DSPy program, power-sampled.

    import dspy
    from power_sampling.integrations.dspy import power_lm

    dspy.configure(lm=power_lm(preset="cpu"))   # the embedded SmolLM2-135M-Instruct

``power_lm`` returns a :class:`PowerLM`, a ``dspy.LM`` whose engine
(:class:`~.engine.PowerEngine`) translates DSPy requests (:mod:`.translate`: messages, settings,
``temperature``, ``response_format``) into :class:`~power_sampling.request.Request` objects for
the model's shared :class:`~power_sampling.engine.scheduler.Scheduler`. ``lm.copy(alpha=8)``
makes an LM with other settings on the same loaded model, and its own model string (DSPy's
cache key, :func:`~.translate.model_string`). The engine declares ``supports_response_schema``
so ``dspy.JSONAdapter`` sends the output fields' schema; :class:`~.adapter.SchemaJSONAdapter`
sends it for open mappings too (ReAct's tool arguments).
"""

from __future__ import annotations

from typing import Any

import dspy

from ...config import PowerSamplingConfig
from ...request import resolve_settings
from ...samplers.power_sampler import PowerSampler
from .engine import AsyncPowerEngine, PowerEngine

__all__ = ["PowerLM", "power_lm"]

_SETTINGS = frozenset(PowerSamplingConfig.model_fields)


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
    callbacks: list[Any] | None = None,
    num_retries: int = 3,
    max_tokens: int | None = None,
    temperature: float | None = None,
    device: str | None = None,
    dtype: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    **settings: Any,
) -> PowerLM:
    """A ``dspy.LM`` that power-samples: ``dspy.configure(lm=power_lm(preset="cpu"))``.

    ``model``: a model name or path (None: the embedded SmolLM2-135M-Instruct), loaded on first
    call and shared by every LM naming it (``device``, ``dtype``, ``model_kwargs`` as for
    loading); or ``backend=`` / ``sampler=`` objects you have. ``alpha`` (default 4),
    ``num_rollouts`` (default 8), ``config`` or ``preset`` (a ``PowerSamplingConfig`` or preset
    name such as ``"cpu"``) and ``settings`` (any other config field) set the sampler.
    ``max_tokens`` and ``temperature`` are the request defaults every ``dspy.LM`` takes; a call's
    own value wins, and ``temperature`` means what :mod:`power_sampling.fields` says (per-token
    on ``method="standard"``, 0 = greedy; only None or 1 on ``power``). ``cache`` (DSPy's
    response cache), ``callbacks`` (``dspy.utils.callback.BaseCallback``s, run around every call)
    and ``num_retries`` (retries of a call the model's queue had no room for, with DSPy's
    backoff) are ``dspy.LM``'s own and behave as there.
    ``base_url``: an OpenAI-compatible server that already serves the model (vLLM:
    ``http://host:8000/v1``), reached over HTTP; ``model`` is then the served model's name
    (None: the only one served) and ``api_key`` its key (default: ``$OPENAI_API_KEY``).
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
        base_url=base_url,
        api_key=api_key,
        **settings,
    )
    defaults = {k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v}
    if temperature is None and engine.config.method != "low_temperature":
        # 1 is every other method's own temperature; sent as the default, it keeps dspy.Predict
        # from asking for 0.7 when n > 1 (which power sampling refuses: its sharpening is alpha)
        temperature = 1.0
    if temperature is not None:  # the shared table (power_sampling.fields), checked up front
        resolve_settings(engine.config, {"temperature": temperature})
        defaults["temperature"] = temperature
    return PowerLM(
        engine.model,
        engine=engine,
        async_engine=AsyncPowerEngine(engine),
        cache=cache,
        callbacks=callbacks,
        num_retries=num_retries,
        **defaults,
    )
