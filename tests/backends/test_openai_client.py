"""OpenAIBackend without a server: an unreachable address fails at once with the fix, never
hangs. (Everything else is tested against real servers, vLLM's and this project's, in
tests/remote/.)"""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("httpx")

from power_sampling.backends.models import resolve_model
from power_sampling.backends.openai import OpenAIBackend


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then released: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_server_is_an_error_naming_the_fix() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"cannot reach .*/v1/models.*is the server running"):
        OpenAIBackend(url, max_retries=1, timeout=5)
    assert time.monotonic() - start < 10


def test_in_process_options_are_refused_for_a_served_model() -> None:
    with pytest.raises(ValueError, match="device does not apply to a model served at"):
        resolve_model("m", base_url="http://127.0.0.1:1/v1", device="cuda")
    with pytest.raises(TypeError, match="served model's name"):
        resolve_model(object(), base_url="http://127.0.0.1:1/v1")
