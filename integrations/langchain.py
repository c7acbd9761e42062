"""LangChain integration: ``ChatPowerSampling`` (chat model with tool calling) and
``PowerSamplingLLM`` (text completion), both sampling with :class:`~power_sampling.PowerSampler`.

>>> llm = ChatPowerSampling(alpha=4, num_rollouts=8)   # the embedded SmolLM2, loaded lazily
>>> (prompt | llm | StrOutputParser()).invoke({...})   # a drop-in chat model

The adapter only translates: LangChain messages to chat-template token ids, sampler output to
``AIMessage`` and tool calls. Tool calls use the ``<tool_call>{"name": ..., "arguments": ...}
</tool_call>`` format (Qwen / Hermes): tools go through the chat template's own tool support
(``apply_chat_template(tools=...)``), or, for templates without it, into a system message that
describes them and this format. A forced tool choice prefills the assistant turn with
``<tool_call>\\n{"name": "<tool>", "arguments":`` so the model writes only the arguments; if they
do not parse it retries once (next seed), then reports the call in ``invalid_tool_calls``.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "the LangChain integration needs: pip install 'power-sampling[langchain]'"
    ) from exc

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel, BaseLLM, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    ChatResult,
    GenerationChunk,
    LLMResult,
)
from langchain_core.outputs import Generation as TextGeneration
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from power_sampling import Generation, PowerSampler, PowerSamplingConfig, TextBackend
from power_sampling.models import DEFAULT_MODEL

__all__ = ["ChatPowerSampling", "PowerSamplingLLM"]

logger = logging.getLogger(__name__)

Stop = list[str] | None
_CONFIG_FIELDS = tuple(PowerSamplingConfig.model_fields)
_BUDGET: tuple[str, ...] = ("top_k", "num_rollouts", "rollout_length", "block_size")
_BUDGET += ("num_candidates", "mcmc_steps", "best_of", "max_new_tokens")
_STATS: tuple[str, ...] = ("steps", "backend_calls", "candidate_tokens", "rollout_tokens")
_STATS += ("forward_tokens", "wall_time")
# Call options that LangChain or agents may pass and that mean nothing to a local sampler.
_IGNORED = {"stream", "strict", "parallel_tool_calls", "temperature", "max_retries", "timeout"}
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_TOOLS_PROMPT = (
    "# Tools\n\nYou may call the functions described by the JSON schemas inside <tools></tools>:"
    "\n<tools>\n{tools}\n</tools>\n\nTo call a function, reply with one JSON object per call "
    'inside <tool_call></tool_call> tags:\n<tool_call>\n{{"name": <function-name>, "arguments": '
    "<arguments-json-object>}}\n</tool_call>"
)
_JSON_PROMPT = "Reply with one JSON object and nothing else."
_SCHEMA_PROMPT = " It must match this JSON schema:\n{}"
_NON_TEXT = {"image", "image_url", "audio", "input_audio", "file", "video"}


class _PowerSamplingParams(BaseModel):
    """The model and every sampler setting, shared by both classes. Settings left at None come
    from ``preset`` (or the given ``sampler``'s config), else ``PowerSamplingConfig``'s defaults
    (the paper's)."""

    model_config = ConfigDict(use_attribute_docstrings=True, arbitrary_types_allowed=True)

    model: str | None = None
    """Model name or local path, loaded with transformers on the first call; None = the embedded
    SmolLM2-135M-Instruct."""
    backend: Any = Field(default=None, exclude=True)
    """An existing backend, e.g. ``TransformersBackend.from_transformers(model, tokenizer)``."""
    sampler: PowerSampler | None = Field(default=None, exclude=True)
    """An existing ``PowerSampler``: its backend is used and its config is the base."""
    preset: str | None = None
    """Base settings, ``"paper"`` or ``"cpu"`` (small budgets); the fields below override it."""
    method: str | None = None
    """``power`` (default), ``mcmc``, ``low_temperature``, ``standard`` or ``best_of_n``."""
    alpha: float | None = None
    """Power exponent of the target p(x)^alpha, > 0; default 4. 1 = the base model."""
    top_k: int | None = None
    """K, candidates scored per step; default 8."""
    num_rollouts: int | None = None
    """M, rollouts per candidate that estimate its future quality; default 8."""
    rollout_length: int | None = None
    """H, maximum tokens per rollout; default 192."""
    block_size: int | None = None
    """B, tokens decided per step (1 = token level); default 192."""
    num_candidates: int | None = None
    """L, candidate blocks drawn per block step, >= top_k; default 32."""
    jackknife: bool | None = None
    """Use the jackknife-corrected estimate (bias O(1/M^2)); default True."""
    mcmc_steps: int | None = None
    """Metropolis-Hastings steps per block (``mcmc``); default 10."""
    best_of: int | None = None
    """N, samples drawn by ``best_of_n``; default 32."""
    max_new_tokens: int | None = Field(
        None, validation_alias=AliasChoices("max_new_tokens", "max_tokens")
    )
    """Maximum tokens generated (alias ``max_tokens``); default 3072."""
    seed: int | None = None
    """The same seed repeats the same output; None = fresh randomness on every call."""
    adaptive_tolerance: float | None = None
    """Adaptive rollout budget tolerance in [0, 1); default 0 (off)."""
    reuse_rollouts: bool | None = None
    """Block mode: reuse the chosen block's rollouts as next candidates; default False."""
    stop: list[str] | None = None
    """Stop strings, cut from the output; a call's own ``stop`` replaces them."""

    _config: PowerSamplingConfig = PrivateAttr(default_factory=PowerSamplingConfig)
    _loaded: PowerSampler | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="before")
    @classmethod
    def _warn_temperature(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("temperature") not in (None, 0, 1):
            logger.warning("temperature is ignored: power sampling sharpens with alpha")
        return values

    @model_validator(mode="after")
    def _build_config(self) -> Any:
        if sum(x is not None for x in (self.model, self.backend, self.sampler)) > 1:
            raise ValueError("pass only one of model (a name or path), backend and sampler")
        base = self.sampler.config if self.sampler is not None else PowerSamplingConfig()
        if self.preset is not None:
            base = PowerSamplingConfig.preset(self.preset)
        fields = {f: getattr(self, f) for f in _CONFIG_FIELDS if getattr(self, f, None) is not None}
        self._config = base.replace(**fields)  # the core's ValueError names field, value and fix
        return self

    @property
    def config(self) -> PowerSamplingConfig:
        """The effective sampler settings."""
        return self._config

    @property
    def model_name(self) -> str:
        """The model's name, known without loading it."""
        source = self.sampler.backend if self.sampler is not None else self.backend
        if source is None:
            return self.model or DEFAULT_MODEL
        return str(getattr(source, "name", type(source).__name__))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # LangChain's cache key: every setting is in it, so cached answers never mix settings.
        return {"model_name": self.model_name, **self._config.model_dump(), "stop": self.stop}

    def _get_ls_params(self, stop: Stop = None, **kwargs: Any) -> LangSmithParams:
        params: LangSmithParams = super()._get_ls_params(stop=stop, **kwargs)  # type: ignore[misc]
        params["ls_provider"] = "power_sampling"
        params.setdefault("ls_max_tokens", self._config.max_new_tokens)
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's own tokenizer (loads the model)."""
        return self._backend().encode(text)

    def _sampler(self) -> PowerSampler:
        """The sampler; the model loads on first use, once even when called from many threads."""
        with self._lock:
            if self._loaded is None:
                backend = self.sampler.backend if self.sampler is not None else self.backend
                self._loaded = PowerSampler(backend or self.model, self._config)
            return self._loaded

    def _backend(self) -> TextBackend:
        backend = self._sampler().backend
        if not isinstance(backend, TextBackend):
            raise TypeError(f"{type(self).__name__} needs a backend with a tokenizer")
        return backend

    def _options(self, stop: Stop, kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """A call's stop strings and config overrides (``seed``, ``alpha``, ...), validated."""
        kwargs = dict(kwargs)
        if kwargs.get("model") not in (None, self.model_name):
            raise ValueError(
                f"this instance holds {self.model_name!r} and cannot switch models per call: "
                f"create another one with model={kwargs['model']!r}"
            )
        kwargs.pop("model", None)
        if "max_tokens" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_tokens")
        overrides = {k: kwargs.pop(k) for k in _CONFIG_FIELDS if k in kwargs}
        if unknown := set(kwargs) - _IGNORED:
            logger.warning("%s ignores call options %s", type(self).__name__, sorted(unknown))
        self._config.replace(**overrides)
        return list(self.stop or []) if stop is None else list(stop), overrides

    def _cost(self, gens: Sequence[Generation], overrides: Mapping[str, Any]) -> dict:
        """Settings and measured work of a call, for ``response_metadata["power_sampling"]``."""
        config = self._config.replace(**overrides)
        return {
            "method": config.method,
            "alpha": config.alpha,
            "budget": {k: getattr(config, k) for k in _BUDGET},
            "seed": config.seed,
            "attempts": len(gens),
            **{k: sum(getattr(g.stats, k) for g in gens) for k in _STATS},
        }


class PowerSamplingLLM(_PowerSamplingParams, BaseLLM):
    """A text-completion LLM (the raw prompt, no chat template) sampling with power sampling.

    ``batch`` and ``generate`` hand the whole batch to the sampler's ``generate_batch``. For chat,
    tools and structured output use :class:`ChatPowerSampling`.
    """

    @property
    def _llm_type(self) -> str:
        return "power-sampling"

    def _generate(
        self, prompts: list[str], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> LLMResult:
        stop, overrides = self._options(stop, kwargs)
        gens = self._sampler().generate_batch(prompts, stop=stop, **overrides)
        infos = [self._info(g, overrides) for g in gens]
        return LLMResult(
            generations=[
                [TextGeneration(text=g.text or "", generation_info=i)]
                for g, i in zip(gens, infos, strict=True)
            ],
            llm_output={
                "model_name": self.model_name,
                "token_usage": _usage(gens, "prompt_tokens", "completion_tokens"),
            },
        )

    async def _agenerate(
        self, prompts: list[str], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> LLMResult:
        return await asyncio.to_thread(self._generate, prompts, stop, None, **kwargs)

    def _stream(
        self, prompt: str, stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[GenerationChunk]:
        for chunk in self._chunks(prompt, stop, kwargs):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self, prompt: str, stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[GenerationChunk]:
        async for chunk in _in_thread(lambda: self._chunks(prompt, stop, kwargs)):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _chunks(self, prompt: str, stop: Stop, kwargs: dict[str, Any]) -> Iterator[GenerationChunk]:
        """Committed text as the sampler decides it; the last chunk has finish reason and cost."""
        stop, overrides = self._options(stop, kwargs)
        for chunk in self._sampler().stream(prompt, stop=stop, **overrides):
            info = self._info(chunk.generation, overrides) if chunk.generation else None
            if chunk.text or info:
                yield GenerationChunk(text=chunk.text, generation_info=info)

    def _info(self, gen: Generation, overrides: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "finish_reason": gen.finish_reason,
            "power_sampling": self._cost([gen], overrides),
        }


@dataclass
class _Request:
    """One chat call, ready for the sampler."""

    ids: list[int]
    tools: list[str]  # names of the tools the model may call
    forced: str | None  # a tool name, "required" (any tool), or None
    prefill: str  # text the assistant turn starts with (JSON mode)
    stop: list[str]
    overrides: dict[str, Any]  # config fields of this call, seed included


@dataclass
class _Reply:
    """The end of a chat call: the content, its part not streamed yet, calls, usage, metadata."""

    content: str
    tail: str
    tool_calls: list[Any]
    invalid_tool_calls: list[Any]
    usage: Any
    metadata: dict[str, Any]


class ChatPowerSampling(_PowerSamplingParams, BaseChatModel):
    """A LangChain chat model that samples from p(x)^alpha with scalable power sampling.

    >>> llm = ChatPowerSampling(model="Qwen/Qwen2.5-0.5B-Instruct", alpha=4, num_rollouts=8)
    >>> llm.invoke("What is 17 * 23?").content

    Messages are rendered with the model's chat template; ``bind_tools`` takes ``tool_choice``
    ``"auto"``, ``"any"``/``"required"``, ``"none"`` or a tool name; ``with_structured_output``
    works by a forced tool call or JSON mode. ``usage_metadata`` counts prompt and completion
    tokens; ``response_metadata["power_sampling"]`` holds the settings and the sampler's extra
    work. Unknown constructor keys (``api_key``, ``timeout``, ...) are ignored.
    """

    streaming: bool = False
    """Run ``invoke`` through the streaming path (LangChain's standard flag)."""

    _native_tools: bool | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "power-sampling-chat"

    def _generate(
        self, messages: list[BaseMessage], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        *_, reply = self._run(messages, stop, kwargs)
        assert isinstance(reply, _Reply)  # the last item; text deltas come before it
        message = AIMessage(
            content=reply.content,
            tool_calls=reply.tool_calls,
            invalid_tool_calls=reply.invalid_tool_calls,
            usage_metadata=reply.usage,
            response_metadata=reply.metadata,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    def _stream(
        self, messages: list[BaseMessage], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for item in self._run(messages, stop, kwargs):  # LangChain fires the token callbacks
            yield _chat_chunk(item)

    async def _astream(
        self, messages: list[BaseMessage], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for item in _in_thread(lambda: self._run(messages, stop, kwargs)):
            yield _chat_chunk(item)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Bind tools; ``tool_choice`` is ``"auto"`` (default), ``"any"``/``"required"``,
        ``"none"`` or a tool name. A forced choice always returns a call (maybe an invalid one)."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        choice = _tool_choice(tool_choice, [t["function"]["name"] for t in formatted])
        return self.bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, Any]:
        """Objects of ``schema`` (pydantic class, TypedDict or JSON schema): ``function_calling``
        forces a call of a tool named after it; ``json_mode`` / ``json_schema`` put the schema in
        a system message and start the reply with ``{``. Pydantic objects are validated; a reply
        that does not parse raises ``OutputParserException`` (``include_raw=True``: returned as
        ``parsing_error``). ``strict`` is accepted and ignored."""
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: Runnable[Any, Any]
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=trace)
            parser = RunnableLambda(_require_tool_call) | (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_mode", "json_schema"):
            response_format = {
                "type": "json_schema",
                "json_schema": {"schema": convert_to_openai_tool(schema)["function"]["parameters"]},
            }
            llm = self.bind(response_format=response_format, ls_structured_output_format=trace)
            parser = JsonOutputParser()
            if is_pydantic:
                parser = PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
        else:
            raise ValueError(
                f"method={method!r} is invalid: use function_calling, json_mode or json_schema"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=(lambda x: x["raw"]) | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return {"raw": llm} | parsed.with_fallbacks([failed], exception_key="parsing_error")

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Prompt length in tokens as rendered by the chat template (loads the model)."""
        formatted = [convert_to_openai_tool(t) for t in tools or []]
        return len(self._render([_message_dict(m) for m in messages], formatted))

    # -- translation -----------------------------------------------------------------------------

    def _run(
        self, messages: list[BaseMessage], stop: Stop, kwargs: dict[str, Any]
    ) -> Iterator[str | _Reply]:
        """Visible text deltas, then the ``_Reply``: invoke and stream share this one path."""
        request = self._request(messages, stop, kwargs)
        if request.forced:
            gens, calls, invalid = self._forced_call(request)
            content = tail = ""
        else:
            splitter = _ReplySplitter(request.prefill, tools=bool(request.tools))
            prompt = request.ids + self._backend().encode(request.prefill)
            for chunk in self._sampler().stream(prompt, stop=request.stop, **request.overrides):
                if delta := splitter.push(chunk.text):
                    yield delta
                if chunk.generation is not None:
                    gens = [chunk.generation]
            content, tail, calls_text = splitter.finish()
            calls, invalid = _parse_tool_calls(calls_text, request.tools)
        metadata = {
            "model_name": self.model_name,
            "finish_reason": gens[-1].finish_reason,
            "power_sampling": self._cost(gens, request.overrides),
        }
        yield _Reply(content, tail, calls, invalid, _usage(gens), metadata)

    def _request(self, messages: list[BaseMessage], stop: Stop, kwargs: dict[str, Any]) -> _Request:
        kwargs = dict(kwargs)
        tools = [convert_to_openai_tool(t) for t in kwargs.pop("tools", None) or []]
        names = [t["function"]["name"] for t in tools]
        choice = _tool_choice(kwargs.pop("tool_choice", None), names)
        response_format = kwargs.pop("response_format", None)
        stop, overrides = self._options(stop, kwargs)
        if choice == "none":
            tools, names = [], []
        dicts, prefill = [_message_dict(m) for m in messages], ""
        if response_format and not tools:
            schema = (response_format.get("json_schema") or {}).get("schema")
            dicts = _with_system(
                dicts, _JSON_PROMPT + (_SCHEMA_PROMPT.format(_json(schema)) if schema else "")
            )
            prefill = _json_prefill(self._backend())
        forced = None if not tools or choice == "auto" else choice
        if forced == "required" and len(names) == 1:
            forced = names[0]
        return _Request(self._render(dicts, tools), names, forced, prefill, stop, overrides)

    def _render(self, dicts: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[int]:
        """Chat-template token ids; tools through the template, or a system message if it has no
        tool support."""
        backend = self._backend()
        uses_tools = bool(tools) or any(d["role"] == "tool" or "tool_calls" in d for d in dicts)
        if uses_tools and not self._template_has_tools(backend):
            return backend.apply_chat_template(_describe_tools(dicts, tools))
        return backend.apply_chat_template(dicts, tools=tools or None)

    def _template_has_tools(self, backend: TextBackend) -> bool:
        """Whether the chat template renders ``tools`` at all (checked once)."""
        if self._native_tools is None:
            probe = [{"role": "user", "content": "?"}]
            tool = convert_to_openai_tool({"name": "probe", "description": "", "parameters": {}})
            try:
                with_tool = backend.apply_chat_template(probe, tools=[tool])
                self._native_tools = with_tool != backend.apply_chat_template(probe)
            except Exception:  # a template that fails on tools has no tool support
                self._native_tools = False
        return self._native_tools

    def _forced_call(self, request: _Request) -> tuple[list[Generation], list[Any], list[Any]]:
        """A tool call whatever the model prefers: the assistant turn starts with the call's
        opening (and the tool's name, when known) and the model writes the rest. If that does not
        parse, retry once, with the next seed and the bound tool closest to the name written."""
        name = request.forced if request.forced in request.tools else None
        overrides, gens, invalid = request.overrides, list[Generation](), list[Any]()
        for _ in range(2):
            prefill = _OPEN + '\n{"name": "' + (f'{name}", "arguments":' if name else "")
            prompt = request.ids + self._backend().encode(prefill)
            gen = self._sampler().generate(prompt, stop=[*request.stop, _CLOSE], **overrides)
            gens.append(gen)
            calls, invalid = _parse_tool_calls(prefill + (gen.text or ""), request.tools)
            if calls and calls[0]["name"] == (name or calls[0]["name"]):
                return gens, calls[:1], []
            name = name or _closest_name(prefill + (gen.text or ""), request.tools)
            seed = self._config.replace(**overrides).seed
            overrides = {**overrides, "seed": None if seed is None else seed + 1}
        return gens, [], invalid[:1]


# -- helpers -------------------------------------------------------------------------------------


def _tool_choice(choice: Any, names: Sequence[str]) -> str:
    """``tool_choice`` as ``auto``, ``required``, ``none`` or a tool name."""
    if isinstance(choice, dict):  # OpenAI's {"type": "function", "function": {"name": ...}}
        choice = choice.get("function", choice).get("name", choice.get("type"))
    if choice in (None, "auto"):
        return "auto"
    if choice in ("any", "required", True):
        return "required"
    if choice in ("none", False):
        return "none"
    if choice in names:
        return str(choice)
    raise ValueError(
        f"tool_choice={choice!r} is invalid: use 'auto', 'any' (or 'required'), 'none' or the "
        f"name of a bound tool ({', '.join(names) or 'none bound'})"
    )


def _message_dict(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message as a chat-template message (text only)."""
    for block in message.content if isinstance(message.content, list) else []:
        if isinstance(block, dict) and block.get("type") in _NON_TEXT:
            raise ValueError(f"{block['type']} content is not supported: the model reads text")
    text = str(message.text)
    if isinstance(message, AIMessage):
        calls = [
            {
                "type": "function",
                "id": c["id"],
                "function": {"name": c["name"], "arguments": c["args"]},
            }
            for c in message.tool_calls
        ]
        return {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}
    if isinstance(message, ToolMessage):
        return {"role": "tool", "content": text, "tool_call_id": message.tool_call_id}
    roles = {HumanMessage: "user", SystemMessage: "system"}
    role = message.role if isinstance(message, ChatMessage) else roles.get(type(message))
    if role is None:
        raise TypeError(f"unsupported message type {type(message).__name__}")
    return {"role": role, "content": text}


def _with_system(dicts: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``text`` appended to the leading system message, or a new one."""
    if dicts and dicts[0]["role"] == "system":
        return [{**dicts[0], "content": f"{dicts[0]['content']}\n\n{text}"}, *dicts[1:]]
    return [{"role": "system", "content": text}, *dicts]


def _describe_tools(
    dicts: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """For templates without tool support: tools listed in the system message, past calls and
    results written out as ``<tool_call>`` and ``<tool_response>`` text."""
    out = []
    for d in dicts:
        if d["role"] == "tool":
            d = {"role": "user", "content": f"<tool_response>\n{d['content']}\n</tool_response>"}
        elif "tool_calls" in d:
            calls = [
                _json({k: c["function"][k] for k in ("name", "arguments")}) for c in d["tool_calls"]
            ]
            text = "\n".join([d["content"], *(f"{_OPEN}\n{c}\n{_CLOSE}" for c in calls)]).strip()
            d = {"role": "assistant", "content": text}
        out.append(d)
    listing = "\n".join(_json(t) for t in tools)
    return _with_system(out, _TOOLS_PROMPT.format(tools=listing)) if tools else out


def _json_prefill(backend: TextBackend) -> str:
    """The opening of a JSON object cut at this tokenizer's token boundary (``{"`` where that is
    one token), so the model continues from a state it knows."""
    first = backend.decode(backend.encode('{"key": 1}')[:1])
    return first if first in ("{", '{"') else "{"


def _parse_tool_calls(text: str, names: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks as tool calls; a block
    that is not JSON, or names no bound tool, becomes an invalid tool call with the error."""
    calls, invalid = [], []
    for match in re.finditer(r"<tool_call>(.*?)(?:</tool_call>|\Z)", text, re.S):
        body, call_id = match.group(1), f"call_{uuid.uuid4().hex[:24]}"
        try:
            obj, _ = json.JSONDecoder().raw_decode(body.strip())
            name, args = obj["name"], obj.get("arguments", obj.get("parameters", {}))
            args = json.loads(args) if isinstance(args, str) else args
            if name not in names or not isinstance(args, dict):
                raise ValueError(f"expected a call of one of {list(names)} with object arguments")
            calls.append(tool_call(name=name, args=args, id=call_id))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            written = re.search(r'"name":\s*"([^"]*)"', body)
            error = f"{type(exc).__name__}: {exc}"
            invalid.append(
                # args: the call as written, tags included (so LangChain's partial-JSON parsing
                # of streamed chunks cannot turn it into a valid call)
                invalid_tool_call(
                    name=written and written.group(1), args=match.group(0), id=call_id, error=error
                )
            )
    return calls, invalid


def _closest_name(text: str, names: Sequence[str]) -> str:
    """The bound tool whose name is closest to the one the model began to write."""
    written = re.search(r'"name":\s*"([^"]*)', text)
    match = difflib.get_close_matches(written.group(1) if written else "", names, n=1, cutoff=0)
    return match[0] if match else names[0]


class _ReplySplitter:
    """Splits streamed text into the visible content and the trailing tool-call section. Text
    that may still become ``<tool_call>`` (and whitespace before it) is held back, so the streamed
    deltas always join to the final content."""

    def __init__(self, prefill: str, *, tools: bool) -> None:
        self.text, self.tools, self.sent = prefill, tools, 0

    def push(self, delta: str) -> str:
        self.text += delta
        visible = self.text
        if self.tools:
            cut = visible.find(_OPEN)
            if cut < 0:
                cut = len(visible) - max(
                    (k for k in range(1, len(_OPEN)) if visible.endswith(_OPEN[:k])), default=0
                )
            visible = visible[:cut].rstrip()
        out, self.sent = visible[self.sent :], max(self.sent, len(visible))
        return out

    def finish(self) -> tuple[str, str, str]:
        """``(content, its part not streamed yet, tool-call text)``."""
        cut = self.text.find(_OPEN) if self.tools else -1
        content = self.text if cut < 0 else self.text[:cut].rstrip()
        return content, content[self.sent :], "" if cut < 0 else self.text[cut:]


def _chat_chunk(item: str | _Reply) -> ChatGenerationChunk:
    if isinstance(item, str):
        return ChatGenerationChunk(message=AIMessageChunk(content=item))
    calls = [(c["name"], _json(c["args"]), c["id"]) for c in item.tool_calls]
    calls += [(c["name"], c["args"], c["id"]) for c in item.invalid_tool_calls]
    message = AIMessageChunk(
        content=item.tail,
        tool_call_chunks=[
            tool_call_chunk(name=n, args=a, id=i, index=k) for k, (n, a, i) in enumerate(calls)
        ],
        usage_metadata=item.usage,
        response_metadata=item.metadata,
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message)


def _require_tool_call(message: AIMessage) -> AIMessage:
    """A clear error when a forced structured-output call did not parse."""
    if not message.tool_calls:
        why = "; ".join(f"{c['error']} in {c['args']!r}" for c in message.invalid_tool_calls)
        raise OutputParserException(
            f"the structured output did not parse: {why or 'no tool call'}",
            llm_output=str(message.content),
        )
    return message


def _usage(
    gens: Sequence[Generation], prompt: str = "input_tokens", completion: str = "output_tokens"
) -> Any:
    """Token counts (LangChain's chat names by default; the LLM's ``token_usage`` names)."""
    counts = [
        sum(g.stats.prompt_tokens for g in gens),
        sum(g.stats.completion_tokens for g in gens),
    ]
    return {prompt: counts[0], completion: counts[1], "total_tokens": sum(counts)}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


_DONE = object()


async def _in_thread(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Run a blocking iterator in a worker thread and yield its items without blocking the event
    loop. Closing the async iterator early stops the worker after its current sampler step."""
    loop, cancelled = asyncio.get_running_loop(), threading.Event()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()

    def put(item: Any, error: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))
        except RuntimeError:  # the event loop is closed: nobody is listening
            cancelled.set()

    def work() -> None:
        iterator = make()
        try:
            for item in iterator:
                if cancelled.is_set():
                    break
                put(item)
            put(_DONE)
        except BaseException as exc:  # re-raised in the caller's task
            put(_DONE, exc)
        finally:
            getattr(iterator, "close", lambda: None)()

    threading.Thread(target=work, name="power-sampling-stream", daemon=True).start()
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        cancelled.set()
