"""``serve --replicas``: requests spread over Ray actors give the answers one process gives, and
closing leaves no process behind. A local Ray cluster (2 CPUs) and 2 replicas of the tiny model
saved as a folder (loaded the way ``--model PATH`` loads it)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")
psutil = pytest.importorskip("psutil")

from power_sampling import PowerSamplingConfig  # noqa: E402
from power_sampling.engine.registry import load_shared  # noqa: E402
from power_sampling.serving import BackgroundServer, LocalEngine, create_app  # noqa: E402
from power_sampling.serving.replicas import RayEngine  # noqa: E402

CONFIG = PowerSamplingConfig(
    block_size=4, num_candidates=4, top_k=2, num_rollouts=2, rollout_length=4, max_new_tokens=8
)
PROMPTS = [f"Question {i}: what is {i} + {i}?" for i in range(6)]


def answers(url: str) -> list[tuple[str, str]]:
    """Each prompt with seed = its index: chat and text completions (2 choices: seed derived)."""
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    out = []
    for seed, prompt in enumerate(PROMPTS):
        messages = [{"role": "user", "content": prompt}]
        chat = c.chat.completions.create(model="tiny", messages=messages, seed=seed, n=2)
        text = c.completions.create(model="tiny", prompt=prompt, seed=seed)
        out.append((chat.choices[0].message.content or "", chat.choices[1].message.content or ""))
        out.append((text.choices[0].text, ""))
    return out


@pytest.mark.slow  # starting Ray and two model processes took 1-3 minutes on 2 busy cores
def test_two_replicas_answer_as_one_process_and_leave_nothing_behind(
    tiny_model_dir: Path,
) -> None:
    load = functools.partial(load_shared, str(tiny_model_dir), device="cpu")
    local = LocalEngine(load())
    with BackgroundServer(create_app(local, model="tiny", defaults=CONFIG)) as server:
        expected = answers(server.url)

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = RayEngine(load, 2, init_options={"num_cpus": 2})
    try:
        assert len(set(engine.pids)) == 2
        with BackgroundServer(create_app(engine, model="tiny", defaults=CONFIG)) as server:
            got = answers(server.url)
            served = engine.served()
        # the server's shutdown closed the engine: replicas ended, Ray shut down
    finally:
        engine.close()
    assert got == expected
    assert all(n > 0 for n in served) and sum(served) == 2 * len(PROMPTS), served
    assert not ray.is_initialized()
    _gone(engine.pids)
    _gone([p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before])


def test_replicas_need_one_or_more() -> None:
    with pytest.raises(ValueError, match="replicas=0 is invalid"):
        RayEngine(lambda: None, 0)  # type: ignore[arg-type, return-value]


def _gone(pids: list[int], timeout: float = 30.0) -> None:
    """Every process in ``pids`` ends within ``timeout`` (zombies count as ended)."""
    deadline = time.monotonic() + timeout
    alive: list[Any] = []
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and _running(p)]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes left behind: {alive}")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
