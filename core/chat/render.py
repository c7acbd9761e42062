"""Chat messages to a :class:`~power_sampling.request.Request`: the one renderer every entry point
calls (the HTTP server, the LangChain chat model, the DSPy LM).

A chat's options (``tools``, ``tool_choice``, ``response_format``) are normalised once into
:class:`ChatOptions`, which also chooses the reply's constraint: one schema-valid call for a
forced ``tool_choice``, text or text and one call for ``"auto"``, JSON valid under the
``response_format`` (whose schema is also put before the model in a system message).
:func:`render` then turns a request whose prompt is chat messages into one whose prompt is the
chat template's token ids (tools through the template, or described in a system message when
the template has no tool support) and whose constraint is that one.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import TextBackend
from ..constraints import Constraint, GrammarConstraint, closing_constraint
from ..constraints.chat import response_format_constraint, tool_call_constraint
from ..request import Request
from ..samplers.power_sampler import PowerSampler
from .tools import describe_tools, resolve_tool_choice, to_json, with_system

JSON_PROMPT = "Reply with one JSON object and nothing else."
SCHEMA_PROMPT = " It must match this JSON schema:\n{}"


@dataclass(frozen=True)
class ChatOptions:
    """A chat's tools and reply format, normalised: ``tool_choice`` is ``auto``, ``required``,
    ``none`` or a tool name (``none`` leaves no tools); ``response_format`` is ``json_object``
    or ``json_schema`` (``text`` is None). Picklable: it travels to replicas with the call."""

    tools: tuple[dict[str, Any], ...] = ()
    """OpenAI-format tools, ``{"type": "function", "function": {"name", "parameters"}}``."""
    tool_choice: str = "auto"
    response_format: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> ChatOptions:
        """Options as callers give them (``tool_choice`` in any form that
        :func:`~.tools.resolve_tool_choice` takes; ``allowed_tools`` keeps only the tools it
        names); a bad one raises ``ValueError`` naming the field."""
        tools = tuple(tools or ())
        choice, allowed = resolve_tool_choice(tool_choice, [t["function"]["name"] for t in tools])
        fmt = dict(response_format) if response_format else None
        if fmt is not None and fmt.get("type", "text") == "text":
            fmt = None
        kept = (
            () if choice == "none" else tuple(t for t in tools if t["function"]["name"] in allowed)
        )
        return cls(kept, choice, fmt)

    @property
    def names(self) -> list[str]:
        """The names of the tools the reply may call."""
        return [t["function"]["name"] for t in self.tools]

    def constraint(self) -> Constraint | None:
        """The reply's constraint (cached by source: equal options share one); a bad tool schema
        or format raises ``ValueError``."""
        if self.tools:
            return tool_call_constraint(self.tools, self.tool_choice)
        if self.response_format is not None:
            return response_format_constraint(self.response_format)
        return None

    def system_prompt(self) -> str | None:
        """What the model is told about a JSON reply format, schema included (None without
        one, or with tools: their calls are described by the template)."""
        if self.tools or self.response_format is None:
            return None
        inner = self.response_format.get("json_schema", self.response_format)
        schema = inner.get("schema") if isinstance(inner, Mapping) else None
        return JSON_PROMPT + (SCHEMA_PROMPT.format(to_json(schema)) if schema else "")


@dataclass(frozen=True)
class RenderedChat:
    """A chat rendered: the request to run and the names of the tools its reply may call."""

    request: Request
    tools: list[str] = field(default_factory=list)


def render(
    sampler: PowerSampler,
    request: Request,
    options: ChatOptions | None = None,
    *,
    describe_format: bool = True,
) -> RenderedChat:
    """``request`` (its prompt chat messages) with the prompt rendered by ``sampler``'s chat
    template and the constraint of ``options``. ``describe_format=False`` leaves out the JSON
    system prompt, for callers whose messages already describe the format. A constraint that
    cannot be compiled for this model raises ``ValueError`` here, before any work. The constraint
    closes within the request's ``max_new_tokens`` (the closing search of
    :mod:`~power_sampling.constraints.budget`), so a reply whose budget allows a minimal valid
    one is never cut half-written."""
    options = options or ChatOptions()
    backend = sampler._text_backend("chat messages")
    messages = [] if isinstance(request.prompt, str) else list(request.prompt)
    dicts = [dict(m) for m in messages if isinstance(m, Mapping)]
    if isinstance(request.prompt, str) or len(dicts) != len(messages):
        raise TypeError("render takes a request whose prompt is a list of chat messages")
    constraint = options.constraint()
    if describe_format and (system := options.system_prompt()) is not None:
        dicts = with_system(dicts, system)
    if isinstance(constraint, GrammarConstraint):
        constraint.compiled(backend)
        constraint = closing_constraint(constraint, request.config.max_new_tokens)
    ids = render_chat(backend, dicts, list(options.tools))
    rendered = dataclasses.replace(request, prompt=ids, constraint=constraint)
    return RenderedChat(rendered, options.names)


def render_chat(
    backend: TextBackend, dicts: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[int]:
    """Chat-template token ids (generation prompt added); tools through the template, or a
    system message when the template has no tool support."""
    uses_tools = bool(tools) or any(d["role"] == "tool" or "tool_calls" in d for d in dicts)
    if uses_tools and not template_has_tools(backend):
        return backend.apply_chat_template(describe_tools(dicts, tools))
    return backend.apply_chat_template(dicts, tools=tools or None)


_NATIVE_TOOLS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def template_has_tools(backend: TextBackend) -> bool:
    """Whether the chat template renders ``tools`` at all (checked once per backend)."""
    known = _NATIVE_TOOLS.get(backend)
    if known is not None:
        return known
    probe = [{"role": "user", "content": "?"}]
    tool = {"type": "function", "function": {"name": "probe", "description": "", "parameters": {}}}
    try:
        native = backend.apply_chat_template(probe, tools=[tool]) != backend.apply_chat_template(
            probe
        )
    except Exception:  # a template that fails on tools has no tool support
        native = False
    _NATIVE_TOOLS[backend] = native
    return native
