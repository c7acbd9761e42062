"""The LangChain adapter honours the arguments and callbacks users know from ChatOllama and the
hosted chat models: ``timeout``, ``max_retries``, ``parallel_tool_calls``, token callbacks on
every call, per-call LangSmith params, unknown-setting errors that name only our settings, and
serialisation (``dumpd``/``loads`` by name, ``pickle`` of a live backend by reference).
"""

from __future__ import annotations

import asyncio
import pickle
import re
import subprocess
import sys
import time
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("transformers")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from serve_helpers import ANSWER, reply

from power_sampling import PowerSampler
from power_sampling.backends.scripted import ScriptedLM
from power_sampling.engine.registry import loaded_models
from power_sampling.engine.scheduler import QueueFull, Scheduler
from power_sampling.integrations.langchain import ChatPowerSampling, PowerSamplingLLM
from power_sampling.integrations.langchain import calls as lc_calls
from power_sampling.testing import tiny_tokenizer

BUDGET = dict(
    block_size=4, num_candidates=4, top_k=2, num_rollouts=2, rollout_length=4, max_new_tokens=96
)
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
LONG = " ".join(f"word{i}" for i in range(60))


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny in {city}"


class SlowLM(ScriptedLM):
    """A scripted model that takes ``delay`` seconds per model call and counts its calls."""

    def __init__(self, reply: str, delay: float = 0.05) -> None:
        super().__init__(tiny_tokenizer(), reply)
        self.delay, self.calls = delay, 0

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        time.sleep(self.delay)
        return super().sample(*args, **kwargs)

    def top_k(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        time.sleep(self.delay)
        return super().top_k(*args, **kwargs)


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.metadata: list[dict[str, Any]] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_chat_model_start(self, *args: Any, metadata: Any = None, **kwargs: Any) -> None:
        self.metadata.append(dict(metadata or {}))


def chat(reply: str, **settings: Any) -> ChatPowerSampling:
    return ChatPowerSampling(backend=ScriptedLM(tiny_tokenizer(), reply), **BUDGET, **settings)


def full_queue(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """``Scheduler.submit`` raises ``QueueFull`` the first ``times`` calls; returns the count."""
    count = [0]
    original = Scheduler.submit

    def submit(self: Scheduler, *args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] <= times:
            raise QueueFull("full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "submit", submit)
    monkeypatch.setattr(lc_calls, "BACKOFF", 0.001)
    return count


def wait_idle(scheduler: Scheduler) -> None:
    for _ in range(200):
        if not scheduler.active:
            return
        time.sleep(0.01)
    raise AssertionError("the request kept running")


# -- timeout ---------------------------------------------------------------------------------------


def test_timeout_cancels_a_long_call() -> None:
    backend = SlowLM(LONG)
    llm = ChatPowerSampling(backend=backend, **BUDGET, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"timeout=0\.3 s"):
        llm.invoke("Hi")
    assert time.monotonic() - start < 2
    wait_idle(llm._scheduler())  # cancelled: it stopped at its next model call
    calls = backend.calls
    time.sleep(0.3)
    assert backend.calls == calls
    with pytest.raises(TimeoutError):  # per call, and while streaming
        list(ChatPowerSampling(backend=backend, **BUDGET).stream("Hi", timeout=0.2))
    with pytest.raises(TimeoutError):
        PowerSamplingLLM(backend=backend, **BUDGET).invoke("Hi", timeout=0.2)
    wait_idle(llm._scheduler())
    quick = ChatPowerSampling(backend=SlowLM("ok", delay=0), **BUDGET, timeout=30)
    assert quick.invoke("Hi").content == "ok"  # a deadline that is not reached changes nothing


async def test_timeout_cancels_an_async_call() -> None:
    backend = SlowLM(LONG)
    llm = ChatPowerSampling(backend=backend, **BUDGET)
    with pytest.raises(TimeoutError):
        await llm.ainvoke("Hi", timeout=0.2)
    with pytest.raises(TimeoutError):
        await PowerSamplingLLM(backend=backend, **BUDGET).ainvoke("Hi", timeout=0.2)
    for _ in range(200):
        if not llm._scheduler().active:
            break
        await asyncio.sleep(0.01)
    assert not llm._scheduler().active


@pytest.mark.parametrize("settings", [{"timeout": 0}, {"timeout": -1.0}, {"max_retries": -1}])
def test_bad_timeout_or_retries_raise(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="is invalid"):
        chat("x", **settings)


# -- max_retries -----------------------------------------------------------------------------------


def test_max_retries_retries_a_full_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    count = full_queue(monkeypatch, times=2)
    assert chat("ok", max_retries=2).invoke("Hi").content == "ok"
    assert count[0] == 3
    count = full_queue(monkeypatch, times=2)
    with pytest.raises(QueueFull):
        chat("ok", max_retries=1).invoke("Hi")
    assert count[0] == 2
    count = full_queue(monkeypatch, times=1)
    with pytest.raises(QueueFull):
        chat("ok").invoke("Hi", max_retries=0)  # per call
    llm = PowerSamplingLLM(backend=ScriptedLM(tiny_tokenizer(), "ok"), **BUDGET)
    count = full_queue(monkeypatch, times=2)
    assert llm.batch(["a", "b"]) == ["ok", "ok"]  # the default is 2 retries


async def test_max_retries_async(monkeypatch: pytest.MonkeyPatch) -> None:
    full_queue(monkeypatch, times=2)
    assert (await chat("ok").ainvoke("Hi")).content == "ok"
    full_queue(monkeypatch, times=3)
    with pytest.raises(QueueFull):
        await chat("ok").ainvoke("Hi")


def test_errors_of_the_call_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    count = full_queue(monkeypatch, times=0)
    with pytest.raises(ValueError, match="alpha"):
        chat("ok").invoke("Hi", alpha=0)
    small = ScriptedLM(tiny_tokenizer(), "ok", max_context=4)  # no prompt fits
    with pytest.raises(ValueError):
        ChatPowerSampling(backend=small, **BUDGET).invoke("Hi")
    assert count[0] <= 1


# -- tools: parallel_tool_calls and strict ---------------------------------------------------------


def test_parallel_tool_calls_is_refused_and_strict_accepted() -> None:
    llm = chat(CALL)
    with pytest.raises(ValueError, match="parallel_tool_calls=True is not supported"):
        llm.bind_tools([get_weather], parallel_tool_calls=True)
    with pytest.raises(ValueError, match="parallel_tool_calls=True is not supported"):
        llm.bind_tools([get_weather]).invoke("Hi", parallel_tool_calls=True)
    for options in ({"parallel_tool_calls": False}, {"strict": True}, {"strict": False}):
        message = llm.bind_tools([get_weather], tool_choice="any", **options).invoke("Hi")
        assert message.tool_calls[0]["args"] == {"city": "Paris"}, options


# -- callbacks and metadata ------------------------------------------------------------------------


def test_new_token_callbacks_fire_on_invoke() -> None:
    llm = chat("A reply long enough to come in several committed blocks.")
    handler = Recorder()
    message = llm.invoke("Hi", config={"callbacks": [handler]})
    assert len(handler.tokens) > 1 and "".join(handler.tokens) == message.content
    handler = Recorder()
    called = chat(f"Checking.\n{CALL}").bind_tools([get_weather])
    message = called.invoke("Hi", config={"callbacks": [handler]})
    assert message.tool_calls and "".join(handler.tokens) == "Checking."  # never the markup
    handler = Recorder()
    text = PowerSamplingLLM(backend=ScriptedLM(tiny_tokenizer(), "plain text"), **BUDGET)
    assert text.invoke("x", config={"callbacks": [handler]}) == "".join(handler.tokens)
    assert handler.tokens


async def test_new_token_callbacks_fire_on_ainvoke() -> None:
    handler = Recorder()
    message = await chat("An async reply.").ainvoke("Hi", config={"callbacks": [handler]})
    assert handler.tokens and "".join(handler.tokens) == message.content
    handler = Recorder()
    text = PowerSamplingLLM(backend=ScriptedLM(tiny_tokenizer(), "plain text"), **BUDGET)
    assert await text.ainvoke("x", config={"callbacks": [handler]}) == "".join(handler.tokens)


def test_ls_params_and_usage_are_per_call() -> None:
    llm = chat(LONG)
    handler = Recorder()
    short = llm.invoke("Hi", max_new_tokens=8, config={"callbacks": [handler]})
    assert handler.metadata[-1]["ls_max_tokens"] == 8
    llm.bind(max_tokens=12).invoke("Hi", config={"callbacks": [handler]})
    assert handler.metadata[-1]["ls_max_tokens"] == 12
    default = llm.invoke("Hi", config={"callbacks": [handler]})
    assert handler.metadata[-1]["ls_max_tokens"] == 96
    assert handler.metadata[-1]["ls_provider"] == "power_sampling"
    assert handler.metadata[-1]["ls_model_name"] == "scripted"
    assert short.usage_metadata["output_tokens"] == 8
    assert default.usage_metadata["output_tokens"] > 8


def test_response_metadata_names_the_provider() -> None:
    llm = chat("Hello there, a streamed reply.")
    assert llm.invoke("Hi").response_metadata["model_provider"] == "power_sampling"
    chunks = list(llm.stream("Hi"))
    merged = sum(chunks[1:], chunks[0])
    assert merged.response_metadata["model_provider"] == "power_sampling"
    assert isinstance(AIMessage(**merged.model_dump(exclude={"type"})), AIMessage)


# -- unknown settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ChatPowerSampling, PowerSamplingLLM])
def test_unknown_setting_lists_our_settings_once_closest_first(cls: type) -> None:
    with pytest.raises(ValueError, match="unknown setting") as info:
        cls(num_rolouts=4)
    listed = re.search(r"valid settings are ([\w, ]+)", str(info.value)).group(1).split(", ")
    assert listed[0] == "num_rollouts" and "did you mean 'num_rollouts'" in str(info.value)
    assert len(listed) == len(set(listed))
    for internal in ("rate_limiter", "callbacks", "cache", "verbose", "tags", "metadata"):
        assert internal not in listed
    assert {"alpha", "model", "device", "preset", "timeout", "max_tokens"} <= set(listed)


# -- serialisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ChatPowerSampling, PowerSamplingLLM])
def test_dumpd_loads_round_trip_settings_and_model_name(cls: type) -> None:
    from langchain_core.load import dumpd, dumps, load, loads

    llm = cls(model="org/some-model", preset="cpu", alpha=2, stop=["\n\n"], timeout=30)
    serialized = dumpd(llm)
    assert serialized["type"] == "constructor"
    assert serialized["id"] == ["power_sampling", "integrations", "langchain", cls.__name__]
    assert serialized["kwargs"]["model"] == "org/some-model"
    for back in (
        load(serialized, valid_namespaces=["power_sampling"], allowed_objects=[cls]),
        loads(dumps(llm), valid_namespaces=["power_sampling"], allowed_objects=[cls]),
    ):
        assert type(back) is cls and back.model_name == "org/some-model"
        assert back.config == llm.config and back.stop == ["\n\n"] and back.timeout == 30
    assert not any("some-model" in key for key in loaded_models())  # nothing was loaded


def test_a_live_backend_pickles_by_reference() -> None:
    backend = ScriptedLM(tiny_tokenizer(), "from the same backend")
    llm = ChatPowerSampling(backend=backend, **BUDGET, alpha=2)
    assert llm.to_json()["type"] == "not_implemented"  # a live object has no JSON form
    back = pickle.loads(pickle.dumps(llm))
    assert back.backend is backend and back.config == llm.config
    assert back.invoke("Hi").content == "from the same backend"
    sampler = PowerSampler(backend)
    assert pickle.loads(pickle.dumps(PowerSamplingLLM(sampler=sampler))).sampler is sampler
    named = pickle.loads(pickle.dumps(ChatPowerSampling(model="org/some-model", alpha=2)))
    assert named.model_name == "org/some-model" and named.config.alpha == 2


def test_a_live_backend_does_not_unpickle_in_another_process() -> None:
    data = pickle.dumps(ChatPowerSampling(backend=ScriptedLM(tiny_tokenizer(), "x"), **BUDGET))
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    done = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True)
    assert done.returncode != 0
    message = done.stderr.decode()
    assert "LookupError" in message and "model='<name or path>'" in message


# -- where a BaseChatModel is expected -------------------------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def scripted_agent_model() -> ChatPowerSampling:
    return ChatPowerSampling(backend=ScriptedLM(tiny_tokenizer(), reply), **BUDGET, seed=0)


def test_create_agent_takes_the_instance() -> None:
    from langchain.agents import create_agent

    agent = create_agent(model=scripted_agent_model(), tools=[add])
    state = agent.invoke({"messages": [("user", "What is 2 + 2?")]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert state["messages"][1].tool_calls[0]["args"] == {"a": 2, "b": 2}
    assert state["messages"][2].content == "4" and state["messages"][-1].content == ANSWER


def test_a_langgraph_node_calls_the_model() -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph

    model = scripted_agent_model()

    def respond(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("respond", respond)
    graph.add_edge(START, "respond")
    graph.add_edge("respond", END)
    handler = Recorder()
    state = graph.compile().invoke(
        {"messages": [("user", "What is 2 + 2?")]}, {"callbacks": [handler]}
    )
    assert state["messages"][-1].content == ANSWER
    assert "".join(handler.tokens) == ANSWER  # the graph's callbacks reach the model's tokens
