"""Code graders: HumanEval and MBPP reference solutions pass, broken ones fail safely."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from power_sampling.evals import Problem, get_task
from power_sampling.evals.graders import extract_code, truncate_at_stops
from power_sampling.evals.loading import DATA_DIR
from power_sampling.evals.tasks import HumanEval

WORKERS = 4  # child processes at once; the evaluator only waits on them


@pytest.fixture(scope="module")
def humaneval() -> HumanEval:
    task = get_task("humaneval")
    assert isinstance(task, HumanEval)
    task.timeout_s = 5.0
    return task


@pytest.fixture(scope="module")
def first(humaneval: HumanEval) -> Problem:
    return humaneval.load(limit=1)[0]  # has_close_elements(numbers, threshold)


# ----------------------------------------------------------------------------- extraction


def test_extract_code_prefers_the_block_defining_the_function() -> None:
    completion = (
        "Here is a helper:\n```python\ndef helper():\n    return 1\n```\n"
        "And the solution:\n```python\ndef solve(x):\n    return x\n```\n"
        "Example usage:\n```\n>>> solve(3)\n3\n```\n"
    )
    assert extract_code(completion, "solve") == "def solve(x):\n    return x\n"
    assert extract_code(completion) == "def solve(x):\n    return x\n"  # last python block


def test_extract_code_without_fences_or_with_unclosed_fence() -> None:
    assert extract_code("def f():\n    return 1\n") == "def f():\n    return 1"
    assert extract_code("Sure:\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"


def test_truncate_at_stops() -> None:
    text = "    return 1\n\ndef other():\n    pass\n#tail"
    assert truncate_at_stops(text, ("\ndef ", "\n#")) == "    return 1\n"
    assert truncate_at_stops("no stop", ("\ndef ",)) == "no stop"


# ----------------------------------------------------------------------------- HumanEval


def test_all_humaneval_canonical_solutions_pass(humaneval: HumanEval) -> None:
    problems = humaneval.load()
    assert len(problems) == 164
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(lambda p: humaneval.grade(p, p.reference, chat=False), problems))
    failed = [(p.id, r.detail) for p, r in zip(problems, results, strict=True) if not r.correct]
    assert failed == []


def test_humaneval_chat_answers_in_each_shape(humaneval: HumanEval) -> None:
    """Whole function in a fence, body only in a fence, and with prose and imports around it."""
    problems = humaneval.load(limit=12)
    shapes = [
        lambda p: f"Sure!\n```python\n{p.question}{p.reference}```\nThis works because...",
        lambda p: f"```python\n{p.reference}```",
        lambda p: f"```py\nimport math\n\n{p.question}{p.reference}\n\nprint('demo')\n```",
    ]
    for shape in shapes:
        for problem in problems:
            result = humaneval.grade(problem, shape(problem), chat=True)
            assert result.correct, (problem.id, result.detail)


def test_base_model_continuation_is_cut_at_stop_sequences(
    humaneval: HumanEval, first: Problem
) -> None:
    junk = "\n\ndef unrelated(:\n    broken syntax\n\nif True print('x')\n"
    result = humaneval.grade(first, first.reference + junk, chat=False)
    assert result.correct, result.detail
    assert result.extracted is not None
    assert result.extracted.startswith(first.question + first.reference)
    assert "unrelated" not in result.extracted


def test_wrong_humaneval_solution_fails(humaneval: HumanEval, first: Problem) -> None:
    result = humaneval.grade(first, "    return False\n", chat=False)
    assert not result.correct
    assert "AssertionError" in result.detail
    assert not humaneval.grade(first, "I cannot solve this.", chat=True).correct


def test_infinite_loop_times_out(first: Problem) -> None:
    task = get_task("humaneval")
    assert isinstance(task, HumanEval)
    task.timeout_s = 1.0
    result = task.grade(first, "    while True:\n        pass\n", chat=False)
    assert not result.correct and "timed out" in result.detail


def test_destructive_solution_fails_without_effect(
    humaneval: HumanEval, first: Problem, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    body = (
        "    import os, shutil\n"
        f"    os.system('touch {marker}')\n"
        f"    shutil.rmtree('{tmp_path}')\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)"
        " for b in numbers[i + 1:])\n"
    )
    result = humaneval.grade(first, body, chat=False)
    assert not result.correct and "NoneType" in result.detail
    assert not marker.exists()
    assert keep.read_text() == "precious"
    assert callable(os.system)


# ----------------------------------------------------------------------------- MBPP


def test_mbpp_canonical_solutions_pass_for_a_sample() -> None:
    task = get_task("mbpp")
    # Every 12th test problem, plus 367 whose setup code uses the solution's class.
    # (Task 123's reference takes ~5 s on its own and is left out to keep this test short.)
    sample = [p for p in task.load() if int(p.id.split("/")[1]) % 12 == 0 or p.id == "mbpp/367"]
    assert len(sample) >= 40
    completions = [f"Here you go:\n```python\n{p.reference}\n```\nDone." for p in sample]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(task.grade, sample, completions))
    failed = [(p.id, r.detail) for p, r in zip(sample, results, strict=True) if not r.correct]
    assert failed == []


def test_mbpp_base_model_continuation_ends_at_fence() -> None:
    task = get_task("mbpp")
    problem = task.load(limit=1)[0]
    assert task.grade(problem, problem.reference + "\n```\nExplanation: def (", chat=False).correct


def test_mbpp_wrong_solution_fails() -> None:
    task = get_task("mbpp")
    problem = task.load(limit=1)[0]  # remove_Occ: drop first and last occurrence of a char
    wrong = "```python\ndef remove_Occ(s, ch):\n    return s[1:-1]\n```"
    result = task.grade(problem, wrong)
    assert not result.correct and "AssertionError" in result.detail


def test_mbpp_runs_every_listed_test(tmp_path: Path) -> None:
    """A solution passing only the example shown in the prompt still fails."""
    path = tmp_path / "mbpp.jsonl"
    record = {
        "task_id": 11,
        "text": "Write a function to double a number.",
        "code": "def double(x):\n    return 2 * x",
        "test_list": ["assert double(1) == 2", "assert double(5) == 10"],
        "test_setup_code": "",
        "challenge_test_list": [],
    }
    path.write_text(json.dumps(record) + "\n")
    task = get_task("mbpp", data_path=path)
    problem = task.load()[0]
    assert task.grade(problem, "```python\ndef double(x):\n    return 2 * x\n```").correct
    assert not task.grade(problem, "```python\ndef double(x):\n    return 2\n```").correct


def test_shipped_mbpp_matches_its_source() -> None:
    with (DATA_DIR / "mbpp.jsonl").open() as handle:
        records = {r["task_id"]: r for r in map(json.loads, handle)}
    problem = get_task("mbpp").load()[0]
    assert problem.data["tests"] == records[11]["test_list"]
