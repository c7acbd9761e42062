"""The generated arithmetic task and the paired comparison of `eval compare`."""

from __future__ import annotations

import math
import operator

import pytest

from power_sampling.evals.compare import paired_comparison, paired_table
from power_sampling.evals.tasks import Arithmetic, arithmetic_problems, get_task

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def test_problems_are_fixed_with_exact_answers() -> None:
    task = get_task("arithmetic", seed=7)  # the run seed does not change the problems
    problems = task.load(300)
    assert len(problems) == 300 and problems == arithmetic_problems(300)
    assert task.load(5) == problems[:5]
    for i, problem in enumerate(problems):
        a, op, b = problem.question.split()
        assert op == "+-*"[i % 3]
        assert int(problem.reference) == OPS[op](int(a), int(b))
        assert (10 <= int(a) <= 99) if op != "*" else (2 <= int(a) <= 9)
        assert 2 <= int(b) <= 9
    assert len({p.question for p in problems}) > 200  # varied
    with pytest.raises(ValueError, match="limit must be >= 0"):
        task.load(-1)


def test_prompts_and_grading() -> None:
    task = Arithmetic()
    problem = task.load(1)[0]
    raw = task.build_prompt(problem, chat=False)
    assert raw == f"23 + 5 = 28\n41 - 6 = 35\n6 * 7 = 42\n{problem.question} ="
    assert task.stop_sequences(chat=False) == ("\n",)
    chat = task.build_prompt(problem, chat=True)
    assert [m["role"] for m in chat] == ["user", "assistant"] * 3 + ["user"]
    assert problem.question in chat[-1]["content"]
    assert task.grade(problem, f" {problem.reference}\n").correct
    wrong = task.grade(problem, f" {int(problem.reference) + 1} is it")
    assert not wrong.correct and wrong.extracted == str(int(problem.reference) + 1)
    assert task.grade(problem, " no idea").extracted is None
    assert not task.grade(problem, f" -{problem.reference}").correct


def test_a_data_file_replaces_the_generated_problems(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a.jsonl"
    path.write_text('{"question": "2 + 2", "answer": "4"}\n')
    problems = Arithmetic(path).load()
    assert [(p.question, p.reference) for p in problems] == [("2 + 2", "4")]


def test_paired_comparison_by_hand() -> None:
    ids = [str(i) for i in range(10)]
    # 3 problems only a solves, 1 only b, 2 both, 4 neither.
    a = {i: bool(v) for i, v in zip(ids, [1, 1, 1, 0, 1, 1, 0, 0, 0, 0], strict=True)}
    b = {i: bool(v) for i, v in zip(ids, [0, 0, 0, 1, 1, 1, 0, 0, 0, 0], strict=True)}
    c = paired_comparison("a", "b", a, b)
    assert (c.problems, c.only_method, c.only_reference) == (10, 3, 1)
    assert c.difference == pytest.approx(0.2)
    half = 1.959963984540054 * math.sqrt(4 - 10 * 0.04) / 10
    assert (c.ci_low, c.ci_high) == pytest.approx((0.2 - half, 0.2 + half))
    assert c.p_value == pytest.approx(2 * (1 + 4) / 16)  # binomial(4, 1/2), k <= 1, two-sided
    assert "| a | 10 | 3 | 1 | +0.200 |" in paired_table([c])
    with pytest.raises(ValueError, match="share no problems"):
        paired_comparison("a", "b", {"x": True}, {"y": True})


def test_mcnemar_exact_p_by_hand() -> None:
    """Two-sided exact McNemar: 2 P(X <= min(b, c)) for X ~ binomial(b + c, 1/2), at most 1.

    b = 0, c = 5: 2 * (1/2)^5 = 0.0625; b = c = 3: 2 * (1 + 6 + 15 + 20) / 64 > 1, so 1;
    no discordant problem: 1.
    """
    ids = [str(i) for i in range(6)]
    none = dict.fromkeys(ids, False)
    assert paired_comparison("a", "b", {**none, "5": True}, dict.fromkeys(ids, True)).p_value == (
        pytest.approx(0.0625)
    )
    a = {i: i < "3" for i in ids}
    assert paired_comparison("a", "b", a, {i: not v for i, v in a.items()}).p_value == 1.0
    assert paired_comparison("a", "b", none, none).p_value == 1.0
