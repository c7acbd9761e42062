"""The tool-call text protocol for the LangChain chat model.

The protocol itself (``<tool_call>`` blocks, tool descriptions for templates without tool
support, prefills, the streaming splitter) is framework-free in :mod:`power_sampling.chat.tools`
and re-exported here; this module adds parsing into LangChain's tool calls: the JSON goes to
langchain-core's ``parse_tool_call`` and failures are reported with ``make_invalid_tool_call``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call

from ...chat.tools import (
    CALL_PATTERN,
    CLOSE,
    JSON_PROMPT,
    NAME_PATTERN,
    OPEN,
    SCHEMA_PROMPT,
    TOOLS_PROMPT,
    ReplySplitter,
    describe_tools,
    normalize_tool_choice,
    to_json,
    with_system,
)

__all__ = [
    "CLOSE",
    "JSON_PROMPT",
    "OPEN",
    "SCHEMA_PROMPT",
    "TOOLS_PROMPT",
    "ReplySplitter",
    "describe_tools",
    "normalize_tool_choice",
    "parse_tool_calls",
    "to_json",
    "with_system",
]


def parse_tool_calls(text: str, names: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """The ``<tool_call>`` blocks of ``text`` as tool calls; a block that is not a JSON call of a
    bound tool with object arguments becomes an invalid tool call carrying the error."""
    calls, invalid = [], []
    for match in CALL_PATTERN.finditer(text):
        body = match.group(1).strip()
        written = NAME_PATTERN.search(body)
        raw = {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            # args of an invalid call: as written, tags included (so LangChain's partial-JSON
            # parsing of streamed chunks cannot turn it into a valid call)
            "function": {"name": written and written.group(1), "arguments": match.group(0)},
        }
        try:
            obj, _ = json.JSONDecoder().raw_decode(body)
            if not isinstance(obj, dict) or obj.get("name") not in names:
                raise ValueError(f"expected a call of one of {list(names)}")
            args = obj.get("arguments", obj.get("parameters", {}))
            arguments = args if isinstance(args, str) else to_json(args)
            call = parse_tool_call(
                {"id": raw["id"], "function": {"name": obj["name"], "arguments": arguments}}
            )
            if call is None or not isinstance(call["args"], dict):
                raise ValueError("the arguments must be a JSON object")
            calls.append(call)
        except (ValueError, OutputParserException) as exc:
            invalid.append(make_invalid_tool_call(raw, f"{type(exc).__name__}: {exc}"))
    return calls, invalid
