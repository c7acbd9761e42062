"""The tool-call text protocol for the LangChain chat model.

The protocol itself (``<tool_call>`` blocks, tool descriptions for templates without tool
support, prefills, the streaming splitter) is framework-free in :mod:`power_sampling.chat.tools`
and re-exported here; this module adds parsing into LangChain's tool calls: the JSON goes to
langchain-core's ``parse_tool_call`` and failures are reported with ``make_invalid_tool_call``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.output_parsers.openai_tools import make_invalid_tool_call, parse_tool_call

from ...chat.render import JSON_PROMPT, SCHEMA_PROMPT
from ...chat.tools import (
    CLOSE,
    NAME_PATTERN,
    OPEN,
    TOOLS_PROMPT,
    ReplySplitter,
    call_id,
    describe_tools,
    normalize_tool_choice,
    read_calls,
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
    for block, call, error in read_calls(text, names):
        written = NAME_PATTERN.search(block)
        raw = {
            "id": call_id(),
            # args of an invalid call: as written, tags included (so LangChain's partial-JSON
            # parsing of streamed chunks cannot turn it into a valid call)
            "function": {"name": written and written.group(1), "arguments": block},
        }
        if call is None:
            invalid.append(make_invalid_tool_call(raw, error))
            continue
        function = {"name": call["name"], "arguments": to_json(call["arguments"])}
        try:
            parsed = parse_tool_call({"id": raw["id"], "function": function})
        except OutputParserException as exc:
            invalid.append(make_invalid_tool_call(raw, f"{type(exc).__name__}: {exc}"))
            continue
        if parsed is not None:
            calls.append(parsed)
    return calls, invalid
