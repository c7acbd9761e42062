"""The five benchmarks: load problems, build prompts, grade completions.

A :class:`Task` gives every benchmark the same three steps, so the evaluation runner never needs
to know which benchmark it runs::

    task = get_task("math500")
    for problem in task.load(limit=10):
        prompt = task.build_prompt(problem, chat=True)   # messages for a chat template
        result = task.grade(problem, completion, chat=True)

Prompts follow the paper's setup (arXiv 2601.21590, after Karan & Du 2025): math asks for
step-by-step reasoning with the final answer in ``\\boxed{}``; HumanEval gives the function to
complete; GPQA lists the four choices in a seeded random order and asks for ``\\boxed{LETTER}``.
``chat=True`` builds a list of ``{"role", "content"}`` messages for instruct models, and
``chat=False`` a plain string for base models, which continue it.

Longer than most modules: one small class per benchmark, kept together so their prompts and
grading read side by side; the graders themselves are in :mod:`.graders`.
"""

from __future__ import annotations

import hashlib
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from . import graders
from .graders import GradeResult
from .loading import read_jsonl, read_zipped_csv, resolve_data_file

Messages = list[dict[str, str]]
Prompt = str | Messages

_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Attributes:
        id: the benchmark's own id (``"HumanEval/0"``, MATH's ``unique_id``, GPQA's record id).
        question: the problem text; for HumanEval, the function prompt to complete.
        reference: the gold answer: a number (GSM8K), LaTeX (MATH), a letter (GPQA), or the
            canonical solution code (HumanEval, MBPP: what the tests are known to accept).
        data: task-specific fields: tests and entry point (code), shuffled choices (GPQA), ...
    """

    id: str
    question: str
    reference: str
    data: Mapping[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A benchmark: where its data is, how to prompt for it and how to grade an answer.

    Args:
        data_path: read this file instead of the copy shipped with the package (same format).
        seed: run seed; GPQA derives each problem's choice order from it and the problem id.
    """

    name: ClassVar[str]
    data_file: ClassVar[str]

    def __init__(self, data_path: str | Path | None = None, *, seed: int = 0) -> None:
        self.data_path = data_path
        self.seed = seed
        self._problems: list[Problem] | None = None

    def load(self, limit: int | None = None) -> list[Problem]:
        """The problems in benchmark order (the first ``limit`` of them), read once and cached."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if self._problems is None:
            self._problems = self._read(resolve_data_file(self.data_file, self.data_path))
        return list(self._problems[:limit])

    @abstractmethod
    def _read(self, path: Path) -> list[Problem]:
        """Parse the data file into problems; raise ValueError naming the file on bad content."""

    @abstractmethod
    def build_prompt(self, problem: Problem, chat: bool) -> Prompt:
        """Messages (``chat=True``) or a plain string for a base model (``chat=False``)."""

    @abstractmethod
    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        """Grade a completion of the prompt ``build_prompt(problem, chat)`` produced."""

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        """Strings after which a base model's continuation is over (none for chat models)."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data_path={self.data_path!r}, seed={self.seed})"


def _user(content: str) -> Messages:
    return [{"role": "user", "content": content}]


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
            return _user(f"{problem.question}\n\n{_MATH_INSTRUCTION}")
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
            return _user(f"{problem.question}\n\n{_MATH_INSTRUCTION}")
        return f"Problem: {problem.question}\n{_MATH_INSTRUCTION}\n\nSolution:"

    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        return graders.grade_math(completion, problem.reference)

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("\n\nProblem:",)


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
        return _user(
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
            return _user(
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


class GPQA(Task):
    """GPQA-Diamond: 198 graduate-level multiple-choice science questions.

    The choices are shuffled per problem by ``random.Random`` seeded from the run seed and the
    problem id, so an order is reproducible yet differs between runs with different seeds. The
    data stays inside its password-protected zip and is decrypted in memory only.
    """

    name = "gpqa"
    data_file = "gpqa_diamond.zip"
    zip_member = "gpqa_diamond.csv"
    # The GPQA authors' public password; it keeps the questions out of web-crawled corpora.
    zip_password = b"deserted-untie-orchid"
    letters = "ABCD"

    def _read(self, path: Path) -> list[Problem]:
        answer_columns = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2")
        columns = ("Record ID", "Question", *answer_columns, "Incorrect Answer 3")
        rows = read_zipped_csv(path, self.zip_member, self.zip_password, columns)
        problems = []
        for row in rows:
            answers = [row[column].strip() for column in columns[2:]]
            order = list(range(4))
            random.Random(choice_seed(self.seed, row["Record ID"])).shuffle(order)
            correct = order.index(0)  # answers[0] is the correct one
            problems.append(
                Problem(
                    id=row["Record ID"],
                    question=row["Question"].strip(),
                    reference=self.letters[correct],
                    data={
                        "choices": tuple(answers[i] for i in order),
                        "correct_index": correct,
                        "domain": row.get("High-level domain", ""),
                    },
                )
            )
        return problems

    def _text(self, problem: Problem) -> str:
        choices = "\n".join(
            f"{letter}) {choice}"
            for letter, choice in zip(self.letters, problem.data["choices"], strict=True)
        )
        return (
            "Answer the following multiple-choice question. Think step by step, then write the "
            "final answer on the last line as \\boxed{LETTER}, where LETTER is one of A, B, C, D."
            f"\n\n{problem.question}\n\n{choices}"
        )

    def build_prompt(self, problem: Problem, chat: bool) -> Prompt:
        if chat:
            return _user(self._text(problem))
        return self._text(problem) + "\n\nSolution:"

    def grade(self, problem: Problem, completion: str, *, chat: bool = True) -> GradeResult:
        return graders.grade_choice(completion, problem.reference, self.letters)

    def stop_sequences(self, chat: bool) -> tuple[str, ...]:
        return () if chat else ("\n\nAnswer the following",)


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

    def load(self, limit: int | None = None) -> list[Problem]:
        if self.data_path is not None:
            return super().load(limit)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if self._problems is None:
            self._problems = arithmetic_problems(self.size)
        return list(self._problems[:limit])

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
        messages += _user(f"{problem.question} = ? Reply with the number only.")
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


def choice_seed(run_seed: int, problem_id: str) -> int:
    """A 64-bit seed from the run seed and a problem id, stable across Python processes.

    (``hash()`` of a string is salted per process, so it cannot be used here.)
    """
    digest = hashlib.sha256(f"{run_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


TASKS: dict[str, type[Task]] = {
    task.name: task for task in (GSM8K, MATH500, HumanEval, MBPP, GPQA, Arithmetic)
}


def get_task(name: str, *, data_path: str | Path | None = None, seed: int = 0) -> Task:
    """The task called ``name`` (one of :data:`TASKS`), reading ``data_path`` if given."""
    try:
        task_class = TASKS[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; valid names are: {', '.join(sorted(TASKS))}"
        ) from None
    return task_class(data_path, seed=seed)
