"""`power-sampling bench --backend vllm` end to end: a real vLLM engine on the embedded model,
every method measured, the report written as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from power_sampling.cli import main

FAST = [
    "--prompts", "1", "--no-options", "--block-size", "4", "--rollout-length", "4",
    "--num-candidates", "4", "--top-k", "2", "--num-rollouts", "2", "--max-new-tokens", "6",
    "--mcmc-steps", "1", "-q",
]  # fmt: skip


def test_bench_runs_every_method_on_a_vllm_engine(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--backend", "vllm", *FAST, "--json-out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "SmolLM2-135M-Instruct"
    assert set(report["methods"]) == {"standard", "power", "mcmc", "smc"}
    for result in report["methods"].values():
        assert result["wall_time_per_prompt"] > 0 and result["forward_tokens"] > 0
    assert "efficiency" not in report  # the model.generate replay is for transformers only


def test_device_does_not_apply_to_vllm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--backend", "vllm", "--device", "cuda:1", *FAST]) == 2
    assert "CUDA_VISIBLE_DEVICES" in capsys.readouterr().err
