"""LangChain messages in and out: chat-template dicts from ``BaseMessage``s, and ``AIMessage``s
(whole or streamed in chunks) from a finished reply with its tool calls and cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from . import tool_calls as tc

_NON_TEXT = {"image", "image_url", "audio", "input_audio", "file", "video"}


@dataclass
class Reply:
    """The end of a chat call: the content, its part not streamed yet, calls, usage, metadata."""

    content: str
    tail: str
    tool_calls: list[Any]
    invalid_tool_calls: list[Any]
    usage: Any
    metadata: dict[str, Any]


def openai_tool(tool: Any) -> dict[str, Any]:
    """``convert_to_openai_tool`` with a clear error for a tool that has no name."""
    if (
        isinstance(tool, dict)
        and "function" not in tool
        and not tool.get("name", tool.get("title"))
    ):
        raise ValueError(f"tool {tool!r} has no name: give it a 'name' (and a JSON schema)")
    formatted = convert_to_openai_tool(tool)
    if not formatted.get("function", {}).get("name"):
        raise ValueError(f"tool {tool!r} has no name: give it a 'name' (and a JSON schema)")
    return formatted


def message_dict(message: BaseMessage) -> dict[str, Any]:
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


def chat_result(reply: str | Reply) -> ChatResult:
    assert isinstance(reply, Reply)  # the last item; text deltas come before it
    message = AIMessage(
        content=reply.content,
        tool_calls=reply.tool_calls,
        invalid_tool_calls=reply.invalid_tool_calls,
        usage_metadata=reply.usage,
        response_metadata=reply.metadata,
    )
    return ChatResult(generations=[ChatGeneration(message=message)])


def chat_chunk(item: str | Reply) -> ChatGenerationChunk:
    if isinstance(item, str):
        return ChatGenerationChunk(message=AIMessageChunk(content=item))
    calls = [(c["name"], tc.to_json(c["args"]), c["id"]) for c in item.tool_calls]
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


def require_tool_call(message: AIMessage) -> AIMessage:
    """A clear error when a forced structured-output call did not parse."""
    if not message.tool_calls:
        why = "; ".join(f"{c['error']} in {c['args']!r}" for c in message.invalid_tool_calls)
        raise OutputParserException(
            f"the structured output did not parse: {why or 'no tool call'}",
            llm_output=str(message.content),
        )
    return message
