"""The code benchmarks: HumanEval and MBPP, graded by running the benchmark's tests."""

from __future__ import annotations

import re
from pathlib import Path

from . import graders
from .graders import GradeResult
from .loading import read_jsonl
from .problems import Problem, Prompt, Task, user_turn


class CodeTask(Task):
    """Shared settings of the code benchmarks: per-program time and memory limits.

    Set them on an instance to change them (``task.timeout_s = 5.0``). ``grade`` only waits on a
    child process, so grading many completions from a thread pool runs them in parallel.
    """

    timeout_s: float = 10.0
    memory_mb: int = 1024


class HumanEval(CodeTask):
    """HumanEval: 164 Python functions to complete from signature and docstring."""

    name = "humaneval"
    data_file = "HumanEval.jsonl.gz"

    def _read(self, path: Path) -> list[Problem]:
        fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
        return [
            Problem(
                id=record["task_id"],
                question=record["prompt"],
                reference=record["canonical_solution"],
                data={"test": record["test"], "entry_point": record["entry_point"]},
            )
            for record in read_jsonl(path, fields)
        ]

    def build_prompt(self, problem: Problem, chat: bool) -> Prompt:
        if not chat:
            return problem.question
        return user_turn(
            "Complete the following Python function. Reply with the complete function, "
            "including its signature and any imports it needs, in a single ```python code "
            f"block.\n\n```python\n{problem.question}```"
        )

    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        entry_point = problem.data["entry_point"]
        solution = graders.humaneval_solution(problem.question, completion, entry_point, chat=chat)
        tests = graders.humaneval_tests(problem.data["test"], entry_point)
        return graders.grade_code(
            solution, tests, timeout_s=self.timeout_s, memory_mb=self.memory_mb
        )

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        return () if chat else graders.HUMANEVAL_STOPS


class MBPP(CodeTask):
    """MBPP test split (task ids 11-510): short Python functions checked by three asserts."""

    name = "mbpp"
    data_file = "mbpp.jsonl"
    test_ids = range(11, 511)

    def _read(self, path: Path) -> list[Problem]:
        fields = ("task_id", "text", "code", "test_list")
        problems = []
        for record in read_jsonl(path, fields):
            if record["task_id"] not in self.test_ids:
                continue
            tests = list(record["test_list"])
            if not tests:
                raise ValueError(f"{path}: MBPP task {record['task_id']} has an empty test_list")
            problems.append(
                Problem(
                    id=f"mbpp/{record['task_id']}",
                    question=record["text"],
                    reference=record["code"],
                    data={
                        "tests": tests,
                        "setup": record.get("test_setup_code", ""),
                        "function_name": _tested_function(record["code"], tests[0]),
                    },
                )
            )
        if not problems:
            raise ValueError(f"{path} has no MBPP test-split problems (task ids 11-510)")
        return problems

    def _instruction(self, problem: Problem) -> str:
        return (
            "You are an expert Python programmer. Write a Python function for this task:\n"
            f"{problem.question}\n\nYour code should pass this test:\n{problem.data['tests'][0]}"
        )

    def build_prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return user_turn(
                self._instruction(problem) + "\n\nReply with the code in a single ```python block."
            )
        return self._instruction(problem) + "\n\n```python\n"

    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        solution = graders.mbpp_solution(completion, problem.data["function_name"], chat=chat)
        tests = graders.mbpp_tests(problem.data["tests"], problem.data["setup"])
        return graders.grade_code(
            solution, tests, timeout_s=self.timeout_s, memory_mb=self.memory_mb
        )

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("```",)


def _tested_function(code: str, test: str) -> str | None:
    """The function of the reference code that the first test calls (the one to write)."""
    for name in re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.M):
        if re.search(rf"\b{re.escape(name)}\s*\(", test):
            return name
    return None
