"""Real OpenAI-compatible servers for the tests of ``OpenAIBackend`` and the adapters over HTTP.

Every test runs against two targets, each a real server on 127.0.0.1 at a free port, started
once per session and stopped at its end:

* ``vllm``: vLLM's OpenAI server, run from the vLLM venv (``.venv-vllm``, built by
  ``make test-vllm``; another interpreter with vLLM can be named by
  ``POWER_SAMPLING_VLLM_PYTHON``), waited for on ``/health`` within a bounded time and stopped
  with its process group. These are marked ``vllm_server`` and run by ``make test-vllm-server``
  (in CI), which sets ``POWER_SAMPLING_REQUIRE_VLLM_SERVER=1`` so that a missing venv fails
  instead of skipping.
* ``power-sampling``: this project's own server (``power_sampling.serving``) with plain
  decoding as its method, whose model API speaks vLLM's completions fields
  (:mod:`power_sampling.serving.model_api`); it runs in this process, in ``make test``.

Two models per target: the embedded SmolLM2 in float32 with vLLM's default
``--logprobs-mode raw_logprobs`` (what most deployments run), and a five-token table model
(token ids only) with ``processed_logprobs``, for the distributions against exact enumeration.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 600.0  # seconds: vLLM's CPU build starts in one to two minutes on 2 cores


def vllm_python() -> Path:
    chosen = os.environ.get("POWER_SAMPLING_VLLM_PYTHON")
    return Path(chosen) if chosen else ROOT / ".venv-vllm" / "bin" / "python"


def _require_vllm() -> Path:
    python = vllm_python()
    if python.exists():
        return python
    reason = (
        f"needs vLLM's OpenAI server: no interpreter at {python} (build it with `make test-vllm`, "
        "or set POWER_SAMPLING_VLLM_PYTHON)"
    )
    if os.environ.get("POWER_SAMPLING_REQUIRE_VLLM_SERVER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: str | Path, *args: str) -> Iterator[str]:
    """Run ``vllm.entrypoints.openai.api_server`` on ``model``; yields its ``/v1`` URL."""
    python = _require_vllm()
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--seed", "0", *args,
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            yield _wait(process, port, log, model)
        finally:
            _stop(process)


def _wait(process: subprocess.Popen[Any], port: int, log: Any, model: str | Path) -> str:
    """The server's URL once ``/health`` answers; a failure shows the end of its log."""
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(port):
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            pytest.fail(f"the vLLM server on {model} did not start:\n{tail}")
        time.sleep(1.0)
    return f"http://127.0.0.1:{port}/v1"


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen[Any]) -> None:
    """The server and its engine process, by their process group."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


TARGETS = [pytest.param("vllm", marks=pytest.mark.vllm_server), "power-sampling"]


@contextmanager
def own_server(backend: Any, model: str, mode: str, root: str | None = None) -> Iterator[str]:
    """This project's server over ``backend``, plain decoding by default; yields its URL."""
    from power_sampling import PowerSamplingConfig
    from power_sampling.serving import BackgroundServer, LocalEngine, create_app

    defaults = PowerSamplingConfig(method="standard", max_new_tokens=16)
    app = create_app(
        LocalEngine(backend), model=model, defaults=defaults, logprobs_mode=mode, root=root
    )
    with BackgroundServer(app) as server:
        yield f"{server.url}/v1"


@pytest.fixture(scope="session", params=TARGETS)
def embedded_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The embedded SmolLM2-135M-Instruct served in float32 with a 1024-token context, in
    vLLM's default log-probs mode."""
    pytest.importorskip("transformers")
    from power_sampling.backends.models import default_model_dir

    if request.param == "vllm":
        _require_vllm()
        yield from start_server(default_model_dir(), "--max-model-len", "1024")
        return
    from power_sampling.backends import TransformersBackend
    from power_sampling.backends.models import load_default_pretrained

    backend = TransformersBackend.from_transformers(*load_default_pretrained())
    backend.max_context = 1024
    name, root = "SmolLM2-135M-Instruct", str(default_model_dir())
    with own_server(backend, name, "raw_logprobs", root) as url:
        yield url


@pytest.fixture(scope="session", params=TARGETS)
def table_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    """A five-token table model served with ``processed_logprobs`` (token ids only), and the
    model itself, the reference. vLLM's CPU attention needs head_dim >= 32."""
    pytest.importorskip("transformers")
    from power_sampling.testing import tiny_table_model

    model = tiny_table_model(5, seed=0, head_dim=32)
    if request.param == "vllm":
        _require_vllm()
        folder = tmp_path_factory.mktemp("table")
        model.save_pretrained(folder)
        args = ["--logprobs-mode", "processed_logprobs", "--max-model-len", "16"]
        args += ["--max-logprobs", "8", "--skip-tokenizer-init"]
        for url in start_server(folder, *args):
            yield url, model
        return
    from power_sampling.backends import TransformersBackend

    with own_server(
        TransformersBackend.from_transformers(model), "table", "processed_logprobs"
    ) as url:
        yield url, model
