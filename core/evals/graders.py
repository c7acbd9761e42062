"""Answer extraction and grading for math, multiple-choice and code completions.

Each grader returns a :class:`GradeResult` holding the answer it extracted (so a wrong grade can be
inspected) and whether it is correct.

* Math (MATH-500, GSM8K): the last ``\\boxed{...}`` is the answer; GSM8K falls back to ``#### N``,
  "the answer is N" and finally the last number, since its references are plain numbers. Answers
  are compared with ``math-verify`` (:mod:`.math_compare`), gold first, in worker processes
  with a time bound per answer (:mod:`.math_worker`; math-verify's signal-based timeouts only
  work in the main thread).
* Multiple choice (GPQA): the letter in the last ``\\boxed{}``, else the last "answer is (X)".
* Code (HumanEval, MBPP): the code is pulled out of a fenced block (chat models) or cut at the
  usual stop sequences (base models continuing the prompt), assembled with the benchmark's tests,
  and run in a child process by :func:`power_sampling.evals.execution.run_python`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .execution import run_python
from .math_worker import GRADE_TIMEOUT_S, GradeTimeout, math_equal_bounded

# Where a base model continuing a HumanEval prompt has finished the function body.
HUMANEVAL_STOPS = ("\nclass ", "\ndef ", "\n#", "\nif ", "\nprint(", "\nassert ", "\n```")


@dataclass(frozen=True)
class GradeResult:
    """Outcome of grading one completion.

    ``extracted`` is the answer (number, LaTeX, letter) or program the grader took from the
    completion, or None when it found none; ``detail`` says why a completion failed.
    """

    correct: bool
    extracted: str | None
    detail: str = ""


# ----------------------------------------------------------------------------- math


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched.

    An unclosed or empty box (e.g. a generation cut off mid-answer) is skipped in favour of the
    one before it.
    """
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
    return None


def grade_math(completion: str, gold: str, *, timeout_s: float = GRADE_TIMEOUT_S) -> GradeResult:
    """MATH-500: the last ``\\boxed{}`` must equal the reference answer (decided within
    ``timeout_s``: a comparison that takes longer is graded wrong, with the reason)."""
    answer = last_boxed(completion)
    if answer is None:
        return GradeResult(False, None, "no \\boxed{} answer in the completion")
    return _compare(gold, answer, timeout_s)


def _compare(gold: str, answer: str, timeout_s: float) -> GradeResult:
    try:
        return GradeResult(math_equal_bounded(gold, answer, timeout_s), answer)
    except GradeTimeout as error:
        return GradeResult(False, answer, f"grading timed out: {error}")


_NUMBER = re.compile(r"(?<![\w.])(-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+))")


def extract_gsm8k_answer(text: str) -> str | None:
    """The final answer of a GSM8K completion, as a plain number string where possible.

    Tried in order: the last ``\\boxed{}``, the last ``#### N`` line, the last "answer is N", the
    last number in the text. Thousands separators are dropped ("1,234" -> "1234").
    """
    text = _normalize_number_text(text)
    boxed = last_boxed(text)
    if boxed is not None:
        return _boxed_number(boxed)
    for pattern in (r"####\s*([^\n]*)", r"answer\s+is\s*:?\s*([^\n]*)"):
        for tail in reversed(re.findall(pattern, text, flags=re.IGNORECASE)):
            number = _NUMBER.search(tail)
            if number:
                return number.group(1).replace(",", "")
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def grade_gsm8k(completion: str, gold: str, *, timeout_s: float = GRADE_TIMEOUT_S) -> GradeResult:
    """GSM8K: the extracted number must equal the reference number (within ``timeout_s``)."""
    answer = extract_gsm8k_answer(completion)
    if answer is None:
        return GradeResult(False, None, "no number in the completion")
    return _compare(gold, answer, timeout_s)


def _boxed_number(content: str) -> str:
    """``\\$1,234 \\text{ dollars}`` -> ``1234``; non-numeric content (``\\frac{3}{2}``) kept."""
    plain = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}", " ", content)
    plain = re.sub(r"\\?[$%]|\\,|\\!|\\ ", " ", plain)
    numbers = _NUMBER.findall(plain)
    if len(numbers) == 1 and not re.search(r"[\\^{}/*+=]", plain):
        return numbers[0].replace(",", "")
    return content


def _normalize_number_text(text: str) -> str:
    return text.replace("\u2212", "-").replace("{,}", ",")


