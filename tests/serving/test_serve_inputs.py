"""Malformed chat inputs on a real server on 127.0.0.1: each case is one request, the status it
must get and the field its error names (OpenAI's ``param``). The model is the scripted one, so
only the checks in front of it decide; nothing may reach the sampler."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
httpx = pytest.importorskip("httpx")

from serve_helpers import ADD_TOOL, scripted, serving  # noqa: E402

USER = {"role": "user", "content": "What is 2 + 2?"}
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    ],
}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "4"}


def tool(parameters: Any = None, name: str = "add", **extra: Any) -> dict[str, Any]:
    function = {"name": name, **({"parameters": parameters} if parameters is not None else {})}
    return {"type": "function", "function": {**function, **extra}}


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def function_choice(function: Any) -> dict[str, Any]:
    return {"type": "function", "function": function}


def allowed(mode: str, *names: str) -> dict[str, Any]:
    tools = [{"type": "function", "function": {"name": n}} for n in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools}}


def with_messages(*messages: Any) -> dict[str, Any]:
    return {"messages": list(messages)}


def user_content(content: Any) -> dict[str, Any]:
    return with_messages({"role": "user", "content": content})


def past_calls(calls: Any) -> dict[str, Any]:
    return with_messages(USER, {"role": "assistant", "content": None, "tool_calls": calls})


BAD = {
    # tools, and schemas the grammar engine cannot compile
    "bogus parameter type": ({"tools": [tool({"type": "bogus"})]}, "tools[0].function.parameters"),
    "bogus nested type": (
        {"tools": [ADD_TOOL, tool({"properties": {"x": {"type": "bogus"}}}, "mul")]},
        "tools[1].function.parameters",
    ),
    "unresolvable ref": ({"tools": [tool({"$ref": "#/nowhere"})]}, "tools[0].function.parameters"),
    "bad pattern": (
        {"tools": [tool({"properties": {"x": {"type": "string", "pattern": "(("}}})]},
        "tools[0].function.parameters",
    ),
    "deep parameters": ({"tools": [tool(nested(200))]}, "tools[0].function.parameters"),
    "parameters not an object": ({"tools": [tool("object")]}, "tools[0].function.parameters"),
    "bogus response schema": (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "bogus"}}}},
        "response_format.json_schema.schema",
    ),
    "tools not a list": ({"tools": "add"}, "tools"),
    "tool not an object": ({"tools": [5]}, "tools[0]"),
    "tool type": ({"tools": [{"type": "retrieval", "function": {"name": "a"}}]}, "tools[0].type"),
    "tool function missing": ({"tools": [{"type": "function"}]}, "tools[0].function"),
    "tool name missing": (
        {"tools": [{"type": "function", "function": {}}]},
        "tools[0].function.name",
    ),
    "tool name with a space": ({"tools": [tool(name="a b")]}, "tools[0].function.name"),
    "tool name twice": ({"tools": [ADD_TOOL, ADD_TOOL]}, "tools[1].function.name"),
    "tool description": ({"tools": [tool(description=5)]}, "tools[0].function.description"),
    # tool_choice of every malformed shape
    "function a string": (
        {"tools": [ADD_TOOL], "tool_choice": function_choice("add")},
        "tool_choice.function",
    ),
    "function without name": (
        {"tools": [ADD_TOOL], "tool_choice": {"type": "function"}},
        "tool_choice.function",
    ),
    "function name not a tool": (
        {"tools": [ADD_TOOL], "tool_choice": function_choice({"name": "mul"})},
        "tool_choice.function.name",
    ),
    "function name a number": (
        {"tools": [ADD_TOOL], "tool_choice": function_choice({"name": 5})},
        "tool_choice.function.name",
    ),
    "unknown string": ({"tools": [ADD_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    "bare tool name": ({"tools": [ADD_TOOL], "tool_choice": "add"}, "tool_choice"),
    "unknown type": ({"tools": [ADD_TOOL], "tool_choice": {"type": "bogus"}}, "tool_choice.type"),
    "a number": ({"tools": [ADD_TOOL], "tool_choice": 5}, "tool_choice"),
    "required without tools": ({"tool_choice": "required"}, "tool_choice"),
    "named without tools": ({"tool_choice": function_choice({"name": "add"})}, "tool_choice"),
    "allowed mode": (
        {"tools": [ADD_TOOL], "tool_choice": allowed("sometimes", "add")},
        "tool_choice.allowed_tools.mode",
    ),
    "allowed none": (
        {"tools": [ADD_TOOL], "tool_choice": allowed("auto")},
        "tool_choice.allowed_tools.tools",
    ),
    "allowed unknown": (
        {"tools": [ADD_TOOL], "tool_choice": allowed("required", "mul")},
        "tool_choice.allowed_tools.tools[0].function.name",
    ),
    # messages
    "messages not a list": ({"messages": "hi"}, "messages"),
    "no messages": ({"messages": []}, "messages"),
    "message not an object": (with_messages(5), "messages[0]"),
    "role missing": (with_messages(USER, {"content": "hi"}), "messages[1].role"),
    "role unknown": (with_messages({"role": "robot", "content": "hi"}), "messages[0].role"),
    "role a number": (with_messages({"role": 5, "content": "hi"}), "messages[0].role"),
    "content a number": (user_content(5), "messages[0].content"),
    "content an object": (user_content({"text": "hi"}), "messages[0].content"),
    "content missing": (with_messages({"role": "user"}), "messages[0].content"),
    "part a string": (user_content(["hi"]), "messages[0].content[0]"),
    "part text a number": (
        user_content([{"type": "text", "text": 5}]),
        "messages[0].content[0].text",
    ),
    "image part": (
        user_content([{"type": "image_url", "image_url": {"url": "http://x"}}]),
        "messages[0].content",
    ),
    "name a number": (with_messages({**USER, "name": 5}), "messages[0].name"),
    "tool_calls a string": (past_calls("add"), "messages[1].tool_calls"),
    "tool call a number": (past_calls([5]), "messages[1].tool_calls[0]"),
    "tool call function a string": (
        past_calls([{"function": "add"}]),
        "messages[1].tool_calls[0].function",
    ),
    "tool call name a number": (
        past_calls([{"function": {"name": 5}}]),
        "messages[1].tool_calls[0].function.name",
    ),
    "tool call arguments a number": (
        past_calls([{"function": {"name": "add", "arguments": 5}}]),
        "messages[1].tool_calls[0].function.arguments",
    ),
    "tool call type": (
        past_calls([{"type": "code", "function": {"name": "add"}}]),
        "messages[1].tool_calls[0].type",
    ),
    "tool_calls on a user": (
        with_messages({**USER, "tool_calls": CALLED["tool_calls"]}),
        "messages[0].tool_calls",
    ),
    "tool_call_id a number": (
        with_messages(USER, CALLED, {**RESULT, "tool_call_id": 1}),
        "messages[2].tool_call_id",
    ),
    # the context: 400 tokens; each word of the prompt is a few tokens
    "max_tokens past the context": ({"max_tokens": 390}, "max_tokens"),
    "prompt past the context": (user_content("x " * 500), "messages"),
}

GOOD = {
    "named function": {"tools": [ADD_TOOL], "tool_choice": function_choice({"name": "add"})},
    "required": {"tools": [ADD_TOOL], "tool_choice": "required"},
    "none with tools": {"tools": [ADD_TOOL], "tool_choice": "none"},
    "auto without tools": {"tool_choice": "auto"},
    "none without tools": {"tool_choice": "none"},
    "allowed tools": {
        "tools": [ADD_TOOL, tool(name="mul")],
        "tool_choice": allowed("required", "add"),
    },
    "a past call and its result": with_messages(USER, CALLED, RESULT),
    "text parts": user_content(
        [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]
    ),
    "max_tokens left out near the context": user_content("x " * 180),
}


@pytest.fixture(scope="module")
def server() -> Any:
    with serving(scripted(max_context=400)) as running:
        yield running


def post(server: Any, body: dict[str, Any]) -> Any:
    payload = {"model": "scripted", "messages": [USER], "max_tokens": 16, **body}
    if "max_tokens" in body and body["max_tokens"] is None:
        payload.pop("max_tokens")
    return httpx.post(server[0].url + "/v1/chat/completions", json=payload, timeout=30)


@pytest.mark.parametrize(("body", "field"), list(BAD.values()), ids=list(BAD))
def test_malformed_inputs_are_400s_that_name_the_field(
    server: Any, body: dict[str, Any], field: str
) -> None:
    runs = len(server[2].runs)
    response = post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert error["type"] == "invalid_request_error" and error["message"]
    assert len(server[2].runs) == runs  # refused before any work


@pytest.mark.parametrize("body", list(GOOD.values()), ids=list(GOOD))
def test_every_allowed_shape_is_served(server: Any, body: dict[str, Any]) -> None:
    if "max_tokens" not in body and "x x" in str(body):
        body = {**body, "max_tokens": None}
    response = post(server, body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
