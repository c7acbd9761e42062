"""The child-process executor: results, time and memory limits, and isolation from the evaluator."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from power_sampling.evals.execution import run_python


def test_passing_and_failing_programs() -> None:
    assert run_python("x = 2 + 2\nassert x == 4\n").passed
    failed = run_python("assert 2 + 2 == 5, 'arithmetic is broken'\n")
    assert failed.status == "failed"
    assert "AssertionError: arithmetic is broken" in failed.detail
    assert run_python("def f(:\n").status == "failed"


def test_infinite_loop_times_out_quickly() -> None:
    start = time.perf_counter()
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and not result.passed
    assert time.perf_counter() - start < 5


def test_sleeping_program_times_out() -> None:
    result = run_python("import time\ntime.sleep(60)\n", timeout_s=0.5)
    assert result.status == "timeout"


def test_memory_limit_stops_a_huge_allocation() -> None:
    result = run_python("block = bytearray(2 * 1024**3)\n", memory_mb=256)
    assert result.status == "failed" and "MemoryError" in result.detail


def test_exit_before_the_tests_is_a_failure() -> None:
    for early_exit in ("import sys\nsys.exit(0)\n", "raise SystemExit\n", "exit()\n"):
        result = run_python(early_exit + "assert False\n")
        assert result.status == "failed", early_exit


def test_main_block_does_not_run() -> None:
    """A solution's demo block (often reading stdin) must not run or block the tests."""
    assert run_python("if __name__ == '__main__':\n    input()\n    assert False\n").passed


def test_program_runs_in_an_empty_scratch_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = run_python("import os\nassert os.listdir('.') == [], os.listdir('.')\n")
    assert result.passed, result.detail
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_shell_command_cannot_create_a_marker(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for call in (
        f"import os\nos.system('touch {marker}')\n",
        f"import subprocess\nsubprocess.run(['touch', '{marker}'])\n",
        f"import os\nos.popen('touch {marker}')\n",
    ):
        result = run_python(call)
        assert not result.passed, call
    assert not marker.exists()


def test_files_outside_cannot_be_deleted(tmp_path: Path) -> None:
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "data.txt"
    victim.write_text("precious")
    for call in (
        f"import os\nos.remove('{victim}')\n",
        f"import os\nos.unlink('{victim}')\n",
        f"import shutil\nshutil.rmtree('{victim_dir}')\n",
        f"import os\nos.rename('{victim}', '{victim}.moved')\n",
    ):
        assert not run_python(call).passed, call
    assert victim.read_text() == "precious"


def test_child_cannot_kill_the_evaluator() -> None:
    result = run_python(f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n")
    assert not result.passed  # and this test process is still alive to check it


def test_evaluator_is_untouched_by_the_guard() -> None:
    """The guard disables functions in the child only; the evaluating process keeps them."""
    cwd = os.getcwd()
    run_python("import os\nos.chdir('/')\n")
    assert os.getcwd() == cwd
    assert callable(os.system) and callable(os.remove)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"timeout_s": 0}, "timeout_s"), ({"memory_mb": 8}, "memory_mb")]
)
def test_bad_limits_are_rejected(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run_python("pass", **kwargs)
