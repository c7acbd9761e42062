"""OpenAI requests to sampler requests, and generations back to OpenAI choices.

Two stages, so that the first needs no model and the second runs where the model is (in this
process, or in a Ray replica):

- :func:`chat_call` / :func:`completion_call`: an HTTP body checked and resolved into a
  :class:`Call` (settings merged once with :func:`~power_sampling.request.resolve_settings`;
  every mistake a ``ValueError`` naming the field and the fix, before any work).
- :func:`prepare`: a call rendered with the model's tokenizer and chat template into one
  :class:`~power_sampling.request.Request` per choice; :func:`finish` turns a choice's
  generation into its content, tool calls and finish reason.

Seeds: with ``seed`` s, choice 0 runs with seed s, so it is the answer
``PowerSampler.generate(..., seed=s)`` gives in-process, on any replica; choice i > 0 runs with a
seed derived from (s, i). Without a seed the choices are unseeded and may share batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..chat import tools as tc
from ..chat.render import ChatOptions, render
from ..config import PowerSamplingConfig
from ..errors import FieldError
from ..generation import Generation
from ..request import Prompt, Request, resolve_settings
from ..samplers.power_sampler import PowerSampler
from . import inputs
from .limits import tokens_at_least
from .schemas import ChatCompletionRequest, CompletionRequest


@dataclass(frozen=True)
class Call:
    """One HTTP request, checked, before the model sees it (picklable: it travels to replicas)."""

    prompts: tuple[Prompt, ...]
    """Chat: one list of messages. Text completions: texts or token-id lists."""
    config: PowerSamplingConfig
    n: int = 1
    chat: bool = True
    options: ChatOptions = field(default_factory=ChatOptions)
    """Chat: the tools and reply format; the reply is constrained to them."""
    stop: tuple[str, ...] = ()
    max_tokens_given: bool = False
    """The request set ``max_tokens``: one that does not fit the context is a 400. Without it,
    each prompt's ``max_new_tokens`` is clipped to the room its prompt leaves, as vLLM does."""


@dataclass
class Prepared:
    """One choice of a call, rendered: its request and the tools its reply may call."""

    index: int
    request: Request
    tools: list[str] = field(default_factory=list)


@dataclass
class Choice:
    """A finished choice: ``content`` whole, ``tail`` its part not streamed yet."""

    index: int
    content: str | None
    tail: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    generation: Generation


@dataclass(frozen=True)
class Delta:
    """Streamed content of choice ``index``."""

    index: int
    text: str


