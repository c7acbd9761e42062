"""``power-sampling serve``: a real server on 127.0.0.1, called with the real ``openai`` client.

Content comes from ``ScriptedLM`` (every sampler returns its scripted reply, through the whole
pipeline) or the tiny random model (answers compared with the in-process sampler). Batching,
cancellation and queue limits are shown by counting sampler runs and backend calls, not by time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import (  # noqa: E402
    ADD_TOOL,
    ANSWER,
    CALL,
    SMALL,
    HeldBackend,
    scripted,
    serving,
    wait_for,
)

from power_sampling import PowerSampler, PowerSamplingConfig  # noqa: E402

USER = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def server() -> Any:
    with serving(scripted(max_context=400)) as running:
        yield running


def client(server: Any, **kwargs: Any) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, **kwargs)


def test_chat_completion_with_settings_per_request(server: Any) -> None:
    http, _, sampler = server
    c = client(http)
    assert [m.id for m in c.models.list()] == ["scripted"]
    response = c.chat.completions.create(
        model="scripted",
        messages=USER,
        seed=7,
        max_tokens=32,
        extra_body={"power_sampling": {"alpha": 2.5, "top_k": 3}},
    )
    choice = response.choices[0]
    assert (choice.message.content, choice.finish_reason) == (ANSWER, "stop")
    assert response.usage.completion_tokens > 0 and response.usage.prompt_tokens > 10
    cost = response.model_extra["power_sampling"]
    assert (cost["alpha"], cost["seed"], cost["budget"]["top_k"]) == (2.5, 7, 3)
    assert cost["budget"]["max_new_tokens"] == 32 and cost["steps"] >= 1
    config = sampler.runs[-1][1]  # what the sampler ran: server defaults + the request's
    assert (config.alpha, config.top_k, config.seed, config.num_rollouts) == (2.5, 3, 7, 2)


def test_stream_with_usage(server: Any) -> None:
    chunks = list(
        client(server[0]).chat.completions.create(
            model="scripted",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER and len([c for c in chunks if c.choices]) >= 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert last.model_extra["power_sampling"]["method"] == "power"


def test_tool_calls_whole_and_streamed(server: Any) -> None:
    c = client(server[0])
    response = c.chat.completions.create(model="scripted", messages=USER, tools=[ADD_TOOL])
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "add" and json.loads(call.function.arguments) == CALL["arguments"]
    # the tool's answer goes back; the model replies with text
    history = [*USER, choice.message.model_dump(exclude_none=True)]
    history.append({"role": "tool", "tool_call_id": call.id, "content": "4"})
    follow = c.chat.completions.create(model="scripted", messages=history, tools=[ADD_TOOL])
    assert follow.choices[0].message.content == ANSWER
    chunks = list(
        c.chat.completions.create(model="scripted", messages=USER, tools=[ADD_TOOL], stream=True)
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ""  # no tags leak
    calls = [t for ch in chunks for t in ch.choices[0].delta.tool_calls or []]
    assert [t.function.name for t in calls] == ["add"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # tool_choice "none" hides the tools: plain text
    none = c.chat.completions.create(
        model="scripted", messages=USER, tools=[ADD_TOOL], tool_choice="none"
    )
    assert none.choices[0].message.content == ANSWER


def test_forced_tool_choice_and_json_mode(server: Any) -> None:
    c = client(server[0])
    named = {"type": "function", "function": {"name": "add"}}
    for choice in ("required", named):
        response = c.chat.completions.create(
            model="scripted", messages=USER, tools=[ADD_TOOL], tool_choice=choice
        )
        (call,) = response.choices[0].message.tool_calls
        assert json.loads(call.function.arguments) == CALL["arguments"]
    for fmt in (
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
    ):
        response = c.chat.completions.create(model="scripted", messages=USER, response_format=fmt)
        assert json.loads(response.choices[0].message.content) == {"answer": 4}


def test_text_completions_several_prompts_and_choices(server: Any) -> None:
    response = client(server[0]).completions.create(
        model="scripted", prompt=["Q: 2 + 2?", "Q: 3 + 1?"], n=2, seed=1
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert {c.text for c in response.choices} == {ANSWER}
    assert response.object == "text_completion" and response.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"power_sampling": {"alpha": -1}}, 400, "alpha=-1.0 is invalid"),
        ({"power_sampling": {"aplha": 2}}, 400, "did you mean 'alpha'"),
        ({"power_sampling": {"top_k": 4, "num_candidates": 2}}, 400, "num_candidates"),
        ({"n": 0}, 400, "n"),
        ({"max_tokens": 8, "power_sampling": {"max_new_tokens": 9}}, 400, "give it in one place"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x " * 500}]}, 400, "context length is 400"),
        ({"tools": [ADD_TOOL], "tool_choice": "mul"}, 400, "tool_choice: 'mul' is invalid"),
        ({"logprobs": True}, 400, "logprobs=True is invalid"),
        ({"model": "gpt-4o"}, 404, "this server serves 'scripted'"),
    ],
)
def test_bad_requests_get_clear_errors(
    server: Any, body: dict[str, Any], status: int, message: str
) -> None:
    runs = len(server[2].runs)
    payload = {"model": "scripted", "messages": USER, **body}
    response = httpx.post(server[0].url + "/v1/chat/completions", json=payload, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"]
    assert len(server[2].runs) == runs  # nothing ran


def test_openai_client_raises_on_bad_settings(server: Any) -> None:
    with pytest.raises(openai.BadRequestError, match=r"alpha=0\.0 is invalid"):
        client(server[0]).chat.completions.create(
            model="scripted", messages=USER, extra_body={"power_sampling": {"alpha": 0}}
        )
    bad_json = httpx.post(
        server[0].url + "/v1/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert bad_json.status_code == 400 and bad_json.json()["error"]["message"]


async def test_sixteen_concurrent_requests_share_model_calls() -> None:
    held = HeldBackend(scripted(), held=True)
    with serving(held, max_batch=8) as (http, engine, sampler):
        c = openai.AsyncOpenAI(base_url=http.url + "/v1", api_key="x", max_retries=0)
        calls = [
            c.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": f"Question {i}?"}]
            )
            for i in range(16)
        ]
        answers = asyncio.gather(*calls)
        # the first call holds the model until all 16 requests are in: 8 run, 8 wait
        for _ in range(2000):
            if engine.active == 16 and held.waiting.is_set():
                break
            await asyncio.sleep(0.01)
        assert engine.active == 16
        held.release()
        responses = await asyncio.wait_for(answers, 60)
    assert [r.choices[0].message.content for r in responses] == [ANSWER] * 16
    assert sum(n for n, _ in sampler.runs) == 16
    batcher = engine.scheduler.batcher
    assert 2 * batcher.calls <= batcher.requested, (batcher.calls, batcher.requested)


def test_full_queue_is_503_at_once() -> None:
    held = HeldBackend(scripted(), held=True)
    with serving(held, max_batch=1, max_queue=1) as (http, engine, _):
        c = openai.OpenAI(base_url=http.url + "/v1", api_key="x", max_retries=0)
        ask = {"model": "scripted", "messages": USER}
        with httpx.Client(timeout=60) as raw, concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(c.chat.completions.create, **ask)
            wait_for(held.waiting.is_set, what="the first request to run")
            queued = pool.submit(c.chat.completions.create, **ask)
            wait_for(lambda: engine.active == 2, what="the second request to queue")
            full = raw.post(http.url + "/v1/chat/completions", json=ask)
            assert full.status_code == 503 and full.headers["retry-after"] == "1"
            assert "already waiting" in full.json()["error"]["message"]
            held.release()
            assert running.result(60).choices[0].message.content == ANSWER
            assert queued.result(60).choices[0].message.content == ANSWER


def test_disconnecting_clients_free_their_place() -> None:
    slow = HeldBackend(scripted(), delay=0.02)
    config = PowerSamplingConfig(**{**SMALL, "block_size": 1}, max_new_tokens=400)
    with serving(slow, defaults=config) as (http, engine, _):
        ramble = {"model": "scripted", "messages": [{"role": "user", "content": "ramble"}]}
        with (
            httpx.Client(timeout=60) as raw,
            raw.stream(
                "POST", http.url + "/v1/chat/completions", json={**ramble, "stream": True}
            ) as response,
        ):
            pieces = (line for line in response.iter_lines() if '"content": "' in line)
            next(pieces), next(pieces)  # a streaming client reads a little, then goes away
        wait_for(lambda: engine.active == 0, what="the stream's job to be cancelled")
        stopped = _settled(slow)
        # a full answer takes one call per token for its 400 tokens
        assert stopped < 100, stopped
        # a waiting (non-streaming) client that times out is cancelled too
        with pytest.raises(httpx.TimeoutException):
            httpx.post(http.url + "/v1/chat/completions", json=ramble, timeout=0.5)
        wait_for(lambda: engine.active == 0, what="the waiting request to be cancelled")
        assert _settled(slow) - stopped < 100
        # the place is free: the next request is answered
        short = {"model": "scripted", "messages": USER}
        done = httpx.post(http.url + "/v1/chat/completions", json=short, timeout=60)
        assert done.json()["choices"][0]["message"]["content"] == ANSWER


def test_shutdown_cancels_work_still_running_after_the_grace_period() -> None:
    slow = HeldBackend(scripted(), delay=0.02)
    config = PowerSamplingConfig(**{**SMALL, "block_size": 1}, max_new_tokens=400)
    with serving(slow, defaults=config, shutdown_timeout=1) as (http, engine, _):
        ramble = {"model": "scripted", "messages": [{"role": "user", "content": "ramble"}]}
        with httpx.Client(timeout=60) as raw, concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(raw.post, http.url + "/v1/chat/completions", json=ramble)
            wait_for(lambda: slow.calls > 3, what="the request to run")
            http.stop(timeout=30)  # the context's stop is then a no-op
            with pytest.raises(httpx.HTTPError):
                pending.result(30).raise_for_status()
    assert engine.active == 0 and engine.scheduler.active == 0
    assert _settled(slow) < 100


def test_seeded_answers_equal_the_in_process_sampler(tiny_backend: Any) -> None:
    config = PowerSamplingConfig(**SMALL, max_new_tokens=8)
    local = PowerSampler(tiny_backend, config)
    with serving(tiny_backend, model="tiny", defaults=config) as (http, _, _):
        c = openai.OpenAI(base_url=http.url + "/v1", api_key="x", max_retries=0)
        for seed, n in ((0, 2), (1, 1)):
            response = c.chat.completions.create(model="tiny", messages=USER, seed=seed, n=n)
            expected = local.generate(USER, seed=seed)
            assert response.choices[0].message.content == expected.text
            assert response.usage.completion_tokens >= len(expected.token_ids)
            assert response.model_extra["power_sampling"]["seed"] == seed
        text = c.completions.create(model="tiny", prompt="Once upon", seed=3)
        assert text.choices[0].text == local.generate("Once upon", seed=3).text


def _settled(backend: HeldBackend) -> int:
    """The backend's call count once it has stopped growing (fails if it never does)."""
    for _ in range(100):
        before = backend.calls
        time.sleep(0.3)
        if backend.calls == before:
            return before
    raise AssertionError("the backend never stopped being called")
