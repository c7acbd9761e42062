"""The benchmark at the paper's settings on a 1-8B model. Needs a CUDA GPU and the model's
weights (a hub id where the hub is reachable, or a local path); skipped elsewhere.

    POWER_SAMPLING_GPU_MODEL=Qwen/Qwen2.5-Math-1.5B \\
    POWER_SAMPLING_BENCH_OUT=bench-gpu.json pytest tests/gpu -s

Optional: POWER_SAMPLING_BENCH_TOKENS (default 3072, the paper's cap) and
POWER_SAMPLING_BENCH_PROMPTS (default 4).
"""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_paper_settings_bench() -> None:
    from power_sampling import PowerSampler, PowerSamplingConfig
    from power_sampling.backends import TransformersBackend
    from power_sampling.bench import BENCH_PROMPTS, markdown, run_bench

    model = os.environ.get("POWER_SAMPLING_GPU_MODEL", "Qwen/Qwen2.5-Math-1.5B")
    tokens = int(os.environ.get("POWER_SAMPLING_BENCH_TOKENS", "3072"))
    count = int(os.environ.get("POWER_SAMPLING_BENCH_PROMPTS", "4"))
    backend = TransformersBackend.from_pretrained(model)
    sampler = PowerSampler(backend, PowerSamplingConfig.preset("paper", max_new_tokens=tokens))
    report = run_bench(sampler, BENCH_PROMPTS[:count])
    print(markdown(report))
    if out := os.environ.get("POWER_SAMPLING_BENCH_OUT"):
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
    assert report["speedup_vs_mcmc"] > 1.0
    assert report["efficiency"]["ratio"] > 0.5
