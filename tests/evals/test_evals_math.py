"""Math graders: boxed extraction, math-verify equivalence, GSM8K number extraction."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from power_sampling.evals import math_compare
from power_sampling.evals.graders import (
    extract_gsm8k_answer,
    grade_gsm8k,
    grade_math,
    last_boxed,
)
from power_sampling.evals.loading import DATA_DIR
from power_sampling.evals.math_compare import math_equal


def _math500_answers() -> list[str]:
    with (DATA_DIR / "math500_test.jsonl").open() as handle:
        return [json.loads(line)["answer"] for line in handle]


EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{14}{3}", "\\dfrac{14}{3}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("10", "10.0"),
    ("\\text{(C)}", "(C)"),
    ("\\sqrt{2}", "2^{1/2}"),
]
DIFFERENT = [
    ("\\frac{14}{3}", "\\frac{14}{5}"),
    ("3", "4"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{3} \\right)"),
    ("-2", "2"),
    ("x^2+1", "x^2-1"),
]


# ----------------------------------------------------------------------------- boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{7}", "7"),
        ("first \\boxed{5}, then cut off: \\boxed{\\frac{1}{", "5"),
        ("empty \\boxed{} after \\boxed{9}", "9"),
        ("no box, answer 5", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


# ----------------------------------------------------------------------------- MATH-500


def test_every_math500_reference_verifies_against_itself() -> None:
    answers = _math500_answers()
    assert len(answers) == 500
    failures = []
    for answer in answers:
        completion = f"Reasoning goes here.\nThe final answer is $\\boxed{{{answer}}}$."
        result = grade_math(completion, answer)
        if not (result.correct and result.extracted == answer.strip()):
            failures.append(answer)
    assert failures == []


def test_math500_references_reject_the_next_problems_answer() -> None:
    """Guards against a grader that accepts anything (or compares nothing but text)."""
    answers = _math500_answers()
    # Pairs that are equal as values: identical text, or math-verify reading "x=5" as 5.
    same_value = {("5", "x=5")}
    accepted = []
    for gold, other in zip(answers, answers[1:] + answers[:1], strict=True):
        if gold.replace(" ", "") == other.replace(" ", "") or (gold, other) in same_value:
            continue
        if grade_math(f"\\boxed{{{other}}}", gold).correct:
            accepted.append((gold, other))
    assert accepted == []


@pytest.mark.parametrize(("gold", "prediction"), EQUIVALENT)
def test_equivalent_forms_are_correct(gold: str, prediction: str) -> None:
    assert math_equal(gold, prediction)


@pytest.mark.parametrize(("gold", "prediction"), DIFFERENT)
def test_different_answers_are_wrong(gold: str, prediction: str) -> None:
    assert not math_equal(gold, prediction)


def test_math_needs_a_boxed_answer() -> None:
    result = grade_math("The answer is 5.", "5")
    assert (result.correct, result.extracted) == (False, None)
    assert "boxed" in result.detail


def test_math_uses_the_last_box() -> None:
    assert grade_math("maybe \\boxed{3}? No: \\boxed{5}.", "5").correct
    assert not grade_math("\\boxed{5}, or rather \\boxed{3}.", "5").correct


def test_overlong_answer_is_not_parsed() -> None:
    assert not math_equal("1", "1+" * 600 + "0")


def test_grading_works_off_the_main_thread() -> None:
    """math-verify's default timeouts use signals, which fail outside the main thread.

    The equivalent pairs differ as text, so only a real math-verify comparison accepts them.
    """
    math_compare._parse_math.cache_clear()  # parse afresh inside the worker threads
    pairs = EQUIVALENT + DIFFERENT
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda pair: grade_math(f"\\boxed{{{pair[1]}}}", pair[0]), pairs))
    assert [r.correct for r in results] == [True] * len(EQUIVALENT) + [False] * len(DIFFERENT)


# ----------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("She pays 1,000 + 234 dollars, so the answer is 1,234.", "1234"),
        ("Total: 6 * 7 = 42. \\boxed{42}", "42"),
        ("4 + 14 = 18 eggs.\n#### 18", "18"),
        ("The temperature falls from 3 to -7 degrees, so it ends at -7.", "-7"),
        ("It costs 2 + 1.25 = 3.25 dollars.", "3.25"),
        ("\\boxed{\\$1,234}", "1234"),
        ("\\boxed{18 \\text{ dollars}}", "18"),
        ("10 - 3 = 7", "7"),
        ("The answer is: \u221212", "-12"),
        ("The answer is 40. Check: 40 / 2 = 20.", "40"),
        ("I computed \\boxed{5} but the final answer is \\boxed{6}.", "6"),
        ("\\boxed{\\frac{3}{2}}", "\\frac{3}{2}"),
        ("I do not know.", None),
    ],
)
def test_gsm8k_extraction(completion: str, expected: str | None) -> None:
    assert extract_gsm8k_answer(completion) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "correct"),
    [
        ("so the answer is 1,234.", "1234", True),
        ("\\boxed{18.00}", "18", True),
        ("\\boxed{\\frac{36}{2}}", "18", True),
        ("#### 17", "18", False),
        ("-5 degrees", "5", False),
        ("nothing", "5", False),
    ],
)
def test_gsm8k_grading(completion: str, gold: str, correct: bool) -> None:
    assert grade_gsm8k(completion, gold).correct is correct


def test_every_gsm8k_reference_solution_grades_correct() -> None:
    """The worked solutions end in '#### N' and contain many other numbers before it."""
    with (DATA_DIR / "gsm8k_test.jsonl").open() as handle:
        records = [json.loads(line) for line in handle]
    assert len(records) == 1319
    failures = []
    for record in records:
        gold = record["answer"].split("####")[-1].strip().replace(",", "")
        if not grade_gsm8k(record["answer"], gold).correct:
            failures.append(gold)
    assert failures == []
