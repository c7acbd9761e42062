"""AsyncVLLMBackend on vLLM's async engine (the CPU build, float32): its draws against the
offline engine's and transformers', seeded outputs alone and among concurrent requests, streamed
plain decoding, cancellation, and the HTTP server on it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("vllm")

from serve_helpers import serving, wait_for
from test_vllm_backend import TOL, reference

from power_sampling import PowerSampler, PowerSamplingConfig
from power_sampling.backends import IgnoreEOS
from power_sampling.backends.continuous import ContinuousBackend
from power_sampling.constraints import Constraint
from power_sampling.engine.scheduler import Scheduler
from power_sampling.request import Request

SMALL_POWER = dict(
    method="power", top_k=3, num_rollouts=2, rollout_length=4, block_size=4, num_candidates=4
)
COUNT = "Count from 1 to 1000: 1, 2, 3, 4,"


def test_draws_match_the_offline_engine_and_transformers(
    async_embedded: Any, embedded: Any
) -> None:
    """Seeded draws are the offline engine's own, token for token, and their base and
    proposal log-probs agree with a transformers forward pass; top-k entries too."""
    backend, offline, model = async_embedded, embedded.vllm, embedded.model
    assert isinstance(backend, ContinuousBackend) and not isinstance(offline, ContinuousBackend)
    prefixes = [backend.encode("The capital of France is"), backend.encode("Once upon a time")]
    for temperature in (1.0, 0.6):
        got = backend.sample(prefixes, 3, 8, seed=5, temperature=temperature)
        want = offline.sample(prefixes, 3, 8, seed=5, temperature=temperature)
        for prefix, row, other in zip(prefixes, got.continuations, want.continuations, strict=True):
            assert [c.token_ids for c in row] == [c.token_ids for c in other]
            for c in row:
                base = reference(model, prefix, c.token_ids)
                assert np.allclose(c.token_logprobs, base, atol=TOL)
                proposal = reference(model, prefix, c.token_ids, temperature)
                assert np.allclose(c.proposal_logprobs, proposal, atol=TOL)
    top, top_offline = backend.top_k(prefixes, 8), offline.top_k(prefixes, 8)
    for a, b in zip(top.entries, top_offline.entries, strict=True):
        assert a.token_ids == b.token_ids and np.allclose(a.logprobs, b.logprobs, atol=TOL)


def test_a_streamed_output_is_one_engine_request_with_the_right_log_likelihood(
    async_embedded: Any, embedded: Any
) -> None:
    """Plain decoding makes one engine call per output, not one per block; the text and
    log-likelihood are those of its tokens, at temperature 1 and at 1/alpha (rescored)."""
    backend, model = async_embedded, embedded.model
    for method in ("standard", "low_temperature"):
        sampler = PowerSampler(backend, method=method, block_size=4, alpha=2.0)
        gen = sampler.generate("Once upon a time", max_new_tokens=24, seed=3)
        prompt = backend.encode("Once upon a time", add_special_tokens=True)
        assert gen.stats.backend_calls == 1 and gen.stats.steps == 1
        assert 0 < len(gen.token_ids) <= 24 and gen.text == backend.decode(gen.token_ids)
        expected = sum(reference(model, prompt, gen.token_ids))
        assert gen.logprob == pytest.approx(expected, abs=TOL * len(gen.token_ids))
        again = sampler.generate("Once upon a time", max_new_tokens=24, seed=3)
        assert again.token_ids == gen.token_ids
    greedy = PowerSampler(backend, method="standard", temperature=0.0)
    gen = greedy.generate("Once upon a time", max_new_tokens=16, seed=1)
    want = embedded.vllm.sample([prompt], 1, 16, seed=0, temperature=0.0).continuations[0][0]
    assert tuple(gen.token_ids) == want.token_ids
    assert gen.logprob == pytest.approx(want.logprob, abs=TOL * len(want.token_ids))


def _others(first: int, count: int) -> list[Request]:
    """Requests of other methods, settings, lengths and seeds to run beside the checked ones."""
    out = []
    for i in range(first, first + count):
        kind = i % 3
        if kind == 0:
            config = PowerSamplingConfig(method="standard", max_new_tokens=8 + 4 * i, seed=100 + i)
        elif kind == 1:
            config = PowerSamplingConfig(**SMALL_POWER, max_new_tokens=8, seed=200 + i)
        else:
            config = PowerSamplingConfig(
                method="low_temperature", alpha=3.0, max_new_tokens=12, seed=300 + i
            )
        out.append(Request(f"Story {i}: once upon a time", config))
    return out


def test_seeded_outputs_are_the_same_alone_and_among_concurrent_requests(
    async_embedded: Any,
) -> None:
    """On the float32 engine each seeded request's text is the same alone and among 15
    concurrent requests of other seeds, methods and settings (the engine batches them)."""
    scheduler = Scheduler(async_embedded)
    assert not scheduler.merge  # the engine batches; the batcher stays out of the way
    checked = [
        Request(
            "Once upon a time", PowerSamplingConfig(method="standard", max_new_tokens=24, seed=11)
        ),
        Request("Once upon a time", PowerSamplingConfig(**SMALL_POWER, max_new_tokens=8, seed=5)),
        Request(
            "The capital of France is",
            PowerSamplingConfig(method="low_temperature", alpha=2.0, max_new_tokens=16, seed=9),
        ),
    ]
    alone = [scheduler.generate(r).token_ids for r in checked]
    jobs = [
        scheduler.submit(r) for r in [*checked[:1], *_others(0, 6), *checked[1:], *_others(6, 6)]
    ]
    results = [job.future.result(timeout=600) for job in jobs]
    together = [results[0].token_ids, results[7].token_ids, results[8].token_ids]
    assert together == alone
    assert len({tuple(g.token_ids) for g in results}) == len(results)  # each its own draw


def test_streaming_hands_on_tokens_as_the_engine_draws_them(async_embedded: Any) -> None:
    scheduler = Scheduler(IgnoreEOS(async_embedded))
    config = PowerSamplingConfig(method="standard", max_new_tokens=48, seed=1)
    start, stamps, chunks = time.monotonic(), [], []
    for chunk in scheduler.stream(Request(COUNT, config)):
        stamps.append(time.monotonic() - start)
        chunks.append(chunk)
    generation = chunks[-1].generation
    assert generation is not None and len(generation.token_ids) == 48
    pieces = [c for c in chunks if c.token_ids]
    assert len(pieces) >= 12  # not one block of tokens at the end
    assert [t for c in pieces for t in c.token_ids] == generation.token_ids
    assert "".join(c.text for c in chunks) == generation.text
    assert stamps[0] < stamps[-1] / 2  # the first tokens came long before the last


def test_a_stop_string_ends_the_streamed_output(async_embedded: Any) -> None:
    sampler = PowerSampler(async_embedded, method="standard")
    generation = sampler.generate(COUNT, max_new_tokens=40, stop=["8"], seed=1)
    assert generation.finish_reason == "stop" and "8" not in generation.text
    assert generation.text and generation.stats.backend_calls == 1
    assert _engine_idle(async_embedded)


def _engine_idle(backend: Any) -> bool:
    return backend.engine.get_num_unfinished_requests() == 0


@pytest.mark.parametrize("method", ["standard", "power"])
def test_a_cancelled_request_leaves_the_engine_at_once(async_embedded: Any, method: str) -> None:
    """Cancelled in the middle of its decode (a long stream, or a power step's sub-calls), a
    request's engine requests are aborted within a fraction of a second."""
    backend = async_embedded
    scheduler = Scheduler(IgnoreEOS(backend))
    settings = SMALL_POWER | {"rollout_length": 64} if method == "power" else {"method": method}
    job = scheduler.submit(Request(COUNT, PowerSamplingConfig(**settings, max_new_tokens=900)))
    wait_for(lambda: not _engine_idle(backend), 60, "the request to reach the engine")
    time.sleep(0.5)
    assert not job.future.done()
    cancelled = time.monotonic()
    job.cancel()
    wait_for(lambda: _engine_idle(backend), 5, "the engine to drop the request")
    assert time.monotonic() - cancelled < 1.0
    wait_for(lambda: scheduler.active == 0, 5, "the scheduler to free the request's place")


def test_constrained_calls_are_refused_with_the_fix(async_embedded: Any) -> None:
    backend = async_embedded
    matcher = Constraint.regex("(yes|no)").matcher(backend, backend.stop.token_ids)
    prefix = backend.encode("Is the sky blue?")
    for call in (
        lambda: backend.sample([prefix], 1, 4, seed=0, constraint=[matcher]),
        lambda: backend.top_k([prefix], 4, constraint=[matcher]),
    ):
        with pytest.raises(ValueError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0"):
            call()
    assert backend.sample([prefix], 1, 4, seed=0, constraint=[None]).continuations


def test_the_server_streams_from_the_async_engine(async_embedded: Any) -> None:
    """``serve --backend vllm``'s path: a streamed completion arrives in many pieces, and eight
    concurrent requests with distinct seeds each get their full answer."""
    import httpx

    with serving(async_embedded, model="smol") as (server, engine, _):
        assert not engine.scheduler.merge
        url = f"{server.url}/v1/completions"
        body = {"model": "smol", "prompt": COUNT, "max_tokens": 32, "seed": 4, "stream": True}
        body["power_sampling"] = {"method": "standard"}
        events = []
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[6:]))
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        assert len(events) > 8 and text

        answers: list[Any] = [None] * 8
        story = {**body, "prompt": "Once upon a time", "stream": False}

        def ask(i: int) -> None:
            answers[i] = httpx.post(url, json=story | {"seed": 50 + i}, timeout=300).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert all(a["usage"]["completion_tokens"] > 0 for a in answers)
        assert len({a["choices"][0]["text"] for a in answers}) > 4
        for i in (0, 5):  # the same seed alone: the same text
            alone = httpx.post(url, json=story | {"seed": 50 + i}, timeout=300).json()
            assert alone["choices"][0]["text"] == answers[i]["choices"][0]["text"]
