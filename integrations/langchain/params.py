"""What both LangChain classes share: the model and sampler settings as pydantic fields
(derived from :class:`~power_sampling.PowerSamplingConfig`, never re-declared), key checks, the
shared model and scheduler, and the translation of a call into one
:class:`~power_sampling.request.Request`.

The sampling fields (``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, the penalties,
``logit_bias``, ``logprobs``, ``n``) mean what the table in :mod:`power_sampling.fields` says,
as for every entry point, in the constructor and per call alike; a call's value wins
(``invoke(x, temperature=0)`` on ``method="standard"`` is greedy).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel, BaseLLM, LangSmithParams
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    create_model,
    model_validator,
)

from ...backends.base import TextBackend
from ...backends.models import DEFAULT_MODEL
from ...config import PowerSamplingConfig
from ...engine.registry import load_shared, share, shared
from ...engine.scheduler import Scheduler, scheduler_for
from ...fields import REQUEST_FIELDS
from ...generation import Generation
from ...generation import cost as cost  # re-exported for the adapters
from ...request import Request, resolve_settings, unknown_setting_message
from ...samplers.power_sampler import PowerSampler
from .calls import CallOptions

logger = logging.getLogger("power_sampling.integrations.langchain.chat_model")

Stop = list[str] | None
# Keys LangChain, its standard tests and agents pass that mean nothing to a local sampler.
_IGNORED = {"api_key", "base_url", "stream", "strict"}
_IGNORED |= {"parallel_tool_calls", "ls_structured_output_format"}
_CALL_KEYS = {"timeout", "max_retries"}  # how a call runs (see .calls), per call too
# LangChain's own fields (callbacks, cache, rate_limiter, ...): valid keys, but not our settings,
# so an unknown-setting message does not list them.
_LANGCHAIN_FIELDS = frozenset(BaseChatModel.model_fields) | frozenset(BaseLLM.model_fields)


def _settings_fields() -> dict[str, Any]:
    """Every ``PowerSamplingConfig`` field as an optional field (None = preset or default), with
    the config's own docstring: the adapters never re-declare a setting."""
    fields: dict[str, Any] = {}
    for name, info in PowerSamplingConfig.model_fields.items():
        alias = AliasChoices(name, "max_tokens") if name == "max_new_tokens" else None
        field = Field(None, description=info.description, validation_alias=alias)
        fields[name] = (info.annotation | None, field)
    for name in REQUEST_FIELDS:  # OpenAI-style fields: honoured or refused by the shared table
        fields[name] = (Any, Field(None, description=f"{name}: see power_sampling.fields"))
    return fields


_Settings: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "_Settings", __config__=ConfigDict(populate_by_name=True), **_settings_fields()
)


