"""Constraints for chat replies: tool calls in the ``<tool_call>`` text protocol, and OpenAI-style
``response_format`` objects.

A forced tool call (``tool_choice`` a tool name, ``"required"``/``"any"``) is exactly one block

    <tool_call>
    {"name": "<tool>", "arguments": <JSON valid under that tool's parameters schema>}
    </tool_call>

and nothing else; with several tools the call object is any one of theirs (a union of the
per-tool grammars, so the name decides which arguments schema applies). ``"auto"`` lets the
reply be free text, optionally followed by one such block; the free text may not contain ``<t``
or ``</``, so neither a half-written call nor echoed prompt markup (``<tools>``,
``</tool_response>``) can reach the visible content. Text such as ``a < b`` or ``<div>`` stays
possible.

The grammars are built with xgrammar's JSON-schema converter and its ``concat``/``union``
combinators and kept as EBNF text in an ordinary grammar constraint. Constraints are cached by
their source, so concurrent requests with the same tools share one constraint (and one
compilation), which also lets the scheduler batch them; so are response formats.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FieldError
from .base import Constraint, GrammarConstraint
from .grammar import xgrammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"
"""The tags around one tool call in the reply (the Qwen / Hermes format)."""

MAX_SCHEMA_DEPTH = 64
"""Deepest nesting of objects and lists a JSON schema may have (the grammar converter recurses)."""

FREE_TEXT = 'root ::= ([^<] | "<" [^t/<])*'
"""Visible text of an ``auto`` reply: no ``<t`` (``<tool_call>``, ``<tools>``) and no ``</``."""


def tool_call_constraint(tools: Sequence[Mapping[str, Any]], choice: str) -> Constraint:
    """The reply's constraint for OpenAI-format ``tools`` (``{"type": "function", "function":
    {"name", "parameters"}}``) under a normalised ``choice``: ``"auto"``, ``"required"`` (any one
    tool) or a tool name (that tool)."""
    specs = {}
    for i, tool in enumerate(tools):
        function = tool.get("function", tool)
        parameters = function.get("parameters") or {"type": "object"}
        check_schema(parameters, f"tools[{i}].function.parameters")
        specs[str(function["name"])] = dict(parameters)
    if not specs:
        raise ValueError("tool_call_constraint needs at least one tool")
    if choice not in ("auto", "required") and choice not in specs:
        raise ValueError(
            f"tool choice {choice!r} is not a bound tool; use 'auto', 'required' or one of "
            f"{sorted(specs)}"
        )
    chosen = specs if choice in ("auto", "required") else {choice: specs[choice]}
    # Key order is kept: properties are generated in the order the schema lists them.
    key = json.dumps([list(chosen.items()), choice == "auto"])
    return _cached(key)


def response_format_constraint(response_format: Mapping[str, Any]) -> Constraint | None:
    """The constraint of an OpenAI-style ``response_format``: ``{"type": "json_schema",
    "json_schema": {"schema": ...}}`` (chat completions), ``{"type": "json_schema", "schema":
    ...}`` (the Responses API and DSPy's lm15), ``{"type": "json_object"}`` (any JSON object),
    or ``{"type": "text"}`` (None: no constraint)."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _cached_schema('{"type": "object"}')
    if kind == "json_schema":
        inner = response_format.get("json_schema", response_format)
        schema = inner.get("schema") if isinstance(inner, Mapping) else None
        if not isinstance(schema, Mapping):
            raise ValueError(
                f"response_format {dict(response_format)!r} has no JSON schema: pass "
                '{"type": "json_schema", "json_schema": {"schema": {...}}}'
            )
        where = "response_format." + (
            "json_schema.schema" if inner is not response_format else "schema"
        )
        check_schema(schema, where)
        return _cached_schema(json.dumps(dict(schema)))
    raise ValueError(
        f"response_format type {kind!r} is not supported; use 'json_schema', 'json_object' or "
        "'text'"
    )


def check_schema(schema: Any, where: str) -> None:
    """Raise :class:`~power_sampling.errors.FieldError` naming ``where`` unless ``schema`` is a
    JSON schema the grammar engine can convert (an object, nested at most
    :data:`MAX_SCHEMA_DEPTH` deep, of supported types and resolvable references)."""
    if not isinstance(schema, Mapping):
        raise FieldError(where, f"must be a JSON schema object, got {type(schema).__name__}")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise FieldError(
            where, f"is nested more than {MAX_SCHEMA_DEPTH} levels deep: flatten the schema"
        )
    try:
        _converted(json.dumps(dict(schema)))
    except (RuntimeError, ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        reason = reason.split(": ", 1)[-1] if reason.startswith("[") else reason
        raise FieldError(
            where,
            f"is a JSON schema the grammar engine cannot compile ({reason}); fix or simplify it",
        ) from error


def _depth(value: Any, limit: int = MAX_SCHEMA_DEPTH + 1) -> int:
    """Nesting depth of lists and objects, counted no further than ``limit``."""
    depth, level = 0, [value]
    while level and depth < limit:
        nested = [v for x in level if isinstance(x, Mapping | list) for v in _children(x)]
        depth, level = depth + 1, nested
    return depth


def _children(value: Any) -> list[Any]:
    return list(value.values()) if isinstance(value, Mapping) else list(value)


@functools.lru_cache(maxsize=64)
def _converted(schema: str) -> str:
    return str(xgrammar().Grammar.from_json_schema(schema, any_whitespace=False))


@functools.lru_cache(maxsize=64)
def _cached_schema(schema: str) -> Constraint:
    return Constraint.json_schema(schema)


@functools.lru_cache(maxsize=64)
def _cached(key: str) -> Constraint:
    specs, auto = json.loads(key)
    return GrammarConstraint("grammar", _tool_grammar(dict(specs), auto=auto))


def _tool_grammar(specs: dict[str, dict[str, Any]], *, auto: bool) -> str:
    grammar = xgrammar().Grammar
    calls = [
        grammar.from_json_schema(_call_schema(n, s), any_whitespace=False) for n, s in specs.items()
    ]
    call = grammar.concat(
        grammar.from_ebnf(f"root ::= {json.dumps(OPEN + chr(10))}"),
        calls[0] if len(calls) == 1 else grammar.union(*calls),
        grammar.from_ebnf(f"root ::= {json.dumps(chr(10) + CLOSE)}"),
    )
    if auto:
        optional_call = grammar.union(grammar.from_ebnf('root ::= ""'), call)
        call = grammar.concat(grammar.from_ebnf(FREE_TEXT), optional_call)
    return str(call)


def _call_schema(name: str, parameters: dict[str, Any]) -> str:
    """The call object of one tool: its name, then arguments valid under its schema."""
    return json.dumps(
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
    )
