"""``power-sampling serve`` as a user runs it: a process serving a model folder, answered over
HTTP, stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from power_sampling import PowerSamplingConfig  # noqa: E402
from power_sampling.cli import main  # noqa: E402
from power_sampling.serving import free_port  # noqa: E402

CLI = [sys.executable, "-m", "power_sampling.cli", "serve"]


def test_bad_settings_fail_before_loading_the_model() -> None:
    result = subprocess.run(
        [*CLI, "--alpha", "-1", "--model", "/no/such/model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "alpha=-1.0 is invalid" in result.stderr


def test_serve_answers_and_stops_on_ctrl_c(tiny_model_dir: Path) -> None:
    port = free_port()
    argv = [*CLI, "--model", str(tiny_model_dir), "--port", str(port), "--preset", "cpu"]
    server = subprocess.Popen(
        [*argv, "--max-new-tokens", "6", "--served-model-name", "tiny"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[1]
            try:
                models = httpx.get(url + "/models", timeout=5).json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not start in 120 s"
                time.sleep(0.2)
        assert [m["id"] for m in models["data"]] == ["tiny"]
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "seed": 0}
        response = httpx.post(url + "/chat/completions", json=body, timeout=120).json()
        assert response["usage"]["completion_tokens"] <= 6
        cpu = PowerSamplingConfig.preset("cpu")
        assert response["power_sampling"]["budget"]["num_rollouts"] == cpu.num_rollouts
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert f"Serving tiny at http://127.0.0.1:{port}/v1" in err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_serve_on_vllm_without_vllm_says_how_to_install(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--backend", "vllm", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert "pip install 'power-sampling[vllm]'" in err and "Traceback" not in err
    assert main(["serve", "--backend", "vllm", "--device", "cuda"]) == 2
    assert "does not apply to --backend vllm" in capsys.readouterr().err
