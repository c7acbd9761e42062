"""Candidate selection rules tried against top-K in the fidelity study (none is shipped).

Each is a :class:`ScalablePowerSampler` whose block step builds its candidate pool differently;
``python -m power_sampling.measure.fidelity --rules`` compares them with top-K at equal settings on
the study's tables. They keep the fidelity page's comparison reproducible and are not for use: the
weights they add are folded into the candidates' log-likelihoods, so ``Generation.logprob`` of
their generations is not the base log-likelihood.

- :class:`InclusionWeighted`: top-K, each block's power weight divided by its probability of
  being in the pool, 1 - (1 - p(b))^L (Horvitz-Thompson over the distinct draws).
- :class:`LowTemperaturePool`: the L blocks drawn at temperature 1/sqrt(α), with the same
  inclusion weights computed from the proposal probability.
- :class:`StratifiedPool`: one block starting with each of the top min(K, L/2) first tokens
  (one more top-K call), the other draws free; weights as top-K.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends.base import StopCondition
from ..samplers import SequenceState
from ..samplers.power import Candidate, ScalablePowerSampler, _power_mass, _Proposal


def _log_inclusion(log_q: float, draws: int) -> float:
    """log P(a block of probability q is among ``draws`` independent draws)."""
    q = min(math.exp(log_q), 1.0)
    return 0.0 if q >= 1.0 else math.log(-math.expm1(draws * math.log1p(-q)))


def _top(pool: list[Candidate], k: int, alpha: float) -> _Proposal:
    distinct = {c.token_ids: c for c in pool}
    ranked = sorted(distinct.values(), key=lambda c: -c.logprob)
    return ranked[:k], _power_mass(ranked[k:], alpha)


class InclusionWeighted(ScalablePowerSampler):
    """Top-K with inclusion-probability weights."""

    def _top_blocks(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[_Proposal]:
        cfg = self.config
        out = []
        for kept, dropped in super()._top_blocks(active, stop, rng):
            weighted = [
                Candidate(
                    c.token_ids,
                    c.logprob - _log_inclusion(c.logprob, cfg.num_candidates) / cfg.alpha,
                    c.finished,
                )
                for c in kept
            ]
            out.append((weighted, dropped))
        return out


class LowTemperaturePool(ScalablePowerSampler):
    """Candidates drawn at temperature 1/sqrt(α), inclusion-weighted by their proposal."""

    def _top_blocks(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[_Proposal]:
        cfg = self.config
        requests = [(s, s.prefix) for s in active for _ in range(cfg.num_candidates)]
        drawn = self.sample(
            requests,
            1,
            [min(cfg.block_size, s.remaining) for s, _ in requests],
            rng=rng,
            stop=stop,
            temperature=1 / math.sqrt(cfg.alpha),
            keep_cache=True,
        )
        pools: dict[SequenceState, list[Candidate]] = {s: [] for s in active}
        for (state, _), (block,) in zip(requests, drawn, strict=True):
            log_q = float(sum(block.proposal_logprobs))
            weight = _log_inclusion(log_q, cfg.num_candidates) / cfg.alpha
            pools[state].append(Candidate(block.token_ids, block.logprob - weight, block.finished))
        return [_top(pools[s], cfg.top_k, cfg.alpha) for s in active]


class StratifiedPool(ScalablePowerSampler):
    """Every top first token is represented in the pool; the other draws are free."""

    def _top_blocks(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[_Proposal]:
        cfg = self.config
        strata = min(cfg.top_k, cfg.num_candidates // 2)
        firsts = self.backend.top_k([s.prefix for s in active], strata)
        pools: dict[SequenceState, list[Candidate]] = {s: [] for s in active}
        requests: list[tuple[SequenceState, tuple[int, ...]]] = []
        heads: list[tuple[tuple[int, ...], float]] = []
        budgets: list[int] = []
        for state, entry in zip(active, firsts.entries, strict=True):
            length = min(cfg.block_size, state.remaining)
            for token, logprob in zip(entry.token_ids, entry.logprobs, strict=True):
                if token in stop.token_ids or length == 1:
                    pools[state].append(Candidate((token,), logprob, token in stop.token_ids))
                else:
                    requests.append((state, (*state.prefix, token)))
                    heads.append(((token,), logprob))
                    budgets.append(length - 1)
            for _ in range(cfg.num_candidates - strata):
                requests.append((state, state.prefix))
                heads.append(((), 0.0))
                budgets.append(length)
        drawn = self.sample(requests, 1, budgets, rng=rng, stop=stop, keep_cache=True)
        for (state, _), (head, head_logprob), (block,) in zip(requests, heads, drawn, strict=True):
            pools[state].append(
                Candidate(head + block.token_ids, head_logprob + block.logprob, block.finished)
            )
        return [_top(pools[s], cfg.top_k, cfg.alpha) for s in active]


RULES: dict[str, type[ScalablePowerSampler]] = {
    "top-K": ScalablePowerSampler,
    "inclusion": InclusionWeighted,
    "low-temperature pool": LowTemperaturePool,
    "stratified": StratifiedPool,
}
"""The selection rules compared by ``--rules``."""
