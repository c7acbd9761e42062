"""The tool-call text protocol of local chat models, framework-free.

Calls are written ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Qwen /
Hermes format that SmolLM2's and Qwen's templates use). Tools go through the chat template's
own tool support (``apply_chat_template(tools=...)``) or, for a template without it, into a
system message that describes them and this format (:func:`describe_tools`); the choice is
made by :func:`power_sampling.chat.render.render_chat`.

The LangChain chat model (:mod:`power_sampling.integrations.langchain.tool_calls`) and the HTTP
server (:mod:`power_sampling.serving`) both build on this module; it imports no framework.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..constraints.chat import CLOSE, OPEN
from ..errors import FieldError

TOOLS_PROMPT = (
    "# Tools\n\nYou may call the functions described by the JSON schemas inside <tools></tools>:"
    "\n<tools>\n{tools}\n</tools>\n\nTo call a function, reply with one JSON object per call "
    'inside <tool_call></tool_call> tags:\n<tool_call>\n{{"name": <function-name>, "arguments": '
    "<arguments-json-object>}}\n</tool_call>"
)
CALL_PATTERN = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)
NAME_PATTERN = re.compile(r'"name":\s*"([^"]*)')


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def normalize_tool_choice(choice: Any, names: Sequence[str]) -> str:
    """``tool_choice`` as ``auto``, ``required``, ``none`` or a tool name (an ``allowed_tools``
    choice as its mode; :func:`resolve_tool_choice` keeps its tools too)."""
    return resolve_tool_choice(choice, names)[0]


def resolve_tool_choice(choice: Any, names: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``tool_choice`` in any form callers give it, as ``(mode, tools)``: the mode is ``auto``,
    ``required``, ``none`` or a tool name, and ``tools`` the names the reply may call.

    Forms: ``"auto"``, ``"none"``, ``"required"`` (or ``"any"``, ``True``, ``False``, a bound
    tool's name), OpenAI's ``{"type": "function", "function": {"name": ...}}`` and
    ``{"type": "allowed_tools", "allowed_tools": {"mode": ..., "tools": [...]}}``, Anthropic's
    ``{"type": "auto" | "any" | "tool", "name": ...}``. A malformed one, a name that is not
    bound, or a choice that needs a tool when none is bound raises :class:`FieldError`."""
    names = tuple(names)
    if isinstance(choice, Mapping):
        return _choice_object(choice, names)
    if choice in (None, "auto") or (choice == "none" or choice is False):
        return ("none" if choice in ("none", False) else "auto"), names
    if choice in ("any", "required", True):
        if not names:
            raise FieldError(
                "tool_choice",
                f"{choice!r} needs at least one tool: pass tools, or leave tool_choice out",
            )
        return "required", names
    if isinstance(choice, str) and choice in names:
        return choice, names
    raise FieldError(
        "tool_choice",
        f"{choice!r} is invalid: use 'auto', 'none', 'required' or "
        '{"type": "function", "function": {"name": <tool>}} naming a tool given in tools ('
        f"{', '.join(names) or 'none given'})",
    )


def _choice_object(
    choice: Mapping[str, Any], names: tuple[str, ...]
) -> tuple[str, tuple[str, ...]]:
    kind = choice.get("type")
    if kind == "allowed_tools":
        return _allowed_tools(choice.get("allowed_tools"), names)
    if kind in ("auto", "any", "none") and set(choice) <= {"type", "disable_parallel_tool_use"}:
        return resolve_tool_choice(kind, names)
    if kind == "function" or (kind is None and "function" in choice):
        function, where = choice.get("function"), "tool_choice.function"
        if not isinstance(function, Mapping):
            raise FieldError(
                where,
                f"must be an object, got {function!r}: use "
                '{"type": "function", "function": {"name": <tool>}}',
            )
        return _named(function.get("name"), names, f"{where}.name"), names
    if kind in ("tool", None) and "name" in choice:
        return _named(choice.get("name"), names, "tool_choice.name"), names
    raise FieldError(
        "tool_choice.type",
        f"{kind!r} is invalid: use 'function' (with function.name) or 'allowed_tools'",
    )


def _named(name: Any, names: tuple[str, ...], where: str) -> str:
    if not isinstance(name, str) or not name:
        raise FieldError(where, f"must be a tool's name (a string), got {name!r}")
    if name not in names:
        raise FieldError(
            where,
            f"{name!r} is not among the tools given ({', '.join(names) or 'none given'}): "
            "name one of them, or add it to tools",
        )
    return name


