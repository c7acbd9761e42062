"""Continuous batching: every request in flight shares the model calls, and none of them
changes what another one draws.

Identity is checked on the tiny random model in float64, where batched and lone arithmetic agree
to ~1e-15, so any difference would come from the random numbers: a seeded request's tokens must
be the same alone and among 15 concurrent requests with other seeds, methods and lengths.
Batching is shown by counting backend calls, not by timing.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from power_sampling import PowerSamplingConfig
from power_sampling.engine.scheduler import Scheduler
from power_sampling.request import Request

pytest.importorskip("transformers")

SMALL = dict(block_size=4, num_candidates=4, top_k=2, num_rollouts=2, rollout_length=4)
PROMPT = [{"role": "user", "content": "Count to five."}]


@pytest.fixture(scope="module")
def float64_backend() -> Any:
    import torch

    from power_sampling.backends.transformers import TransformersBackend
    from power_sampling.testing import tiny_chat_model

    model, tokenizer = tiny_chat_model(seed=0)
    return TransformersBackend.from_transformers(model.to(torch.float64), tokenizer)


def _request(seed: int, method: str = "power", tokens: int = 12, **extra: Any) -> Request:
    settings = {**SMALL, **extra}
    config = PowerSamplingConfig(**settings, method=method, seed=seed, max_new_tokens=tokens)
    return Request(PROMPT, config)


OTHERS = [
    _request(100 + i, method, tokens)
    for i, (method, tokens) in enumerate(
        [("standard", 20), ("power", 8), ("low_temperature", 16), ("best_of_n", 6)] * 4
    )
][:15]


def test_a_seeded_request_draws_the_same_alone_and_among_fifteen(float64_backend: Any) -> None:
    target = _request(7)
    alone = Scheduler(float64_backend).generate(target)
    scheduler = Scheduler(float64_backend)
    jobs = [scheduler.submit(r) for r in [*OTHERS[:7], target, *OTHERS[7:]]]
    results = [job.future.result(timeout=300) for job in jobs]
    assert results[7].token_ids == alone.token_ids
    assert results[7].text == alone.text
    # the others really ran beside it: fewer backend calls than all of them one at a time
    assert scheduler.batcher.calls < sum(r.stats.backend_calls for r in results)


def test_merged_calls_serve_every_request(float64_backend: Any) -> None:
    scheduler = Scheduler(float64_backend)
    jobs = [scheduler.submit(_request(s, "standard", 10)) for s in range(8)]
    results = [job.future.result(timeout=300) for job in jobs]
    longest = max(r.stats.backend_calls for r in results)
    assert scheduler.batcher.calls <= 2 * longest
    assert all(r.token_ids for r in results)


def test_a_short_request_does_not_wait_for_a_long_one(float64_backend: Any) -> None:
    scheduler = Scheduler(float64_backend)
    long = scheduler.submit(_request(1, "power", 64, block_size=1))
    time.sleep(0.2)
    short = scheduler.submit(_request(2, "standard", 4))
    short.future.result(timeout=300)
    assert not long.future.done(), "the short request finished only after the long one"
    long.future.result(timeout=300)


def test_a_cancelled_request_leaves_at_its_next_call(float64_backend: Any) -> None:
    scheduler = Scheduler(float64_backend)
    job = scheduler.submit(_request(3, "power", 400, block_size=1))
    deadline = time.monotonic() + 60
    while scheduler.batcher.calls < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    job.cancel()
    calls = scheduler.batcher.calls
    while scheduler.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.active == 0
    assert scheduler.batcher.calls - calls <= 1


def test_admission_by_kv_budget(float64_backend: Any) -> None:
    request = _request(4, "standard", 8)
    prompt = len(float64_backend.apply_chat_template(PROMPT))
    slots = prompt + 8  # one row
    scheduler = Scheduler(float64_backend, max_kv_tokens=slots)
    with pytest.raises(ValueError, match="KV slots"):
        scheduler.submit(_request(5, "best_of_n", 8, best_of=2))
    first, second = scheduler.submit(request), scheduler.submit(_request(6, "standard", 8))
    assert len(scheduler._running) == 1  # the second waits for the first's slots
    first.future.result(timeout=300)
    second.future.result(timeout=300)


def test_a_full_queue_refuses_at_once(float64_backend: Any) -> None:
    from power_sampling.engine.scheduler import QueueFull

    gate = threading.Event()
    scheduler = Scheduler(float64_backend, max_batch=1, max_queue=1)
    first = scheduler.submit(_request(8, "standard", 200))
    second = scheduler.submit(_request(9, "standard", 4))
    with pytest.raises(QueueFull):
        scheduler.submit(_request(10, "standard", 4))
    first.cancel()
    second.future.result(timeout=300)
    gate.set()


def test_a_cancelled_request_leaves_a_merged_decode_within_a_sync(float64_backend: Any) -> None:
    """Cancelled in the middle of one long ``sample`` call, a request's rows end at the decode's
    next sync point; the request it was merged with draws exactly what it draws alone."""
    from power_sampling.backends.base import StopCondition
    from power_sampling.backends.transformers.runs import SYNC_EVERY
    from power_sampling.engine.batcher import Batcher, Cancelled

    prompt, endless = [5, 6, 7], StopCondition()  # no stop token: only the budget ends a row
    alone = Batcher(float64_backend).lane().sample([prompt], 1, 40, seed=2, stop=endless)

    batcher = Batcher(float64_backend, window=0.5)  # both calls surely land in one round
    gone = threading.Event()
    long, short = batcher.lane(gone.is_set), batcher.lane()
    outcome: dict[str, Any] = {}

    def run(name: str, lane: Any, tokens: int, seed: int) -> None:
        try:
            outcome[name] = lane.sample([prompt], 1, tokens, seed=seed, stop=endless)
        except Cancelled as exc:
            outcome[name] = exc

    threads = [
        threading.Thread(target=run, args=("long", long, 900, 1)),
        threading.Thread(target=run, args=("short", short, 40, 2)),
    ]
    start = float64_backend._runs
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while float64_backend._runs - start < 60 and time.monotonic() < deadline:
        time.sleep(0.005)
    gone.set()
    at_cancel = float64_backend._runs
    for thread in threads:
        thread.join(timeout=300)
    assert isinstance(outcome["long"], Cancelled)
    assert batcher.calls == 1, "the two calls were not merged"
    # the decode ran on for at most one sync interval (plus the step under way), not to 900
    assert float64_backend._runs - at_cancel <= SYNC_EVERY + 1
    assert outcome["short"].continuations == alone.continuations
