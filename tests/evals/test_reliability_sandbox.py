"""Generated code that tries to pass without running its tests, or to reach outside its sandbox.

Each case is a completion a model (or a user probing the eval) wrote; the grader must not be
fooled and no process of the program may outlive the grading.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from power_sampling.evals import execution
from power_sampling.evals.execution import run_python, sandbox_layers
from power_sampling.evals.tasks import get_task


def _survivors(mark: str) -> list[int]:
    """Processes whose command line holds ``mark``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if mark.encode() in cmdline:
                found.append(int(entry))
    return found


@pytest.fixture
def mark() -> Iterator[str]:
    """A unique sleep length: a process running ``sleep <mark>`` is one the program started."""
    value = f"{900 + secrets.randbelow(10**6) / 10**6:.6f}"
    yield value
    for pid in _survivors(value):  # never leave one behind, even when the test fails
        os.kill(pid, 9)


def _no_survivor(mark: str) -> bool:
    deadline = time.monotonic() + 2.0  # the kernel may take a moment to tear a namespace down
    while _survivors(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _survivors(mark)


def test_completion_that_calls_posix_exit_0_is_wrong_on_humaneval_and_mbpp() -> None:
    cheat = "```python\nimport posix\nposix._exit(0)\n```"
    humaneval = get_task("humaneval")
    assert not humaneval.grade(humaneval.load(limit=1)[0], cheat, chat=True).correct
    mbpp = get_task("mbpp")
    assert not mbpp.grade(mbpp.load(limit=1)[0], cheat, chat=True).correct


@pytest.mark.parametrize(
    "early_exit",
    ["import posix\nposix._exit(0)\n", "import os\nos.abort()\n", "import sys\nsys.exit(0)\n"],
)
def test_program_that_exits_before_its_tests_fails(early_exit: str) -> None:
    result = run_python(early_exit + "assert False, 'the tests'\n")
    assert result.status == "failed", result


def test_program_that_runs_its_tests_to_the_end_passes() -> None:
    assert run_python("import math\nassert math.gcd(12, 18) == 6\n").passed


@pytest.mark.parametrize(
    "attempt",
    [
        "import posix\nposix.system('touch {marker}')\n",
        "import posix\nif posix.fork() == 0:\n"
        "    posix.execv('/bin/sh', ['sh', '-c', 'touch {marker}'])\n"
        "import time\ntime.sleep(0.5)\n",
        "import importlib, os\nimportlib.reload(os)\nos.system('touch {marker}')\n",
        "open('{marker}', 'w').write('x')\n",
    ],
    ids=["posix.system", "fork+execv", "reload(os)", "open-write"],
)
def test_program_cannot_create_a_file_outside_its_scratch(attempt: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = run_python(attempt.format(marker=marker))
    assert not marker.exists(), (attempt, result)


def test_program_cannot_overwrite_a_file_outside_its_scratch(tmp_path: Path) -> None:
    victim = tmp_path / "data.txt"
    victim.write_text("precious")
    result = run_python(f"open({str(victim)!r}, 'w').write('gone')\n")
    assert result.status == "failed"
    assert victim.read_text() == "precious"


def test_program_can_write_files_in_its_scratch() -> None:
    program = "open('out.txt', 'w').write('ok')\nassert open('out.txt').read() == 'ok'\n"
    assert run_python(program).passed


def _detached_sleeper(mark: str) -> str:
    return (
        "import posix\n"
        "if posix.fork() == 0:\n"
        "    posix.setsid()\n"
        "    if posix.fork() == 0:\n"
        f"        posix.execv('/bin/sleep', ['sleep', '{mark}'])\n"
        "    posix._exit(0)\n"
        "import time\n"
        "time.sleep(0.3)\n"
    )


def test_detached_child_of_a_passing_program_does_not_survive(mark: str) -> None:
    result = run_python(_detached_sleeper(mark))
    assert result.passed, result
    assert _no_survivor(mark)


def test_detached_child_of_a_program_that_times_out_does_not_survive(mark: str) -> None:
    result = run_python(_detached_sleeper(mark) + "time.sleep(60)\n", timeout_s=1.5)
    assert result.status == "timeout"
    assert _no_survivor(mark)


def test_detached_child_does_not_survive_without_namespaces(
    mark: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback where ``unshare`` is unavailable: the supervisor as a child subreaper."""
    monkeypatch.setattr(execution, "_plan_cache", [execution._Plan((), False, False)])
    result = run_python(_detached_sleeper(mark) + "time.sleep(60)\n", timeout_s=1.5)
    assert result.status == "timeout"
    assert _no_survivor(mark)


def test_fork_bomb_is_bounded_and_leaves_nothing(mark: str) -> None:
    program = (
        "import posix\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        if posix.fork() == 0:\n"
        f"            posix.execv('/bin/sleep', ['sleep', '{mark}'])\n"
        "    except OSError:\n"
        "        break\n"
        "else:\n"
        "    raise SystemExit('no process limit')\n"
        "assert False, 'bounded'\n"
    )
    result = run_python(program, timeout_s=5)
    assert result.status == "failed" and "bounded" in result.detail, result
    assert _no_survivor(mark)


def test_program_cannot_reach_a_local_server() -> None:
    if "network_namespace" not in sandbox_layers():
        pytest.skip("no network namespace on this machine")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        assert run_python(program).status == "failed"


def test_this_machine_uses_the_namespace_layers() -> None:
    """Where the CI runs (Linux, root, util-linux), every layer holds; a change that loses one
    shows here rather than as a silently weaker sandbox."""
    if os.geteuid() != 0:
        pytest.skip("the root layers (pids cgroup) need root")
    layers = sandbox_layers()
    for layer in ("pid_namespace", "network_namespace", "read_only_mounts", "pids_cgroup"):
        assert layer in layers, layers
