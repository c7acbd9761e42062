"""Plain decoding as one engine request per output, on a backend that streams.

``standard`` and ``low_temperature`` draw each token from the model at a fixed temperature, so
their whole output is one draw of up to ``max_new_tokens`` tokens: on a
:class:`~power_sampling.backends.continuous.ContinuousBackend` (vLLM's async engine) it is one
engine request whose tokens are committed as they arrive, instead of one call per
``block_size`` tokens. Same distribution; a seed gives other tokens than the block-by-block
path. A batch of several prompts, or a constrained output, takes the block-by-block path of
:class:`~.baselines.TemperatureSampler`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..backends.base import StopCondition
from ..backends.continuous import ContinuousBackend
from ..config import PowerSamplingConfig
from .base import Commit, SequenceState, new_seed
from .baselines import TemperatureSampler


class StreamedSampler(TemperatureSampler):
    """:class:`~.baselines.TemperatureSampler` whose lone unconstrained output is one streamed
    engine request."""

    backend: ContinuousBackend

    def __init__(
        self, backend: ContinuousBackend, config: PowerSamplingConfig, temperature: float
    ) -> None:
        super().__init__(backend, config, temperature)

    def run(
        self, states: Sequence[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> Iterator[list[Commit]]:
        if len(states) != 1 or states[0].constraint is not None or states[0].done:
            yield from super().run(states, stop, rng)
            return
        state = states[0]
        stream = self.backend.generate_stream(
            state.prefix,
            state.remaining,
            seed=new_seed(rng),
            temperature=self.temperature,
            stop=stop,
        )
        try:
            for piece in stream:
                tokens = state.commit(piece.token_ids, False, 0.0)
                if piece.done is not None:
                    done = piece.done
                    state.commit((), done.finished, done.logprob)
                    stats = state.stats
                    stats.steps += 1
                    stats.backend_calls += 1
                    stats.candidate_tokens += len(done.token_ids)
                    stats.forward_tokens += piece.forward_tokens
                    stats.sequential_steps += 1 + len(done.token_ids)
                if tokens:
                    yield [(state, tokens)]
                if state.done:  # ended here, by a stop string found in the text, or cancelled
                    return
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