def settings_of(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """The request's sampler settings: ``power_sampling`` plus the OpenAI fields
    (``max_tokens``/``max_completion_tokens``, ``seed`` and the sampling fields, whose meaning is
    the table of :mod:`power_sampling.fields`); a conflict is an error."""
    settings = dict(body.power_sampling or {})
    limit = getattr(body, "max_completion_tokens", None) or body.max_tokens
    fields = [("max_new_tokens", limit), ("seed", body.seed), *body.sampling_fields().items()]
    for name, value in fields:
        if value is None:
            continue
        given = settings.get(name, settings.get("max_tokens") if name == "max_new_tokens" else None)
        if given is not None and given != value:
            raise FieldError(
                f"power_sampling.{name}",
                f"power_sampling.{name}={given!r} contradicts the request's {value!r}: "
                "give it in one place",
                named=False,
            )
        settings[name] = value
    return settings


def _config(
    body: ChatCompletionRequest | CompletionRequest, defaults: PowerSamplingConfig
) -> PowerSamplingConfig:
    if (name := body.unsupported()) is not None:
        raise ValueError(f"{name} is not supported by this server: leave it out")
    return resolve_settings(defaults, settings_of(body))


def chat_call(body: ChatCompletionRequest, defaults: PowerSamplingConfig) -> Call:
    """A chat completion request as a :class:`Call`."""
    config = _config(body, defaults)
    messages = [inputs.message(i, m) for i, m in enumerate(body.messages)]
    seen: set[str] = set()
    tools = [inputs.tool(i, t, seen) for i, t in enumerate(body.tools or [])]
    inputs.check_tool_choice(body.tool_choice, tools)
    options = ChatOptions.of(tools, body.tool_choice, body.response_format)
    options.constraint()  # built here so that a bad tool or format is a 400 before any work
    return Call((messages,), config, body.n or 1, True, options, body.stops, _given(body))


def completion_call(body: CompletionRequest, defaults: PowerSamplingConfig) -> Call:
    """A text completion request as a :class:`Call` (one prompt or several)."""
    config = _config(body, defaults)
    prompts = body.prompts
    if not prompts:
        raise ValueError("prompt is empty: give a string, token ids, or a list of them")
    return Call(
        tuple(prompts), config, body.n or 1, False, stop=body.stops, max_tokens_given=_given(body)
    )


def _given(body: ChatCompletionRequest | CompletionRequest) -> bool:
    settings = settings_of(body)
    return settings.get("max_new_tokens", settings.get("max_tokens")) is not None


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice 0 keeps the request's seed; choice i gets one derived from (seed, i)."""
    if seed is None or index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def prepare(call: Call, sampler: PowerSampler) -> list[Prepared]:
    """Render every choice of ``call`` into a request on this sampler's model; a prompt that
    does not fit (with the request's ``max_tokens``, when it gives one) raises ``ValueError``
    here, before any choice runs."""
    out: list[Prepared] = []
    for p, prompt in enumerate(call.prompts):
        _check_size(prompt, sampler, "messages" if call.chat else "prompt")
        prepared = _prepare_chat(call, prompt, sampler) if call.chat else None
        if prepared is None:
            ids = sampler.encode_prompt(prompt)
            prepared = Prepared(0, Request(ids, call.config, call.stop))
        limit, what = call.config.max_new_tokens, "messages" if call.chat else "prompt"
        ids = list(prepared.request.prompt)  # type: ignore[arg-type]
        try:
            sampler.check_fits(ids, what=what)  # the prompt alone
        except ValueError as error:
            raise FieldError(what, str(error), named=False) from None
        try:
            fits = sampler.check_fits(ids, limit, strict=call.max_tokens_given, what=what)
        except ValueError as error:
            raise FieldError("max_tokens", str(error), named=False) from None
        for j in range(call.n):
            index = p * call.n + j
            config = call.config.replace(
                seed=choice_seed(call.config.seed, index), max_new_tokens=min(limit, fits)
            )
            request = dataclasses.replace(prepared.request, config=config)
            out.append(Prepared(index, request, prepared.tools))
    return out


def _check_size(prompt: Prompt, sampler: PowerSampler, what: str) -> None:
    """Refuse, before rendering or tokenising it, a prompt too long for the context whatever
    its tokens (:func:`~.limits.tokens_at_least`): a huge body costs no tokenisation."""
    context = getattr(sampler.backend, "max_context", None)
    text = getattr(sampler.backend, "text", None)
    if context is None or text is None:
        return
    least = tokens_at_least(prompt, text.max_token_bytes)
    if least >= context:
        raise FieldError(
            what,
            f"This model's maximum context length is {context} tokens. However, the {what} "
            f"has at least {least} tokens (measured from its size before tokenising), which "
            f"leaves no room for the completion: shorten the {what}",
            named=False,
        )


def _prepare_chat(call: Call, messages: Any, sampler: PowerSampler) -> Prepared:
    """The chat rendered with its tools and its reply's constraint."""
    chat = render(sampler, Request(messages, call.config, call.stop), call.options)
    return Prepared(0, chat.request, chat.tools)


def finish(prepared: Prepared, splitter: tc.ReplySplitter, gen: Generation) -> Choice:
    """A choice's generation read as content and tool calls (``splitter`` has seen its text)."""
    content, tail, calls_text = splitter.finish()
    calls: list[dict[str, Any]] = []
    if prepared.tools and calls_text:
        calls, _errors = tc.parse_calls(calls_text, prepared.tools)
        if not calls:  # nothing parsed: the reply is shown as written, as text
            content, tail = splitter.text, splitter.text[splitter.sent :]
    reason = "tool_calls" if calls else gen.finish_reason
    return Choice(
        prepared.index,
        content if content or not calls else None,
        tail,
        calls,
        reason,
        len(prepared.request.prompt),
        len(gen.token_ids),
        gen,
    )


def usage(choices: Sequence[Choice], n: int) -> dict[str, int]:
    """OpenAI's usage: each prompt counted once (its ``n`` choices share it), every choice's
    completion tokens."""
    prompts = {c.index // max(n, 1): c.prompt_tokens for c in choices}
    prompt_tokens, completion = sum(prompts.values()), sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
