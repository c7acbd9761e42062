"""02 · A LangChain agent whose every turn is power-sampled.

``langchain.agents.create_agent(model, tools)`` binds the tools and loops: the model calls a tool,
gets a ``ToolMessage`` back, and answers. ``ChatPowerSampling`` renders the tools through the
model's chat template (or, for templates without tool support such as SmolLM2's, a system prompt
describing them and the ``<tool_call>{...}</tool_call>`` format) and parses the calls.

A forced ``tool_choice`` (a tool name, or ``"any"``) is constrained to one call whose arguments
match the tool's schema (only ``max_new_tokens`` can cut it short); ``"auto"``, what the agent
loop uses, lets the model answer in text or call a tool, and keeps tool markup out of the
answer. The recipe shows the forced call first, then runs the agent loop (a model this small
often answers without calling the tool; that is its choice, as ``"auto"`` allows).

Run ``python cookbook/02_langchain_agent.py`` (the embedded SmolLM2-135M-Instruct; under a minute
on a CPU). ``POWER_SAMPLING_COOKBOOK_MODEL=tiny`` runs a
tiny random model instead (a smoke test).
"""

from __future__ import annotations

import ast
import operator
import os
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.errors import GraphRecursionError

from power_sampling.integrations.langchain import ChatPowerSampling

TINY = os.environ.get("POWER_SAMPLING_COOKBOOK_MODEL") == "tiny"
# The "cpu" preset's budgets (the paper's are preset="paper"), shorter answers, a fixed seed.
SETTINGS: dict[str, Any] = dict(preset="cpu", max_new_tokens=24 if TINY else 96, seed=0)
_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses, e.g. '37 * 49 + 12'."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"error: {exc}"


calculator.handle_validation_error = True  # wrong arguments come back as an error message


def make_llm(**settings: Any) -> ChatPowerSampling:
    if TINY:
        from power_sampling.backends import TransformersBackend
        from power_sampling.testing import tiny_chat_model

        backend = TransformersBackend.from_transformers(*tiny_chat_model(seed=0))
        return ChatPowerSampling(backend=backend, **settings)
    return ChatPowerSampling(**settings)  # the embedded SmolLM2-135M-Instruct


def main() -> None:
    llm = make_llm(**SETTINGS)
    # One worked example in the history (a tool call, its result, the answer) shows a small model
    # the tool's argument names; the conversation history takes tool calls and ToolMessages.
    example = [
        HumanMessage("What is 6 * 7?"),
        AIMessage(
            "", tool_calls=[{"name": "calculator", "args": {"expression": "6 * 7"}, "id": "0"}]
        ),
        ToolMessage("42", tool_call_id="0"),
        AIMessage("6 * 7 = 42."),
    ]
    question = HumanMessage("What is 37 * 49 + 12?")

    forced = llm.bind_tools([calculator], tool_choice="calculator").invoke([*example, question])
    for call in forced.tool_calls:
        print(f"forced call: calculator({call['args']}) -> {calculator.invoke(call).content}")
    for bad in forced.invalid_tool_calls:
        print(f"forced call did not parse: {bad['args']!r} ({bad['error']})")

    agent = create_agent(llm, [calculator], system_prompt="Use the calculator for arithmetic.")
    try:
        state = agent.invoke({"messages": [*example, question]}, {"recursion_limit": 6})
    except GraphRecursionError:
        print("the agent kept calling tools; stopped after 6 steps")
        return
    for message in state["messages"][len(example) :]:
        calls = getattr(message, "tool_calls", None)
        print(
            f"{type(message).__name__}: {message.content!r}" + (f" calls {calls}" if calls else "")
        )


if __name__ == "__main__":
    main()
