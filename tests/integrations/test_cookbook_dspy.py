"""Smoke-run the DSPy cookbook recipes on a tiny in-process model, so none can rot.

``POWER_SAMPLING_COOKBOOK_MODEL=tiny`` makes a recipe use ``tiny_chat_model`` and one question;
its text is gibberish, so these check that the recipe's code runs end to end, not its answers.
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

from power_sampling import PowerSamplingConfig

dspy = pytest.importorskip("dspy")
pytest.importorskip("transformers")

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"


@pytest.fixture(autouse=True)
def isolated_dspy(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Tiny model, an in-memory DSPy cache (nothing under the user's home), settings restored."""
    monkeypatch.setenv("POWER_SAMPLING_COOKBOOK_MODEL", "tiny")
    previous_cache = dspy.__dict__.get("cache")
    previous = {"lm": dspy.settings.lm, "adapter": dspy.settings.adapter}
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    yield
    dspy.configure(**previous)
    if previous_cache is None:
        dspy.__dict__.pop("cache", None)
    else:
        dspy.cache = previous_cache


def test_04_chain_of_thought_compares_power_and_standard(capsys: pytest.CaptureFixture) -> None:
    runpy.run_path(str(COOKBOOK / "04_dspy_chain_of_thought.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "standard:" in out and "power:" in out
    cpu = PowerSamplingConfig.preset("cpu")
    summary = f"@a{cpu.alpha:g}-k{cpu.top_k}-m{cpu.num_rollouts}-"
    assert "power/" in out and summary in out  # the settings are in the model string


def test_05_react_agent_runs(capsys: pytest.CaptureFixture) -> None:
    runpy.run_path(str(COOKBOOK / "05_dspy_react.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "What is 37 * 49 + 12?" in out


def test_05_calculator_tool() -> None:
    recipe = runpy.run_path(str(COOKBOOK / "05_dspy_react.py"))
    assert recipe["calculator"]("37 * 49 + 12") == 1825
    with pytest.raises(ValueError, match="unsupported"):
        recipe["calculator"]("__import__('os')")
