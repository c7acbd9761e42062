"""Evaluation tasks and graders: GSM8K, MATH-500, HumanEval, MBPP and GPQA-Diamond.

Importing this package is cheap: math-verify is imported only when a math answer is graded.
"""

from .execution import ExecutionResult, run_python
from .graders import GradeResult
from .problems import Problem, Task
from .tasks import TASKS, get_task

__all__ = [
    "TASKS",
    "ExecutionResult",
    "GradeResult",
    "Problem",
    "Task",
    "get_task",
    "run_python",
]
