"""The benchmarks by name: GSM8K, MATH-500, HumanEval, MBPP, GPQA-Diamond and arithmetic.

Each is a :class:`~.problems.Task` (load problems, build prompts, grade completions) defined
with its kind: :mod:`.math_tasks`, :mod:`.code_tasks`, :mod:`.choice_tasks`; the graders
themselves are in :mod:`.graders`. ``get_task("gsm8k")`` is one of them, by name.

Prompts follow the paper's setup (arXiv 2601.21590, after Karan & Du 2025): math asks for
step-by-step reasoning with the final answer in ``\\boxed{}``; HumanEval gives the function to
complete; GPQA lists the four choices in a seeded random order and asks for ``\\boxed{LETTER}``.
"""

from __future__ import annotations

from pathlib import Path

from .choice_tasks import GPQA
from .code_tasks import MBPP, CodeTask, HumanEval
from .math_tasks import ARITHMETIC_SEED, GSM8K, MATH500, Arithmetic, arithmetic_problems
from .problems import Messages, Problem, Prompt, Task, choice_seed

__all__ = [
    "ARITHMETIC_SEED",
    "GPQA",
    "GSM8K",
    "MATH500",
    "MBPP",
    "TASKS",
    "Arithmetic",
    "CodeTask",
    "HumanEval",
    "Messages",
    "Problem",
    "Prompt",
    "Task",
    "arithmetic_problems",
    "choice_seed",
    "get_task",
]


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
