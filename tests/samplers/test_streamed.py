"""Plain decoding on a backend that streams (a ContinuousBackend): one stream per output, the
same distribution as block by block (against exact enumeration), the block path for batches,
and the scheduler's direct calls and cancellation."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from serve_helpers import wait_for
from tables import random_table, rarely_ending_table
from test_samplers_exact import PROMPT, empirical, noise_bound

from power_sampling import PowerSampler, PowerSamplingConfig, TableLM, exact
from power_sampling.backends.base import StopCondition
from power_sampling.backends.cancel import Cancelled, cancel_requested
from power_sampling.backends.continuous import ContinuousBackend, Streamed
from power_sampling.engine.scheduler import Scheduler
from power_sampling.exact import total_variation
from power_sampling.request import Request
from power_sampling.samplers import StreamedSampler, TemperatureSampler, make_sampler


class StreamingTable:
    """A table model that also streams: a stream is one ``sample`` draw of the whole output,
    handed on one token per piece; ``hold`` makes every piece wait until it is set."""

    def __init__(self, table: TableLM) -> None:
        self.table = table
        self.streams = self.calls = 0
        self.hold: threading.Event | None = None
        self.streaming = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)

    @property
    def vocab_size(self) -> int:
        return self.table.vocab_size

    @property
    def stop(self) -> StopCondition:
        return self.table.stop

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.table.sample(*args, **kwargs)

    def top_k(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.table.top_k(*args, **kwargs)

    def generate_stream(
        self,
        prefix: tuple[int, ...],
        max_new_tokens: int,
        *,
        seed: int,
        temperature: float,
        stop: StopCondition,
    ) -> Iterator[Streamed]:
        self.streams += 1
        out = self.table.sample(
            [prefix], 1, max_new_tokens, seed=seed, temperature=temperature, stop=stop
        )
        whole = out.continuations[0][0]
        for token in whole.token_ids[:-1]:
            self.streaming.set()
            while self.hold is not None and not self.hold.wait(0.01):
                if cancel_requested():
                    raise Cancelled
            yield Streamed((token,))
        yield Streamed(whole.token_ids[-1:], whole, out.forward_tokens)


def test_plain_decoding_streams_only_on_a_backend_that_can() -> None:
    table = random_table(5, 3)
    streaming = StreamingTable(table)
    assert isinstance(streaming, ContinuousBackend) and not isinstance(table, ContinuousBackend)
    for method in ("standard", "low_temperature"):
        config = PowerSamplingConfig(method=method)
        assert type(make_sampler(streaming, config)) is StreamedSampler
        assert type(make_sampler(table, config)) is TemperatureSampler
    assert type(make_sampler(streaming, PowerSamplingConfig(method="power"))).__name__ != (
        "StreamedSampler"
    )


@pytest.mark.parametrize(("method", "temperature"), [("standard", 1.0), ("low_temperature", 0.25)])
def test_streamed_outputs_follow_their_definition(method: str, temperature: float) -> None:
    """One stream per output, no block calls, and the outputs' distribution is the exact one
    (the same table and bound as the block-by-block test)."""
    lm, runs = StreamingTable(random_table(5, 3, concentration=0.3)), 2000
    config = PowerSamplingConfig(method=method, alpha=4.0, block_size=2, max_new_tokens=3)
    reference = exact.base_distribution(lm.table, PROMPT, 3, temperature=temperature)
    tv = total_variation(empirical(PowerSampler(lm, config), runs), reference)
    assert tv < noise_bound(reference, runs)
    assert lm.streams == runs and lm.calls == 0


def test_a_streamed_generation_commits_piece_by_piece_with_its_log_likelihood() -> None:
    lm = StreamingTable(rarely_ending_table(5, 1))
    sampler = PowerSampler(lm, method="standard", block_size=2, max_new_tokens=12)
    chunks = list(sampler.stream(list(PROMPT), seed=4))
    generation = chunks[-1].generation
    assert generation is not None
    pieces = [c.token_ids for c in chunks if c.token_ids]
    assert len(pieces) == len(generation.token_ids) > 2  # one piece per token, as streamed
    tokens = generation.token_ids
    logprob = sum(lm.table.logprobs([*PROMPT, *tokens[:j]])[t] for j, t in enumerate(tokens))
    assert generation.logprob == pytest.approx(logprob)
    assert generation.stats.backend_calls == 1 and generation.stats.steps == 1


def test_a_batch_of_prompts_takes_the_block_path() -> None:
    lm = StreamingTable(random_table(5, 3))
    sampler = PowerSampler(lm, method="standard", block_size=2, max_new_tokens=4)
    assert len(sampler.generate_batch([[1], [2]], seed=0)) == 2
    assert lm.streams == 0 and lm.calls > 0


def test_the_scheduler_calls_a_continuous_backend_directly_and_cancels_its_stream() -> None:
    lm = StreamingTable(rarely_ending_table(5, 2))
    scheduler = Scheduler(lm)
    assert not scheduler.merge and Scheduler(lm, merge=True).merge
    power = PowerSamplingConfig(block_size=2, top_k=2, num_rollouts=2, rollout_length=2)
    scheduler.generate(Request([1], power.replace(max_new_tokens=4, seed=0)))
    assert lm.calls > 0 and scheduler.batcher.calls == 0  # no merging rounds
    lm.hold = threading.Event()
    job = scheduler.submit(Request([1], power.replace(method="standard", max_new_tokens=50)))
    assert lm.streaming.wait(10)
    job.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        job.future.result(timeout=5)
    wait_for(lambda: scheduler.active == 0, 5, "the cancelled request to leave")