class PowerSamplingParams(_Settings):  # type: ignore[misc, valid-type]
    """The model, where it runs, and the sampler settings, shared by both classes. Settings left
    at None come from ``preset`` (or the given ``sampler``'s config), else the paper's
    defaults."""

    model_config = ConfigDict(
        use_attribute_docstrings=True, arbitrary_types_allowed=True, populate_by_name=True
    )

    model: str | None = Field(None, validation_alias=AliasChoices("model", "model_name"))
    """Model name or local path (alias ``model_name``), loaded with transformers on the first
    call and shared by every instance that names it; None = the embedded
    SmolLM2-135M-Instruct."""
    device: str | None = None
    """Where the model runs, e.g. ``cpu``, ``cuda``, ``cuda:1``; default CUDA when available for
    a named model, the CPU for the embedded one."""
    dtype: str | None = None
    """Parameter dtype, e.g. ``float32``, ``bfloat16``; default bfloat16 on a GPU that has it."""
    model_kwargs: dict[str, Any] | None = None
    """Extra ``from_pretrained`` options (e.g. ``{"attn_implementation": "sdpa"}``); with
    ``base_url``, ``OpenAIBackend`` options (e.g. ``{"tokenizer": "/models/qwen"}``)."""
    base_url: str | None = None
    """An OpenAI-compatible server that already serves the model (vLLM:
    ``http://host:8000/v1``): power sampling runs there over HTTP, and ``model`` is the served
    model's name (None: the only one served)."""
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    """The server's key, with ``base_url`` (default: ``$OPENAI_API_KEY`` when set)."""
    backend: Any = Field(default=None, exclude=True)
    """An existing backend, e.g. ``TransformersBackend.from_transformers(model, tokenizer)``."""
    sampler: PowerSampler | None = Field(default=None, exclude=True)
    """An existing ``PowerSampler``: its backend is used and its config is the base."""
    preset: str | None = None
    """Base settings, ``"paper"`` or ``"cpu"`` (small budgets); the fields override it."""
    stop: list[str] | None = None
    """Stop strings, cut from the output; a call's own ``stop`` replaces them."""
    timeout: float | None = None
    """Seconds a call may take, retries included; past it the generation is cancelled and
    ``TimeoutError`` raised (None: no limit). Per call: ``invoke(x, timeout=...)``."""
    max_retries: int = 2
    """Retries of a call the model's queue had no room for (``QueueFull``), with exponential
    backoff; errors of the call itself are never retried."""

    _config: PowerSamplingConfig = PrivateAttr(default_factory=PowerSamplingConfig)

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        known = set(cls.model_fields) | {"model_name", "max_tokens"}
        for key in set(values) - known - _IGNORED:
            ours = [f for f in cls.model_fields if f not in _LANGCHAIN_FIELDS]
            raise ValueError(unknown_setting_message(key, extra=[*ours, "model_name"]))
        return values

    @model_validator(mode="after")
    def _build_config(self) -> Any:
        if sum(x is not None for x in (self.model, self.backend, self.sampler)) > 1:
            raise ValueError("pass only one of model (a name or path), backend and sampler")
        if (self.backend or self.sampler) and (self.device or self.dtype or self.model_kwargs):
            raise ValueError("device, dtype and model_kwargs are for model=; a backend is built")
        if (self.backend or self.sampler) and self.base_url:
            raise ValueError("base_url is for model= (a served model); a backend is built")
        base = self.sampler.config if self.sampler is not None else PowerSamplingConfig()
        if self.preset is not None:
            base = PowerSamplingConfig.preset(self.preset)
        fields = {f: getattr(self, f) for f in (*PowerSamplingConfig.model_fields, *REQUEST_FIELDS)}
        self._config = resolve_settings(base, fields)  # the config's error names field and fix
        CallOptions(self.timeout, self.max_retries)  # checks both
        return self

    # -- serialisation: settings and the model's name, never weights -----------------------------

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """``dumpd``/``loads`` round-trip: the settings and the model's name."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["power_sampling", "integrations", "langchain"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {}  # the model runs in process: there is no key to hide

    def to_json(self) -> Any:
        if self.backend is not None or self.sampler is not None:
            return self.to_json_not_implemented()  # a live object; model= serialises by name
        return super().to_json()

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        fields = dict(state["__dict__"])
        for name in ("backend", "sampler"):  # live objects: pickled by reference (registry)
            if fields.get(name) is not None:
                fields[name] = _Shared(share(fields[name]))
        return {**state, "__dict__": fields}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        fields = dict(state["__dict__"])
        for name, value in fields.items():
            if isinstance(value, _Shared):
                fields[name] = shared(value.key, f"the {name}")
        super().__setstate__({**state, "__dict__": fields})

    @property
    def config(self) -> PowerSamplingConfig:
        """The sampler settings of this instance."""
        return self._config

    @property
    def model_name(self) -> str:
        """The model's name, known without loading it."""
        source = self.sampler.backend if self.sampler is not None else self.backend
        if source is None:
            return self.model or ("default" if self.base_url else DEFAULT_MODEL)
        return str(getattr(source, "name", type(source).__name__))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # LangChain's cache key: every setting is in it, so cached answers never mix settings.
        return {"model_name": self.model_name, **self._config.model_dump(), "stop": self.stop}

    def _get_ls_params(self, stop: Stop = None, **kwargs: Any) -> LangSmithParams:
        params: LangSmithParams = super()._get_ls_params(stop=stop, **kwargs)  # type: ignore[misc]
        params["ls_provider"] = "power_sampling"
        named = kwargs.get("model")
        params["ls_model_name"] = named if isinstance(named, str) else self.model_name
        # the call's own value (a per-call max_new_tokens or max_tokens), else the instance's
        limit = kwargs.get("max_new_tokens", kwargs.get("max_tokens"))
        params["ls_max_tokens"] = limit if isinstance(limit, int) else self._config.max_new_tokens
        if stop is None and self.stop:
            params["ls_stop"] = list(self.stop)
        return params

    def _options(self, kwargs: dict[str, Any]) -> CallOptions:
        """The call's ``timeout`` and ``max_retries`` (its own, else the instance's)."""
        timeout = kwargs.get("timeout", self.timeout)
        return CallOptions(timeout, kwargs.get("max_retries", self.max_retries))

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (loads the model)."""
        return self._backend().encode(text)

    def _scheduler(self) -> Scheduler:
        """The model's shared scheduler; the model loads on first use, once per process."""
        if self.sampler is not None:
            return scheduler_for(self.sampler.backend)
        if self.backend is not None:
            return scheduler_for(self.backend)
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        return scheduler_for(
            load_shared(
                self.model,
                device=self.device,
                dtype=self.dtype,
                model_kwargs=self.model_kwargs,
                base_url=self.base_url,
                api_key=key,
            )
        )

    def _backend(self) -> TextBackend:
        backend = self._scheduler().backend
        if not isinstance(backend, TextBackend):
            raise TypeError(f"{type(self).__name__} needs a backend with a tokenizer")
        return backend

    def _request(self, prompt: Any, stop: Stop, kwargs: dict[str, Any]) -> Request:
        """A call's prompt and options as one request: settings resolved once, here."""
        settings = dict(kwargs)
        if settings.get("model") not in (None, self.model_name):
            raise ValueError(
                f"this instance holds {self.model_name!r} and cannot switch models per call: "
                f"create another one with model={settings['model']!r}"
            )
        if settings.get("parallel_tool_calls"):
            raise ValueError(PARALLEL_TOOL_CALLS)
        dropped = _IGNORED | _CALL_KEYS | {"model"}
        settings = {k: v for k, v in settings.items() if k not in dropped}
        stops = list(self.stop or []) if stop is None else list(stop)
        return Request(prompt, resolve_settings(self._config, settings), tuple(stops))


class _Shared:
    """A pickled reference to a live backend or sampler (see ``engine.registry.share``)."""

    def __init__(self, key: str) -> None:
        self.key = key


PARALLEL_TOOL_CALLS = (
    "parallel_tool_calls=True is not supported: a reply holds at most one tool call, constrained "
    "to its tool's schema; leave parallel_tool_calls unset or False (an agent calls the tools one "
    "turn at a time)"
)


def usage(gens: Sequence[Generation], names: str = "input") -> Any:
    """Token counts with LangChain's chat names (``input``), or the LLM's ``token_usage`` ones
    (``prompt``)."""
    prompt, completion = ("input_tokens", "output_tokens")
    if names == "prompt":
        prompt, completion = "prompt_tokens", "completion_tokens"
    counts = [
        sum(g.stats.prompt_tokens for g in gens),
        sum(g.stats.completion_tokens for g in gens),
    ]
    return {prompt: counts[0], completion: counts[1], "total_tokens": sum(counts)}
