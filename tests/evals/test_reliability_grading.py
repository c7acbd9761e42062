"""Math answers that would keep the grader busy for ever: the grade has a time bound per answer,
from any thread, and the run goes on."""

from __future__ import annotations

import threading
import time

from power_sampling.evals.graders import GradeResult, grade_gsm8k, grade_math
from power_sampling.evals.math_worker import math_equal_bounded


def _in_a_thread(call, limit_s: float) -> GradeResult | None:  # type: ignore[no-untyped-def]
    """``call()`` in a worker thread (where signal timeouts cannot work); None if it hangs."""
    box: list[GradeResult] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(limit_s)
    return box[0] if box else None


def test_gsm8k_answer_with_a_tower_of_powers_is_graded_wrong_in_bounded_time() -> None:
    start = time.monotonic()
    grade = _in_a_thread(lambda: grade_gsm8k("So \\boxed{10^{10^{10}}}", "18", timeout_s=2), 90)
    assert grade is not None, "grading hung"
    assert not grade.correct
    assert "timed out" in grade.detail
    assert time.monotonic() - start < 90


def test_grading_goes_on_after_an_answer_timed_out() -> None:
    first = _in_a_thread(lambda: grade_math("\\boxed{10^{10^{10}}}", "3", timeout_s=2), 90)
    assert first is not None and "timed out" in first.detail
    grade = _in_a_thread(lambda: grade_math("\\boxed{\\frac{1}{2}}", "0.5"), 90)
    assert grade is not None and grade.correct, grade
    wrong = _in_a_thread(lambda: grade_math("\\boxed{\\frac{1}{3}}", "0.5"), 90)
    assert wrong is not None and not wrong.correct and wrong.detail == ""


def test_plain_numbers_are_compared_without_a_worker() -> None:
    assert math_equal_bounded("18", "18.0")
    assert not math_equal_bounded("18", "-18")