# ----------------------------------------------------------------------------- multiple choice


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The chosen letter: the last ``\\boxed{X}``, else the last "answer is (X)" / "Answer: X".

    Only a standalone capital letter counts, so words ("Because", "ATP") and the letters of
    options discussed along the way do not.
    """
    allowed = re.escape(letters)
    boxed = last_boxed(text)
    if boxed is not None:
        inner = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", boxed)
        match = re.fullmatch(rf"\s*\(?\s*([{allowed}])\s*(?:[).:]\s*.*)?", inner, flags=re.S)
        if match:
            return match.group(1)
    answer = re.compile(
        rf"answer\s*(?:is|:)?\s*(?:option\s*|choice\s*)?[:\s]*[(\[*]*\s*([{allowed}])(?![\w])",
        flags=re.IGNORECASE,
    )
    found = [m.group(1) for m in answer.finditer(text) if m.group(1) in letters]
    if found:
        return found[-1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines:
        match = re.fullmatch(rf"[(\[*]*([{allowed}])[)\].*]*", lines[-1])
        if match:
            return match.group(1)
    return None


def grade_choice(completion: str, gold_letter: str, letters: str = "ABCD") -> GradeResult:
    """Multiple choice: the extracted letter must be the correct one."""
    letter = extract_choice(completion, letters)
    if letter is None:
        return GradeResult(False, None, "no answer letter in the completion")
    return GradeResult(letter == gold_letter, letter)


# ----------------------------------------------------------------------------- code

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_TAGS = {"python", "python3", "py"}


def extract_code(completion: str, function_name: str | None = None) -> str:
    """Python code of a chat model's answer.

    Takes the last fenced block that defines ``function_name`` (when given), else the last block
    tagged as Python, else the last untagged block, else the last block; without fences the whole
    completion is taken as code. An unclosed final fence (a generation cut off) counts as a block.
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(completion)]
    if not blocks:
        return completion.strip("\n")
    if function_name is not None:
        defining = [body for _, body in blocks if _defines(body, function_name)]
        if defining:
            return defining[-1]
    tagged = [body for tag, body in blocks if tag in _PYTHON_TAGS]
    untagged = [body for tag, body in blocks if not tag]
    return (tagged or untagged or [body for _, body in blocks])[-1]


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of ``stops`` (where a base model's answer has ended)."""
    cut = len(text)
    for stop in stops:
        index = text.find(stop)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


def humaneval_solution(prompt: str, completion: str, entry_point: str, *, chat: bool) -> str:
    """The solution code of a HumanEval completion, ready to be followed by the tests.

    A base model continues ``prompt``, so its completion, cut at :data:`HUMANEVAL_STOPS`, is
    appended to it. A chat model usually restates the whole function: the prompt still goes
    first, for its imports and helper functions, and the model's definition then replaces the
    prompt's docstring-only function. A chat answer holding only the body is appended as is.
    """
    if not chat:
        return prompt + truncate_at_stops(completion, HUMANEVAL_STOPS)
    code = extract_code(completion, entry_point)
    return prompt + "\n" + code if _defines(code, entry_point) else prompt + code


def humaneval_tests(test: str, entry_point: str) -> str:
    """HumanEval's test code defines ``check(candidate)``; calling it runs the asserts."""
    return f"{test}\n\ncheck({entry_point})\n"


def mbpp_solution(completion: str, function_name: str | None = None, *, chat: bool) -> str:
    """The solution code of an MBPP completion.

    A base model continues a prompt that opened a ```python fence, so its code ends at ```.
    """
    if chat:
        return extract_code(completion, function_name)
    return truncate_at_stops(completion, ("```",))


def mbpp_tests(asserts: Sequence[str], setup: str = "") -> str:
    """MBPP's setup code, then its ``assert`` lines.

    The setup runs after the solution because it may use the solution's classes (task 367
    builds trees of the ``Node`` class the solution defines).
    """
    return f"{setup}\n" + "\n".join(asserts) + "\n"


def grade_code(
    solution: str, tests: str, *, timeout_s: float = 10.0, memory_mb: int = 1024
) -> GradeResult:
    """Run ``solution`` followed by ``tests`` in a child process; correct if all tests pass.

    The code never runs in this process (see :mod:`power_sampling.evals.execution`).
    """
    result = run_python(f"{solution}\n\n{tests}", timeout_s=timeout_s, memory_mb=memory_mb)
    return GradeResult(result.passed, solution, result.detail)


def _defines(code: str, function_name: str) -> bool:
    return re.search(rf"^def\s+{re.escape(function_name)}\s*\(", code, flags=re.M) is not None
