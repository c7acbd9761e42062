"""A soak of the real server on the tiny random model: 200 mixed requests, some of whose
clients go away early, and the server's memory afterwards.

Requests mix methods (standard and power sampling), chat and text completions, streaming and
whole answers; one in four clients disconnects before its answer (a stream read for a moment,
or a whole answer awaited with a short timeout). Everything must be answered or cancelled, the
engine must end idle, and the process's resident memory must come back to within 10% of what it
was after a warm-up of the same mix.
"""

from __future__ import annotations

import concurrent.futures
import gc
import random
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import SMALL, serving, wait_for  # noqa: E402

from power_sampling import PowerSamplingConfig  # noqa: E402

REQUESTS, WARM_UP, WORKERS = 200, 40, 8


def _resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _one(url: str, rng: random.Random) -> str:
    method = rng.choice(["standard", "power"])
    settings = {"method": method, "seed": rng.randrange(1000)}
    chat = rng.random() < 0.6
    body: dict[str, Any] = {"max_tokens": rng.randint(2, 6), "power_sampling": settings}
    if chat:
        body["messages"] = [{"role": "user", "content": f"Count to {rng.randint(1, 9)}."}]
    else:
        body["prompt"] = f"Once upon a time {rng.randint(1, 9)}"
    path = url + ("/v1/chat/completions" if chat else "/v1/completions")
    leave = rng.random() < 0.25
    if rng.random() < 0.5:
        with httpx.stream("POST", path, json={**body, "stream": True}, timeout=60) as response:
            assert response.status_code == 200, response.read()
            for n, _ in enumerate(response.iter_lines()):
                if leave and n >= 1:
                    return "left"
        return "streamed"
    try:
        response = httpx.post(path, json=body, timeout=0.05 if leave else 60)
    except httpx.TimeoutException:
        return "left"
    assert response.status_code == 200, response.text
    return "answered"


def _run(url: str, count: int, seed: int) -> list[str]:
    rngs = [random.Random(seed * 10_000 + i) for i in range(count)]
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda rng: _one(url, rng), rngs))


def test_two_hundred_mixed_requests_with_disconnects(tiny_backend: Any) -> None:
    config = PowerSamplingConfig(**SMALL, max_new_tokens=10)
    with serving(tiny_backend, defaults=config, max_queue=64) as (http, engine, _):
        _run(http.url, WARM_UP, seed=1)
        wait_for(lambda: engine.active == 0, what="the warm-up to finish")
        gc.collect()
        before = _resident_bytes()
        outcomes = _run(http.url, REQUESTS, seed=2)
        wait_for(lambda: engine.active == 0, timeout=60, what="every request to end")
        gc.collect()
        after = _resident_bytes()
    assert len(outcomes) == REQUESTS
    assert outcomes.count("left") >= REQUESTS // 10  # the disconnects really happened
    assert after <= 1.10 * before, f"resident memory grew from {before} to {after} bytes"
