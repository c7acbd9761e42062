"""The baselines the paper compares against (algorithm.md §9).

* standard: temperature 1 (the base model p), or the config's ``temperature`` (0 = greedy);
* low temperature: temperature 1/α per token (sharpens each next-token distribution alone), or
  the config's ``temperature``;
* best-of-N: N standard samples, the highest total base log-likelihood wins.

Under a constraint each samples the masked model (allowed tokens renormalised, at its
temperature); best-of-N ranks its masked draws by their base log-likelihood.

Standard and low temperature commit ``block_size`` tokens per step (their streaming
granularity), continuing from the backend's kept cache; this changes nothing in distribution.
"""

from __future__ import annotations

import numpy as np

from ..backends.base import Backend, StopCondition
from ..config import PowerSamplingConfig
from .base import Commit, Sampler, SequenceState, dead_end


class TemperatureSampler(Sampler):
    """Ancestral sampling at a fixed temperature: 1 (standard) or 1/α (low temperature) unless
    the config sets one; 0 draws the most likely token at every step (greedy)."""

    def __init__(self, backend: Backend, config: PowerSamplingConfig, temperature: float) -> None:
        super().__init__(backend, config)
        self.temperature = temperature

    def step(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[Commit]:
        drawn = self.sample(
            [(s, s.prefix) for s in active],
            1,
            [min(self.config.block_size, s.remaining) for s in active],
            rng=rng,
            stop=stop,
            temperature=self.temperature,
            keep_cache=True,
        )
        commits = []
        for state, (drawn_row,) in zip(active, drawn, strict=True):
            if not drawn_row.token_ids and not drawn_row.finished:
                raise dead_end(state)
            tokens, finished = drawn_row.token_ids, drawn_row.finished
            commits.append((state, state.commit(tokens, finished, drawn_row.logprob)))
        return commits


class BestOfNSampler(Sampler):
    """N full standard samples per prompt in one call; commit the most likely under p."""

    def step(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[Commit]:
        drawn = self.sample(
            [(s, s.prefix) for s in active],
            self.config.best_of,
            [s.remaining for s in active],
            rng=rng,
            stop=stop,
        )
        commits = []
        for state, row in zip(active, drawn, strict=True):
            valid = [c for c in row if c.log_mass > -np.inf] or row
            best = max(valid, key=lambda c: c.logprob)  # first of equals: deterministic
            if not best.token_ids and not best.finished:
                raise dead_end(state)
            commits.append((state, state.commit(best.token_ids, best.finished, best.logprob)))
        return commits