def _allowed_tools(spec: Any, names: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    where = "tool_choice.allowed_tools"
    if not isinstance(spec, Mapping):
        raise FieldError(where, 'must be an object: {"mode": "auto", "tools": [...]}')
    mode = spec.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise FieldError(f"{where}.mode", f"{mode!r} is invalid: use 'auto' or 'required'")
    tools = spec.get("tools")
    if not isinstance(tools, list) or not tools:
        raise FieldError(f"{where}.tools", "must be a non-empty list of tools to allow")
    allowed = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if name is None and isinstance(tool, Mapping):
            name = tool.get("name")
        allowed.append(_named(name, names, f"{where}.tools[{i}].function.name"))
    return str(mode), tuple(n for n in names if n in allowed)


def with_system(dicts: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``text`` appended to the leading system message, or a new one."""
    if dicts and dicts[0]["role"] == "system":
        return [{**dicts[0], "content": f"{dicts[0]['content']}\n\n{text}"}, *dicts[1:]]
    return [{"role": "system", "content": text}, *dicts]


def describe_tools(
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
                to_json({k: c["function"][k] for k in ("name", "arguments")})
                for c in d["tool_calls"]
            ]
            text = "\n".join([d["content"], *(f"{OPEN}\n{c}\n{CLOSE}" for c in calls)]).strip()
            d = {"role": "assistant", "content": text}
        out.append(d)
    listing = "\n".join(to_json(t) for t in tools)
    return with_system(out, TOOLS_PROMPT.format(tools=listing)) if tools else out


def read_calls(text: str, names: Sequence[str]) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """Each ``<tool_call>`` block of ``text`` as ``(block, call, error)``: the block as written,
    then ``{"name", "arguments": <object>}`` and no error when it is a JSON call of a bound tool
    with object arguments, else None and the error (``"<ExceptionType>: <message>"``)."""
    for match in CALL_PATTERN.finditer(text):
        try:
            obj, _ = json.JSONDecoder().raw_decode(match.group(1).strip())
            if not isinstance(obj, dict) or obj.get("name") not in names:
                raise ValueError(f"expected a call of one of {list(names)}")
            args = obj.get("arguments", obj.get("parameters", {}))
            if isinstance(args, str):
                args = json.loads(args)
            if not isinstance(args, dict):
                raise ValueError("the arguments must be a JSON object")
        except ValueError as exc:
            yield match.group(0), None, f"{type(exc).__name__}: {exc}"
            continue
        yield match.group(0), {"name": obj["name"], "arguments": args}, ""


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_calls(text: str, names: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``<tool_call>`` blocks of ``text`` as OpenAI tool calls
    (``{"id", "type": "function", "function": {"name", "arguments": <JSON text>}}``), and one
    error message per block that is not a JSON call of a bound tool with object arguments."""
    calls: list[dict[str, Any]] = []
    errors: list[str] = []
    for block, call, error in read_calls(text, names):
        if call is None:
            errors.append(f"{error} in {block!r}")
            continue
        function = {"name": call["name"], "arguments": to_json(call["arguments"])}
        calls.append({"id": call_id(), "type": "function", "function": function})
    return calls, errors


class ReplySplitter:
    """Splits streamed text into the visible content and the trailing tool-call section. Text
    that may still become ``<tool_call>`` (and whitespace before it) is held back, so the streamed
    deltas always join to the final content."""

    def __init__(self, *, tools: bool) -> None:
        self.text, self.tools, self.sent = "", tools, 0

    def push(self, delta: str) -> str:
        self.text += delta
        visible = self.text
        if self.tools:
            cut = visible.find(OPEN)
            if cut < 0:
                cut = len(visible) - max(
                    (k for k in range(1, len(OPEN)) if visible.endswith(OPEN[:k])), default=0
                )
            visible = visible[:cut].rstrip()
        out, self.sent = visible[self.sent :], max(self.sent, len(visible))
        return out

    def finish(self) -> tuple[str, str, str]:
        """``(content, its part not streamed yet, tool-call text)``."""
        cut = self.text.find(OPEN) if self.tools else -1
        content = self.text if cut < 0 else self.text[:cut].rstrip()
        return content, content[self.sent :], "" if cut < 0 else self.text[cut:]
