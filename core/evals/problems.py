"""A benchmark problem, and the interface of a benchmark (:class:`Task`).

A :class:`Task` gives every benchmark the same three steps, so the evaluation runner never needs
to know which benchmark it runs::

    task = get_task("math500")
    for problem in task.load(limit=10):
        prompt = task.build_prompt(problem, chat=True)   # messages for a chat template
        result = task.grade(problem, completion, chat=True)

``chat=True`` builds a list of ``{"role", "content"}`` messages for instruct models, and
``chat=False`` a plain string for base models, which continue it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .graders import GradeResult
from .loading import resolve_data_file

Messages = list[dict[str, str]]
Prompt = str | Messages


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
            self._problems = self._load_all()
        return list(self._problems[:limit])

    def _load_all(self) -> list[Problem]:
        """Every problem: the data file's, parsed by :meth:`_read`."""
        return self._read(resolve_data_file(self.data_file, self.data_path))

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


def user_turn(content: str) -> Messages:
    """``content`` as the one user message of a chat prompt."""
    return [{"role": "user", "content": content}]


def choice_seed(run_seed: int, problem_id: str) -> int:
    """A 64-bit seed from the run seed and a problem id, stable across Python processes.

    (``hash()`` of a string is salted per process, so it cannot be used here.)
    """
    digest = hashlib.sha256(f"{run_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")
