"""Constrained replies over HTTP: ``tools``/``tool_choice`` and ``response_format`` on a real
server whose model is the tiny random one. Its text is gibberish, so a well-formed call or a
schema-valid object can only come from the constraint; the schemas have bounded values (enums,
booleans) so that no reply is cut by ``max_tokens``."""

from __future__ import annotations

import json
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("xgrammar")
httpx = pytest.importorskip("httpx")

from serve_helpers import SMALL, serving  # noqa: E402

from power_sampling import PowerSamplingConfig  # noqa: E402

USER = [{"role": "user", "content": "Weather in Paris?"}]
UNITS = ["celsius", "fahrenheit"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"unit": {"enum": UNITS}, "rain": {"type": "boolean"}},
            "required": ["unit", "rain"],
            "additionalProperties": False,
        },
    },
}
SHOUT = {
    "type": "function",
    "function": {
        "name": "shout",
        "parameters": {
            "type": "object",
            "properties": {"loud": {"type": "boolean"}},
            "required": ["loud"],
            "additionalProperties": False,
        },
    },
}
REPORT = {
    "type": "object",
    "properties": {"sunny": {"type": "boolean"}, "unit": {"enum": UNITS}},
    "required": ["sunny", "unit"],
    "additionalProperties": False,
}
MARKUP = ("<tool_call>", "</tool_call>", "<tools>", "</tools>", "<tool_response>")


@pytest.fixture(scope="module")
def server(tiny_backend: Any) -> Any:
    defaults = PowerSamplingConfig(**SMALL, max_new_tokens=96)
    with serving(tiny_backend, model="tiny", defaults=defaults) as running:
        yield running


def client(server: Any) -> Any:
    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="x", max_retries=0)


def valid_weather(arguments: str) -> bool:
    args = json.loads(arguments)
    return (
        set(args) == {"unit", "rain"} and args["unit"] in UNITS and isinstance(args["rain"], bool)
    )


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "weather"}}]
)
def test_a_forced_tool_choice_is_one_schema_valid_call(server: Any, choice: Any) -> None:
    for seed in range(2):
        response = client(server).chat.completions.create(
            model="tiny", messages=USER, tools=[WEATHER, SHOUT], tool_choice=choice, seed=seed
        )
        message = response.choices[0].message
        assert response.choices[0].finish_reason == "tool_calls" and not message.content
        (call,) = message.tool_calls
        if choice == "required":
            assert call.function.name in ("weather", "shout")
        else:
            assert call.function.name == "weather"
        if call.function.name == "weather":
            assert valid_weather(call.function.arguments), call.function.arguments
        else:
            assert json.loads(call.function.arguments) in ({"loud": True}, {"loud": False})


def test_auto_content_carries_no_tool_markup(server: Any) -> None:
    for seed in range(2):
        for stream in (False, True):
            response = client(server).chat.completions.create(
                model="tiny", messages=USER, tools=[WEATHER], seed=seed, stream=stream
            )
            if stream:
                chunks = list(response)
                content = "".join(c.choices[0].delta.content or "" for c in chunks)
                calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
                arguments = "".join(t.function.arguments or "" for t in calls)
            else:
                message = response.choices[0].message
                content, calls = message.content or "", message.tool_calls or []
                arguments = "".join(c.function.arguments for c in calls)
            assert not any(tag in content for tag in MARKUP), content
            assert "<t" not in content and "</" not in content
            if calls:
                assert valid_weather(arguments), arguments


def test_response_format_json_schema_gives_schema_valid_objects(server: Any) -> None:
    schema_format = {"type": "json_schema", "json_schema": {"name": "report", "schema": REPORT}}
    for seed in range(2):
        response = client(server).chat.completions.create(
            model="tiny", messages=USER, response_format=schema_format, seed=seed
        )
        report = json.loads(response.choices[0].message.content)
        assert set(report) == {"sunny", "unit"} and report["unit"] in UNITS
        assert isinstance(report["sunny"], bool)


def test_bad_formats_and_tools_are_refused_before_any_run(server: Any) -> None:
    runs = len(server[2].runs)
    for body, message in [
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "has no JSON schema"),
        ({"response_format": {"type": "yaml"}}, "'yaml' is not supported"),
    ]:
        payload = {"model": "tiny", "messages": USER, **body}
        response = httpx.post(server[0].url + "/v1/chat/completions", json=payload, timeout=30)
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]["message"]
    assert len(server[2].runs) == runs
