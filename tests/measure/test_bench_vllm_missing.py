"""`power-sampling bench --backend vllm` where vLLM is not installed: one clear line, exit 1."""

from __future__ import annotations

import importlib.util

import pytest

from power_sampling.cli import main


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_bench_on_vllm_without_vllm_says_how_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--backend", "vllm", "--prompts", "1"]) == 1
    err = capsys.readouterr().err
    assert "pip install 'power-sampling[vllm]'" in err and "Traceback" not in err
