"""Run model-written Python in a child process, never in the evaluating process.

Why a fresh interpreter per program (``subprocess`` + ``python -I``) instead of ``multiprocessing``:
forking an evaluator that has loaded torch or runs grader threads can deadlock, while a spawned
interpreter starts clean in ~50 ms. The child

1. runs in its own session (process group), so a timeout kills it *and* anything it started;
2. starts in an empty temporary working directory, with a minimal environment (no secrets);
3. sets resource limits on itself before running the program: address space (memory), CPU time,
   size of files it writes, no core dumps;
4. disables functions that delete or move files, start processes or kill processes
   (``os.system``, ``os.remove``, ``shutil.rmtree``, ``subprocess.Popen``, ...), so a careless
   program cannot damage the machine by accident;
5. runs the program with ``__name__ != "__main__"`` (a ``main`` block that reads stdin is skipped)
   and reports success only if the program runs to its end: calling ``exit()`` is a failure.

This guards against accidents, not against a determined attacker: it is not a security sandbox.
Run untrusted code from the internet inside a container or VM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ExecutionStatus = Literal["passed", "failed", "timeout"]

# Executed by the child with `python -I -c`. argv: memory bytes, CPU seconds, file-size bytes, path.
# Exit codes: 0 the program ran to its end; 1 it raised; 3 it tried to exit early.
_CHILD = r"""
import builtins, os, resource, shutil, subprocess, sys

def _limit(which, value):
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))

_mem, _cpu, _fsize, _path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
_limit(resource.RLIMIT_AS, _mem)
_limit(resource.RLIMIT_CPU, _cpu)
_limit(resource.RLIMIT_FSIZE, _fsize)
_limit(resource.RLIMIT_CORE, 0)
with open(_path, encoding="utf-8") as _f:
    _code = compile(_f.read(), "program.py", "exec")
_exit = os._exit

for _name in ("system", "popen", "kill", "killpg", "fork", "forkpty", "remove", "unlink", "rmdir",
              "removedirs", "rename", "renames", "replace", "truncate", "chmod", "fchmod", "chown",
              "fchown", "lchown", "chroot", "chdir", "fchdir", "setuid",
              "setgid", "setsid", "_exit", "execv", "execve", "execl", "execle", "execlp",
              "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle",
              "posix_spawn", "posix_spawnp"):
    if hasattr(os, _name):
        setattr(os, _name, None)
for _name in ("rmtree", "move", "chown"):
    setattr(shutil, _name, None)
subprocess.Popen = None
builtins.exit = None
builtins.quit = None
for _name in ("resource", "psutil", "ctypes", "multiprocessing"):
    sys.modules[_name] = None

try:
    exec(_code, {"__name__": "__program__", "__builtins__": builtins})
except SystemExit:
    sys.stderr.write("program called exit() before finishing\n")
    sys.stderr.flush()
    _exit(3)
"""

_DETAIL_CHARS = 2000


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program run.

    ``passed`` is true only when the program ran to its end without raising. ``detail`` holds
    the tail of the program's stderr (the traceback of a failed assert) or the timeout message.
    """

    status: ExecutionStatus
    detail: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
) -> ExecutionResult:
    """Run ``program`` (Python source) in a child interpreter and report whether it finished.

    Thread-safe: graders call it from a thread pool to run many programs in parallel.

    Args:
        program: the full source to run, tests included (a failing ``assert`` fails the run).
        timeout_s: wall-clock limit; on expiry the child's whole process group is killed.
        memory_mb: address-space limit of the child (``RLIMIT_AS``).
        max_file_mb: largest file the child may write (``RLIMIT_FSIZE``), its stderr included.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    if memory_mb < 64:
        raise ValueError(
            f"memory_mb must be at least 64 (an interpreter needs ~30 MB), got {memory_mb}"
        )
    with tempfile.TemporaryDirectory(
        prefix="power_sampling_exec_", ignore_cleanup_errors=True
    ) as workdir:
        work = Path(workdir)
        (work / "program.py").write_text(program, encoding="utf-8")
        scratch = work / "cwd"  # the program's working directory, empty at the start
        scratch.mkdir()
        cpu_s = int(timeout_s) + 2
        command = [
            sys.executable,
            "-I",
            "-c",
            _CHILD,
            str(memory_mb * 1024 * 1024),
            str(cpu_s),
            str(max_file_mb * 1024 * 1024),
            str(work / "program.py"),
        ]
        env = {"PATH": os.defpath, "HOME": str(scratch), "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
        env["OMP_NUM_THREADS"] = "1"
        start = time.perf_counter()
        with (work / "stderr.txt").open("wb") as stderr:
            proc = subprocess.Popen(
                command,
                cwd=scratch,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
            exited = False
            try:
                exited = _wait_without_reaping(proc.pid, timeout_s)
            finally:
                # Kill the whole group, the program's leftover children included (also when the
                # wait is interrupted). The child is not reaped yet, so its pid, which is the
                # group id, cannot have been reused by another process.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                returncode = proc.wait()
        duration = time.perf_counter() - start
        if not exited:
            return ExecutionResult("timeout", f"timed out after {timeout_s:g} s", duration)
        if returncode == 0:
            return ExecutionResult("passed", "", duration)
        tail = _read_tail(work / "stderr.txt")
        if returncode < 0:
            tail = f"killed by signal {-returncode} ({_signal_name(-returncode)})\n{tail}"
        return ExecutionResult("failed", tail.strip(), duration)


def _wait_without_reaping(pid: int, timeout_s: float) -> bool:
    """Wait until the child exits or ``timeout_s`` passes; leave it unreaped (a zombie).

    Returns whether it exited. Polls with a growing sleep, as ``Popen.wait(timeout)`` does.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.0005
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _read_tail(path: Path) -> str:
    """Last part of the child's stderr: enough for the failing assert's traceback."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-_DETAIL_CHARS:].decode("utf-8", errors="replace")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"
