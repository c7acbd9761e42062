"""Mathematical equality of an answer and its reference with ``math-verify``, unbounded in time.

The graders never call :func:`math_equal` directly: it runs inside the worker processes of
:mod:`.math_worker`, which bound each comparison in time.
"""

from __future__ import annotations

import functools
import re
from typing import Any

# Longer answers are not handed to sympy: with timeouts off, a pathological expression could hang.
MAX_ANSWER_CHARS = 1000


def math_equal(gold: str, prediction: str) -> bool:
    """Whether ``prediction`` is mathematically equal to ``gold`` (both LaTeX or plain text)."""
    if len(prediction) > MAX_ANSWER_CHARS:
        return False
    gold_parsed = _parse_math(gold)
    pred_parsed = _parse_math(prediction)
    if not gold_parsed:  # math-verify cannot read the reference: fall back to text equality
        return _squash(gold) == _squash(prediction)
    if not pred_parsed:
        return False
    from math_verify import verify

    # math-verify reports its own comparison errors as False (raise_on_error defaults to False).
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@functools.lru_cache(maxsize=8192)
def _parse_math(text: str) -> tuple[Any, ...]:
    """math-verify's parse of ``\\boxed{text}``, cached: references are graded many times."""
    try:
        from math_verify import parse
    except ImportError as err:
        raise ImportError(
            'math grading needs math-verify: pip install "power-sampling[eval]"'
        ) from err
    # Unparseable text gives an empty result, not an exception (raise_on_error defaults to False).
    return tuple(parse("\\boxed{" + text + "}", parsing_timeout=None))
