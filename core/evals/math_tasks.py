"""The math benchmarks: GSM8K, MATH-500, and generated arithmetic a small model half solves.

Math prompts follow the paper's setup (arXiv 2601.21590, after Karan & Du 2025): step-by-step
reasoning with the final answer in ``\\boxed{}``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from . import graders
from .graders import GradeResult
from .loading import read_jsonl
from .problems import Messages, Problem, Prompt, Task, user_turn

_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class GSM8K(Task):
    """GSM8K test split (1319 grade-school word problems with a numeric answer)."""

    name = "gsm8k"
    data_file = "gsm8k_test.jsonl"

    def _read(self, path: Path) -> list[Problem]:
        problems = []
        for index, record in enumerate(read_jsonl(path, ("question", "answer"))):
            _, sep, final = record["answer"].rpartition("####")
            if not sep:
                raise ValueError(f"{path}: record {index} has no '#### <number>' in its answer")
            problems.append(
                Problem(
                    id=f"gsm8k/{index}",
                    question=record["question"],
                    reference=final.strip().replace(",", ""),
                    data={"solution": record["answer"]},
                )
            )
        return problems

    def build_prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return user_turn(f"{problem.question}\n\n{_MATH_INSTRUCTION}")
        return f"Question: {problem.question}\n{_MATH_INSTRUCTION}\n\nAnswer:"

    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        return graders.grade_gsm8k(completion, problem.reference)

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("\n\nQuestion:",)


class MATH500(Task):
    """MATH-500: the 500-problem MATH test subset of "Let's Verify Step by Step"."""

    name = "math500"
    data_file = "math500_test.jsonl"

    def _read(self, path: Path) -> list[Problem]:
        fields = ("problem", "answer", "unique_id", "subject", "level")
        return [
            Problem(
                id=record["unique_id"],
                question=record["problem"],
                reference=record["answer"],
                data={"subject": record["subject"], "level": record["level"]},
            )
            for record in read_jsonl(path, fields)
        ]

    def build_prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return user_turn(f"{problem.question}\n\n{_MATH_INSTRUCTION}")
        return f"Problem: {problem.question}\n{_MATH_INSTRUCTION}\n\nSolution:"

    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        return graders.grade_math(completion, problem.reference)

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("\n\nProblem:",)


class Arithmetic(Task):
    """Generated arithmetic with exact integer answers: short outputs a small model half solves.

    The problems are one fixed list, the same for every run (generated with
    ``random.Random(ARITHMETIC_SEED)``, independent of the run seed), cycling through three
    kinds: ``a + b`` (a in 10..99, b in 2..9), ``a - b`` (a in 10..99, b in 2..9) and ``a * b``
    (a, b in 2..9). The raw prompt (``chat=False``) is three worked examples, one per line, then
    ``"<a> <op> <b> ="``: the model writes the number and the line ends it. The chat prompt asks
    the same in turns. Graded by the first integer of the completion against the answer.
    ``data_path`` reads ``{"question": "12 + 5", "answer": "17"}`` JSON lines instead.
    """

    name = "arithmetic"
    data_file = ""
    size = 1000
    shots = (("23 + 5", "28"), ("41 - 6", "35"), ("6 * 7", "42"))

    def _load_all(self) -> list[Problem]:
        if self.data_path is not None:
            return super()._load_all()
        return arithmetic_problems(self.size)

    def _read(self, path: Path) -> list[Problem]:
        return [
            Problem(f"arithmetic/{i}", str(r["question"]), str(r["answer"]))
            for i, r in enumerate(read_jsonl(path, ("question", "answer")))
        ]

    def build_prompt(self, problem: Problem, chat: bool) -> Prompt:
        if not chat:
            lines = [f"{q} = {a}" for q, a in self.shots]
            return "\n".join([*lines, f"{problem.question} ="])
        messages: Messages = []
        for q, a in self.shots:
            messages += [
                {"role": "user", "content": f"{q} = ? Reply with the number only."},
                {"role": "assistant", "content": a},
            ]
        messages += user_turn(f"{problem.question} = ? Reply with the number only.")
        return messages

    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        found = re.search(r"-?\d+", completion)
        if found is None:
            return GradeResult(False, None, "no integer in the completion")
        value = found.group(0)
        return GradeResult(
            int(value) == int(problem.reference),
            value,
            "" if int(value) == int(problem.reference) else f"expected {problem.reference}",
        )

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("\n",)


ARITHMETIC_SEED = 15
"""Seed of the generated arithmetic problem list (fixed: one benchmark for every run)."""


def arithmetic_problems(count: int, seed: int = ARITHMETIC_SEED) -> list[Problem]:
    """The first ``count`` generated problems (see :class:`Arithmetic`)."""
    rng = random.Random(seed)
    problems = []
    for i in range(count):
        kind = i % 3
        if kind == 2:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            question, answer = f"{a} * {b}", a * b
        else:
            a, b = rng.randint(10, 99), rng.randint(2, 9)
            question, answer = (f"{a} + {b}", a + b) if kind == 0 else (f"{a} - {b}", a - b)
        problems.append(Problem(f"arithmetic/{i}", question, str(answer), {"kind": kind}))
    return problems
