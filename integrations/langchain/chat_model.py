"""LangChain integration: ``ChatPowerSampling`` (chat model with tool calling) and
``PowerSamplingLLM`` (text completion), both sampling with :class:`~power_sampling.PowerSampler`.

>>> llm = ChatPowerSampling(preset="cpu")              # the embedded SmolLM2, loaded on first use
>>> (prompt | llm | StrOutputParser()).invoke({...})   # a drop-in chat model

The adapter only translates: LangChain messages to a
:class:`~power_sampling.request.Request` (rendered by :mod:`power_sampling.chat.render`, as
every entry point's chats are), sampler output to ``AIMessage`` and tool calls (the
text protocol is in :mod:`.tool_calls`, shared fields in :mod:`.params`, message
conversion in :mod:`.messages`). Requests run on the model's shared
:class:`~power_sampling.engine.scheduler.Scheduler`, so concurrent calls (``batch``, agents,
threads) share the model's calls step by step, and every instance naming the same model shares
one loaded copy.
Tool calls and structured output are constrained (:mod:`power_sampling.constraints.chat`): a
forced ``tool_choice`` makes the reply exactly one ``<tool_call>`` whose arguments are valid
under the tool's schema, ``"auto"`` lets it be text (without tool markup) or text and one valid
call, and ``response_format`` (``with_structured_output``'s JSON methods) makes it a JSON object
valid under the schema. Only a reply cut by ``max_new_tokens`` can still fail to parse; it is
reported in ``invalid_tool_calls`` (or as a parsing error).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "the LangChain integration needs: pip install 'power-sampling[langchain]'"
    ) from exc

from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult, GenerationChunk, LLMResult
from langchain_core.outputs import Generation as TextGeneration
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from ...chat.render import ChatOptions, RenderedChat, render, render_chat
from ...generation import Generation
from . import calls
from . import tool_calls as tc
from .messages import (
    Reply,
    chat_chunk,
    chat_result,
    message_dict,
    openai_tool,
    require_tool_call,
)
from .params import PARALLEL_TOOL_CALLS, PowerSamplingParams, Stop, cost, usage

__all__ = ["ChatPowerSampling", "PowerSamplingLLM"]

logger = logging.getLogger(__name__)


class PowerSamplingLLM(PowerSamplingParams, BaseLLM):
    """A text-completion LLM (the raw prompt, no chat template) sampling with power sampling.

    ``batch`` and ``generate`` submit every prompt at once, so their model calls are merged (a
    seeded prompt's output equals ``invoke`` of the same prompt all the same). For
    chat, tools and structured output use :class:`ChatPowerSampling`.
    """

    @property
    def _llm_type(self) -> str:
        return "power-sampling"

    def _generate(
        self, prompts: list[str], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> LLMResult:
        requests = [self._request(p, stop, kwargs) for p in prompts]
        on_text = None
        if run_manager:  # pieces of every prompt, as ChatOllama reports them on invoke too

            def on_text(_: int, text: str) -> None:
                run_manager.on_llm_new_token(text, chunk=GenerationChunk(text=text))

        gens = calls.run_all(self._scheduler(), requests, self._options(kwargs), on_text)
        return self._result(gens)

    async def _agenerate(
        self, prompts: list[str], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> LLMResult:
        scheduler, options = self._scheduler(), self._options(kwargs)

        async def run(prompt: str) -> Generation:
            gen = None
            async for piece in calls.astream(
                scheduler, self._request(prompt, stop, kwargs), options
            ):
                if run_manager and piece.text:
                    await run_manager.on_llm_new_token(
                        piece.text, chunk=GenerationChunk(text=piece.text)
                    )
                gen = piece.generation or gen
            assert gen is not None
            return gen

        return self._result(list(await asyncio.gather(*(run(p) for p in prompts))))

    def _result(self, gens: list[Generation]) -> LLMResult:
        token_usage = usage(gens, "prompt")
        generations = [[_text_generation(g)] for g in gens]
        return LLMResult(
            generations=generations,
            llm_output={"model_name": self.model_name, "token_usage": token_usage},
        )

    def _stream(
        self, prompt: str, stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[GenerationChunk]:
        request, options = self._request(prompt, stop, kwargs), self._options(kwargs)
        for piece in calls.stream(self._scheduler(), request, options):
            chunk = _text_chunk(piece.text, piece.generation)
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self, prompt: str, stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[GenerationChunk]:
        request, options = self._request(prompt, stop, kwargs), self._options(kwargs)
        async for piece in calls.astream(self._scheduler(), request, options):
            chunk = _text_chunk(piece.text, piece.generation)
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def _text_generation(gen: Generation) -> TextGeneration:
    return TextGeneration(text=gen.text or "", generation_info=_info(gen))


def _info(gen: Generation) -> dict[str, Any]:
    return {"finish_reason": gen.finish_reason, "power_sampling": cost([gen])}


def _text_chunk(text: str, gen: Generation | None) -> GenerationChunk:
    return GenerationChunk(text=text, generation_info=_info(gen) if gen else None)


class ChatPowerSampling(PowerSamplingParams, BaseChatModel):
    """A LangChain chat model that samples from p(x)^alpha with scalable power sampling.

    >>> llm = ChatPowerSampling(model="Qwen/Qwen2.5-7B-Instruct", device="cuda", alpha=4)
    >>> llm.invoke("What is 17 * 23?").content

    Messages are rendered with the model's chat template; ``bind_tools`` takes ``tool_choice``
    ``"auto"``, ``"any"``/``"required"``, ``"none"`` or a tool name, and the reply is
    constrained to it; ``with_structured_output`` works by a forced tool call or a JSON
    constraint. ``usage_metadata`` counts prompt and completion
    tokens; ``response_metadata["power_sampling"]`` holds the settings that ran and the sampler's
    work. Unknown keys raise ``ValueError`` naming the closest setting; keys of hosted models'
    clients (``api_key``, ``base_url``) are accepted and ignored; ``timeout`` and ``max_retries``
    are honoured (see :mod:`.calls`).

    ``init_chat_model`` knows only LangChain's own providers; pass an instance instead, e.g.
    ``create_agent(model=ChatPowerSampling(model="Qwen/Qwen2.5-7B-Instruct"), tools=[...])``.
    """

    streaming: bool = False
    """Run ``invoke`` through the streaming path (LangChain's standard flag)."""

    @property
    def _llm_type(self) -> str:
        return "power-sampling-chat"

    def _generate(
        self, messages: list[BaseMessage], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        reply = None
        for item in self._run(messages, stop, kwargs):  # streamed, as ChatOllama's invoke is
            if isinstance(item, Reply):
                reply = item
            elif run_manager:
                run_manager.on_llm_new_token(item, chunk=chat_chunk(item))
        assert reply is not None
        return chat_result(reply)

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        reply = None
        async for item in self._arun(messages, stop, kwargs):
            if isinstance(item, Reply):
                reply = item
            elif run_manager:
                await run_manager.on_llm_new_token(item, chunk=chat_chunk(item))
        assert reply is not None
        return chat_result(reply)

    def _stream(
        self, messages: list[BaseMessage], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for item in self._run(messages, stop, kwargs):  # LangChain fires the token callbacks
            yield chat_chunk(item)

    async def _astream(
        self, messages: list[BaseMessage], stop: Stop = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for item in self._arun(messages, stop, kwargs):
            yield chat_chunk(item)

    def _get_llm_string(self, stop: Stop = None, **kwargs: Any) -> str:
        """LangChain's cache key: every setting that runs (``_identifying_params``), not the
        ``dumpd`` form, which an instance built from a live backend lacks."""
        params = {**self._get_invocation_params(stop=stop, **kwargs), **kwargs}
        return str(sorted(params.items()))

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Bind tools; ``tool_choice`` is ``"auto"`` (default: text, or text and one call),
        ``"any"``/``"required"`` (one call of any tool), ``"none"`` or a tool name (one call of
        it). Calls are always constrained to the tool's schema, so ``strict`` (OpenAI's flag
        for that) changes nothing, whatever its value; only a call cut by ``max_new_tokens``
        ends up in ``invalid_tool_calls``. A reply holds at most one call:
        ``parallel_tool_calls=True`` raises ``ValueError``."""
        if parallel_tool_calls:
            raise ValueError(PARALLEL_TOOL_CALLS)
        formatted = [openai_tool(t) for t in tools]
        choice = tc.normalize_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])
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
        forces a call of a tool named after it and ``json_schema`` a JSON reply, both constrained
        to the schema; ``json_mode`` constrains the reply to some JSON object (the schema is only
        described in the prompt). All three put the schema before the model. Pydantic objects are
        validated; a reply that does not parse (cut by ``max_new_tokens``, or a ``json_mode``
        object of other fields) raises ``OutputParserException`` (``include_raw=True``: returned
        as ``parsing_error``). ``strict`` is accepted and ignored: outputs are always strict."""
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: Runnable[Any, Any]
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=trace)
            parser = RunnableLambda(require_tool_call) | (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_mode", "json_schema"):
            parameters = convert_to_openai_tool(schema)["function"]["parameters"]
            response_format: dict[str, Any] = {"type": "json_schema", "schema": parameters}
            if method == "json_mode":  # any JSON object; the schema only goes in the prompt
                response_format["type"] = "json_object"
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
        formatted = [openai_tool(t) for t in tools or []]
        return len(render_chat(self._backend(), [message_dict(m) for m in messages], formatted))

    # -- translation -----------------------------------------------------------------------------

    def _run(
        self, messages: list[BaseMessage], stop: Stop, kwargs: dict[str, Any]
    ) -> Iterator[str | Reply]:
        """Visible text deltas, then the ``Reply``: invoke and stream share this one path."""
        chat = self._chat(messages, stop, kwargs)
        splitter, gen = tc.ReplySplitter(tools=bool(chat.tools)), None
        for chunk in calls.stream(self._scheduler(), chat.request, self._options(kwargs)):
            if delta := splitter.push(chunk.text):
                yield delta
            gen = chunk.generation or gen
        assert gen is not None
        yield self._reply(chat, splitter, [gen])

    async def _arun(
        self, messages: list[BaseMessage], stop: Stop, kwargs: dict[str, Any]
    ) -> AsyncIterator[str | Reply]:
        """:meth:`_run` for async callers."""
        chat = self._chat(messages, stop, kwargs)
        splitter, gen = tc.ReplySplitter(tools=bool(chat.tools)), None
        async for chunk in calls.astream(self._scheduler(), chat.request, self._options(kwargs)):
            if delta := splitter.push(chunk.text):
                yield delta
            gen = chunk.generation or gen
        assert gen is not None
        yield self._reply(chat, splitter, [gen])

    def _reply(
        self, chat: RenderedChat, splitter: tc.ReplySplitter, gens: list[Generation]
    ) -> Reply:
        content, tail, calls_text = splitter.finish()
        calls, invalid = tc.parse_tool_calls(calls_text, chat.tools)
        return Reply(content, tail, calls, invalid, usage(gens), self._metadata(gens))

    def _metadata(self, gens: list[Generation]) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_provider": "power_sampling",
            "finish_reason": gens[-1].finish_reason,
            "power_sampling": cost(gens),
        }

    def _chat(
        self, messages: list[BaseMessage], stop: Stop, kwargs: dict[str, Any]
    ) -> RenderedChat:
        kwargs = dict(kwargs)
        tools = [openai_tool(t) for t in kwargs.pop("tools", None) or []]
        choice, response_format = (
            kwargs.pop("tool_choice", None),
            kwargs.pop("response_format", None),
        )
        options = ChatOptions.of(tools, choice, response_format)
        request = self._request([message_dict(m) for m in messages], stop, kwargs)
        return render(self._scheduler().sampler, request, options)
