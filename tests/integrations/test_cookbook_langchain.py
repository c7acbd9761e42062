"""Smoke-run the LangChain cookbook recipes on the tiny random model, so none can rot."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pytest.importorskip("langchain")
pytest.importorskip("transformers")

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"
RECIPES = ["01_langchain_chain.py", "02_langchain_agent.py", "03_structured_output.py"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs(
    recipe: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("power_sampling.backends.transformers.backend")
    monkeypatch.setenv("POWER_SAMPLING_COOKBOOK_MODEL", "tiny")
    runpy.run_path(str(COOKBOOK / recipe), run_name="__main__")
    assert capsys.readouterr().out.strip()
