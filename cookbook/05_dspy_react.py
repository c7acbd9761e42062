"""05 · A DSPy ReAct agent with a Python tool, power-sampled.

``dspy.ReAct`` is a text protocol: each turn the model writes ``next_thought``,
``next_tool_name`` and ``next_tool_args``; DSPy runs the tool and appends the observation. With
``dspy.configure(lm=power_lm(...))`` every one of those turns is drawn from p(x)^alpha, so the
agent's choices favour continuations whose whole future is likely, not just the next token.

- ``alpha`` sets how sharp the target is (1 = the base model, paper 4).
- The rollout budget: ``top_k`` candidates per step, ``num_rollouts`` rollouts per candidate,
  ``rollout_length`` tokens per rollout. Per call, ``metadata={"num_rollouts": 8}`` overrides a
  setting (``lm.copy(metadata=...)`` for a whole module), and DSPy's cache keeps them apart.

Run ``python cookbook/05_dspy_react.py`` (the embedded SmolLM2-135M-Instruct, a few minutes on a
CPU). Every step is constrained to its JSON schema (``SchemaJSONAdapter``), so it parses: the
tool name is ``calculator`` or ``finish`` and every field is there. What the 135M model does with
that is weak (it often finishes at once with a wrong answer); pass a stronger model to
``power_lm`` in ``make_lm`` (e.g. ``model="Qwen/Qwen2.5-1.5B-Instruct"``) to see the agent use its
tool. A reply cut by ``max_new_tokens`` can still fail to parse; the recipe reports it.
``POWER_SAMPLING_COOKBOOK_MODEL=tiny`` runs a tiny random model (a smoke test).
"""

from __future__ import annotations

import ast
import operator
import os

import dspy
from dspy.utils.exceptions import AdapterParseError

from power_sampling.integrations.dspy import SchemaJSONAdapter, power_lm

TINY = os.environ.get("POWER_SAMPLING_COOKBOOK_MODEL") == "tiny"
QUESTIONS = ["What is 37 * 49 + 12?", "A box holds 24 eggs. How many eggs are in 17 boxes?"]

_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
}


def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression with + - * / and parentheses, e.g. '37 * 49 + 12'."""

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        raise ValueError(f"unsupported expression: {ast.unparse(node)}")

    return value(ast.parse(expression, mode="eval").body)


def make_lm() -> dspy.LM:
    if not TINY:
        return power_lm(preset="cpu", max_new_tokens=96)  # SmolLM2-135M, the "cpu" budgets
    from power_sampling.backends import TransformersBackend
    from power_sampling.testing import tiny_chat_model

    backend = TransformersBackend.from_transformers(*tiny_chat_model(seed=0))
    return power_lm(backend=backend, preset="cpu", max_new_tokens=24)


def make_agent() -> dspy.ReAct:
    agent = dspy.ReAct("question -> answer: float", tools=[calculator], max_iters=3)
    # One worked example of each step's format: a small model copies it far more reliably than it
    # follows the instructions alone (an optimizer such as BootstrapFewShot finds such demos).
    question = "What is 12 * 11 - 2?"
    trajectory = (  # as ReAct formats it after one step
        "[[ ## thought_0 ## ]]\nI will compute it with the calculator.\n\n"
        "[[ ## tool_name_0 ## ]]\ncalculator\n\n"
        '[[ ## tool_args_0 ## ]]\n{"expression": "12 * 11 - 2"}\n\n'
        "[[ ## observation_0 ## ]]\n130"
    )
    agent.react.demos = [
        dspy.Example(
            question=question,
            trajectory="",
            next_thought="I will compute it with the calculator.",
            next_tool_name="calculator",
            next_tool_args={"expression": "12 * 11 - 2"},
        ),
        dspy.Example(
            question=question,
            trajectory=trajectory,
            next_thought="The calculator gave 130, so I can finish.",
            next_tool_name="finish",
            next_tool_args={},
        ),
    ]
    agent.extract.predict.demos = [
        dspy.Example(
            question=question,
            trajectory=trajectory,
            reasoning="The calculator computed 12 * 11 - 2 = 130.",
            answer=130.0,
        )
    ]
    return agent


def main() -> list[str | None]:
    # SchemaJSONAdapter sends each step's whole JSON schema (the tool name one of the tools or
    # "finish", the arguments an object), and the engine constrains the reply to it, so every
    # step parses; dspy.JSONAdapter would send ReAct's steps as "any JSON object" (their tool
    # arguments are an open mapping), to which the 135M model's most likely reply is {}.
    dspy.configure(lm=make_lm(), adapter=SchemaJSONAdapter())
    agent = make_agent()
    answers = []
    for question in QUESTIONS[:1] if TINY else QUESTIONS:
        print(question)
        try:
            prediction = agent(question=question)
        except AdapterParseError as error:  # small models sometimes break DSPy's field format
            print(f"  the model did not follow the ReAct format: {error.lm_response[:200]!r}")
            answers.append(None)
            continue
        trajectory = prediction.trajectory
        for step in range(len(trajectory) // 4):
            call = f"{trajectory[f'tool_name_{step}']}({trajectory[f'tool_args_{step}']})"
            print(f"  {call} -> {trajectory[f'observation_{step}']}")
        print(f"  answer: {prediction.answer}")
        answers.append(str(prediction.answer))
    return answers


if __name__ == "__main__":
    main()
