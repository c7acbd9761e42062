"""Math answers compared in worker processes, with a time bound per answer from any thread.

math-verify's own timeouts use signals, which only work in the main thread, and a pathological
answer (``10^{10^{10}}``) keeps sympy busy for ever. So comparisons run in long-lived worker
interpreters (one per grading thread at most, started on demand, each importing sympy once) that
talk JSON lines over pipes; a comparison that outlives its bound kills its worker, and the
answer is graded wrong with a reason. Plain decimal numbers (most of GSM8K) are compared here
without a worker.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import subprocess
import sys
import threading
import time
from decimal import Decimal, InvalidOperation

from .math_compare import math_equal

GRADE_TIMEOUT_S = 10.0
"""Default bound on comparing one answer with its reference."""
_START_TIMEOUT_S = 120.0
"""Bound on a worker's start (importing sympy on a loaded machine), not counted per answer."""
_PLAIN = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


class GradeTimeout(Exception):
    """Comparing an answer with its reference took longer than its bound."""


class _Worker:
    def __init__(self) -> None:
        code = "from power_sampling.evals.math_worker import serve; serve()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        if self._line(_START_TIMEOUT_S) != "ready":
            self.close()
            raise RuntimeError("the math grading worker did not start")

    def ask(self, gold: str, prediction: str, timeout_s: float) -> bool:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([gold, prediction]) + "\n")
        self.proc.stdin.flush()
        line = self._line(timeout_s)
        if line is None:
            raise GradeTimeout(f"comparing the answer took over {timeout_s:g} s")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"math grading failed: {reply['error']}")
        return bool(reply["equal"])

    def _line(self, timeout_s: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


_idle: list[_Worker] = []
_lock = threading.Lock()


def math_equal_bounded(gold: str, prediction: str, timeout_s: float = GRADE_TIMEOUT_S) -> bool:
    """Whether ``prediction`` equals ``gold``, decided within ``timeout_s`` seconds.

    Raises :class:`GradeTimeout` when the comparison takes longer (its worker is killed).
    Thread-safe: concurrent calls use different workers.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s} is invalid: use a number of seconds > 0")
    plain = _plain_equal(gold, prediction)
    if plain is not None:
        return plain
    with _lock:
        worker = _idle.pop() if _idle else None
    if worker is None or worker.proc.poll() is not None:
        worker = _Worker()
    try:
        result = worker.ask(gold, prediction, timeout_s)
    except BaseException:
        worker.close()  # busy or broken: never reused
        raise
    with _lock:
        _idle.append(worker)
    return result


def _plain_equal(gold: str, prediction: str) -> bool | None:
    """Equality of two plain decimal numbers, or None when either is something else."""
    a, b = gold.strip(), prediction.strip()
    if not (_PLAIN.fullmatch(a) and _PLAIN.fullmatch(b)):
        return None
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return None


def serve() -> None:
    """The worker's loop: ``[gold, prediction]`` lines in, ``{"equal": bool}`` lines out."""
    with contextlib.suppress(ImportError):
        import math_verify  # noqa: F401  (imported before "ready": not counted per answer)
    print("ready", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        try:
            gold, prediction = json.loads(line)
            reply: dict[str, object] = {"equal": math_equal(gold, prediction)}
        except Exception as error:  # reported to the caller, the worker goes on
            reply = {"error": repr(error)}
        reply["seconds"] = time.perf_counter() - start
        print(json.dumps(reply), flush=True)
