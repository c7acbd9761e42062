"""GPQA answer-letter extraction: the final choice wins over letters mentioned along the way."""

from __future__ import annotations

import pytest

from power_sampling.evals import get_task
from power_sampling.evals.graders import extract_choice, grade_choice


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Reasoning...\n\\boxed{C}", "C"),
        ("\\boxed{\\text{(B)}}", "B"),
        ("\\boxed{\\textbf{D}}", "D"),
        ("\\boxed{(A) 4.2 eV}", "A"),
        ("First guess \\boxed{A}. On reflection the final answer is \\boxed{B}.", "B"),
        ("I think the answer is (B). But ATP and DNA say otherwise.\n\\boxed{C}", "C"),
        ("Option A is wrong. B fails too. C is close. The answer is (D).", "D"),
        ("The answer is (A)... no wait, the answer is (C).", "C"),
        ("Answer: B", "B"),
        ("the correct answer is **C**", "C"),
        ("Final answer: option D", "D"),
        ("The Answer Is (A)", "A"),
        ("A and B are both plausible.\n(C)", "C"),
        ("Because Carbon And Boron bond, the answer is a bit unclear.", None),
        ("The answers are Diverse; Clearly Both Are fine.", None),
        ("\\boxed{42}", None),
        ("Among options A, B, C and D, none stands out.", None),
        ("", None),
    ],
)
def test_extract_choice(completion: str, expected: str | None) -> None:
    assert extract_choice(completion) == expected


def test_boxed_non_letter_falls_back_to_the_stated_answer() -> None:
    assert extract_choice("The answer is (B), which is \\boxed{4.2}") == "B"


def test_letters_outside_the_allowed_set_are_ignored() -> None:
    assert extract_choice("\\boxed{E}") is None
    assert extract_choice("\\boxed{E}", letters="ABCDE") == "E"


def test_grade_choice() -> None:
    assert grade_choice("... \\boxed{B}", "B").correct
    result = grade_choice("... \\boxed{A}", "B")
    assert (result.correct, result.extracted) == (False, "A")
    missing = grade_choice("no idea", "B")
    assert (missing.correct, missing.extracted) == (False, None)


def test_gpqa_task_grades_against_its_shuffled_letter() -> None:
    task = get_task("gpqa", seed=11)
    for problem in task.load(limit=10):
        right = problem.reference
        wrong = next(letter for letter in "ABCD" if letter != right)
        assert task.grade(problem, f"Thinking.\n\\boxed{{{right}}}").correct
        assert not task.grade(problem, f"Thinking.\n\\boxed{{{wrong}}}").correct
