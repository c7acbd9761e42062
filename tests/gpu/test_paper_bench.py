"""The prepared GPU speed run (``tests/gpu/paper_bench.py``) at its defaults: a randomly
initialised Qwen2.5-7B-shaped model in bfloat16, the paper's settings, 768 tokens, batch 1 and 8.
Needs a CUDA GPU (nothing to download); skipped elsewhere. ``pytest tests/gpu -s`` prints the
table; ``POWER_SAMPLING_BENCH_OUT=gpu-bench.json`` also keeps the JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_paper_settings_speed_run(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import paper_bench

    out = os.environ.get("POWER_SAMPLING_BENCH_OUT") or str(tmp_path / "gpu-bench.json")
    assert paper_bench.main(["--json-out", out]) == 0
    report = json.loads(Path(out).read_text())
    measured = {(r["method"], r["prompts"]): r for r in report["rows"] if "wall_s" in r}
    for key in (("standard", 1), ("power", 1), ("power+fast", 1), ("standard", 8), ("power", 8)):
        assert measured[key]["sequential_steps"] == measured[key]["expected_steps"]
    # On a GPU a decode step costs about the same for a few rows as for one.
    assert report["ratios"]["batch 1"]["power / standard: wall_s"] < 4
