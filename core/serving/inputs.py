"""The parts of a chat request that pydantic leaves loose, checked field by field: messages,
tools and ``tool_choice``. Every mistake is a :class:`~power_sampling.errors.FieldError` naming
the field as the client wrote it (``messages[2].content``, ``tools[0].function.name``), which
the app answers with a 400 whose ``param`` is that field.

What is accepted follows OpenAI's chat completions API: roles ``system``, ``developer``,
``user``, ``assistant`` and ``tool``; content a string or a list of text parts (``null`` only
for an assistant turn); ``name`` a string; assistant ``tool_calls`` a list of
``{"id", "type": "function", "function": {"name", "arguments"}}`` with ``arguments`` a JSON
text (or an object); a tool message's ``tool_call_id`` a string; tools of type ``function``
with names of letters, digits, ``_`` and ``-`` (at most 64), no two alike.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from ..errors import FieldError
from ..request import content_text

__all__ = ["check_tool_choice", "message", "tool"]

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
ROLES["tool"] = "tool"
TOOL_CHOICES = ("auto", "none", "required")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def message(index: int, item: Any) -> dict[str, Any]:
    """An OpenAI message (``messages[index]``) as a chat-template message."""
    where = f"messages[{index}]"
    if not isinstance(item, dict):
        raise FieldError(where, "must be an object such as {'role': 'user', 'content': '...'}")
    role = item.get("role")
    if role is None:
        raise FieldError(
            f"{where}.role", "is missing: give system, developer, user, assistant or tool"
        )
    if not isinstance(role, str) or role not in ROLES:
        raise FieldError(
            f"{where}.role", f"{role!r} is invalid: use system, developer, user, assistant or tool"
        )
    content = item.get("content")
    if content is None and role != "assistant":
        raise FieldError(f"{where}.content", f"is missing: a {role} message needs its text")
    content = _content(content, f"{where}.content")
    out: dict[str, Any] = {"role": ROLES[role], "content": content}
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise FieldError(f"{where}.name", f"must be a string, got {type(name).__name__}")
    if role == "tool":
        call_id = item.get("tool_call_id")
        if call_id is not None and not isinstance(call_id, str):
            raise FieldError(
                f"{where}.tool_call_id", f"must be a string, got {type(call_id).__name__}"
            )
        out["tool_call_id"] = call_id
    calls = item.get("tool_calls")
    if calls is not None and role != "assistant":
        raise FieldError(
            f"{where}.tool_calls", f"is only allowed on assistant messages, not {role}"
        )
    if calls is not None and not isinstance(calls, list):
        raise FieldError(f"{where}.tool_calls", "must be a list of tool calls")
    if calls:
        out["tool_calls"] = [_past_call(f"{where}.tool_calls[{i}]", c) for i, c in enumerate(calls)]
    return out


def _content(content: Any, where: str) -> str:
    if isinstance(content, list):
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise FieldError(
                    f"{where}[{i}]", "must be a content part such as {'type': 'text', 'text': ...}"
                )
            if part.get("type") == "text" and not isinstance(part.get("text"), str):
                raise FieldError(f"{where}[{i}].text", "must be a string")
    elif content is not None and not isinstance(content, str):
        raise FieldError(
            where, f"must be a string or a list of text parts, got {type(content).__name__}"
        )
    try:
        return content_text(content, where)
    except ValueError as error:
        raise FieldError(where, str(error).removeprefix(where).strip()) from None


def _past_call(where: str, call: Any) -> dict[str, Any]:
    """A tool call of an earlier assistant turn, its arguments as an object for the template."""
    if not isinstance(call, dict):
        raise FieldError(where, "must be an object {'id', 'type': 'function', 'function': ...}")
    if call.get("type", "function") != "function":
        raise FieldError(f"{where}.type", f"{call.get('type')!r} is invalid: use 'function'")
    if call.get("id") is not None and not isinstance(call.get("id"), str):
        raise FieldError(f"{where}.id", "must be a string")
    function = call.get("function")
    if not isinstance(function, dict):
        raise FieldError(f"{where}.function", "must be an object {'name': ..., 'arguments': ...}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise FieldError(f"{where}.function.name", "must be the called tool's name (a string)")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, str | dict):
        raise FieldError(f"{where}.function.arguments", "must be a JSON text (or an object)")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # else the template shows it as written
            arguments = json.loads(arguments)
    return {
        "type": "function",
        "id": call.get("id"),
        "function": {"name": name, "arguments": arguments},
    }


def tool(index: int, item: Any, seen: set[str]) -> dict[str, Any]:
    """``tools[index]`` checked; ``seen`` holds the names of the tools before it."""
    where = f"tools[{index}]"
    if not isinstance(item, dict):
        raise FieldError(where, "must be an object {'type': 'function', 'function': {...}}")
    if item.get("type", "function") != "function":
        raise FieldError(f"{where}.type", f"{item.get('type')!r} is not supported: use 'function'")
    function = item.get("function")
    if not isinstance(function, dict):
        raise FieldError(f"{where}.function", "must be an object {'name': ..., 'parameters': ...}")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise FieldError(
            f"{where}.function.name",
            f"{name!r} is invalid: use 1 to 64 letters, digits, underscores or dashes",
        )
    if name in seen:
        raise FieldError(f"{where}.function.name", f"{name!r} is given twice: name each tool once")
    seen.add(name)
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise FieldError(f"{where}.function.description", "must be a string")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise FieldError(f"{where}.function.parameters", "must be a JSON schema object")
    return {"type": "function", "function": function}


def check_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> None:
    """The string forms OpenAI allows, and a choice that needs tools only with tools."""
    if isinstance(choice, str) and choice not in TOOL_CHOICES:
        raise FieldError(
            "tool_choice",
            f"{choice!r} is invalid: use 'auto', 'none', 'required' or "
            '{"type": "function", "function": {"name": <tool>}}',
        )
    if choice not in (None, "auto", "none") and not tools:
        raise FieldError(
            "tool_choice", "is only allowed when tools are given: pass tools, or leave it out"
        )
