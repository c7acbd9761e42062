"""Scalable power sampling (Ji et al., arXiv 2601.21590), token level and block level.

One step, for every active sequence at once:

1. Propose candidates: the top-K next tokens (``block_size`` 1, Algorithm 1), or L blocks of B
   tokens drawn from the base model, deduplicated, top-K by total log-likelihood (Algorithm 2).
   One batched backend call.
2. Roll out: M continuations of up to H tokens (at most the tokens left) after every candidate
   that did not end the sequence. One batched backend call for all K·M rollouts. A step with a
   single distinct candidate needs none: the decision is already certain.
3. Score: log ζ̂ from the rollouts, p̂ and the jackknife p̂_JK over the candidates
   (:func:`power_sampling.power_math.score_candidates`). A candidate that ended the sequence, or
   a step with no tokens left after it, has ζ = 1: the block low-temperature rule.
4. Draw one candidate from p̂_JK with the sampler's generator and commit it.

Two options go beyond the paper, both off by default: ``adaptive_tolerance`` spends the
rollouts in two rounds and stops after the first where one candidate already dominates, even
with any one rollout left out (:meth:`CandidateScores.settled`), and
``reuse_rollouts`` recycles the chosen block's rollouts as next-step candidates.

Under a constraint, candidates and rollouts are drawn from the masked model and scored for
π_G(x) ∝ p(x)^α 1[x valid]: candidates keep their base log p, rollouts add their log allowed
mass as importance weights, and candidates that hit a dead end are dropped (see
:mod:`power_sampling.constraints.base` for the derivation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Backend, Continuation, StopCondition
from ..config import PowerSamplingConfig
from ..generation import StepTrace
from ..power_math import (
    CandidateScores,
    dropped_token_mass,
    kept_mass,
    logsumexp,
    score_candidates,
)
from .base import Commit, Sampler, SequenceState, constraint_kwargs, dead_end


@dataclass(frozen=True)
class Candidate:
    token_ids: tuple[int, ...]
    logprob: float
    finished: bool


@dataclass
class _Decision:
    """One sequence's step in progress: its candidates and the rollout log-likelihoods so far."""

    state: SequenceState
    candidates: list[Candidate]
    rollouts: list[list[Continuation]]
    """Per candidate; empty for a candidate without a future."""
    horizons: list[int]
    dropped: tuple[float, float] = (-np.inf, -np.inf)
    """log Σ p^α of the pool's candidates left out of the top K: (with a future, ended)."""
    _scores: CandidateScores | None = field(default=None, repr=False)

    @property
    def scored(self) -> list[int]:
        """Candidates that get rollouts (none when the choice is already certain)."""
        if len(self.candidates) < 2:
            return []
        return [j for j, h in enumerate(self.horizons) if h > 0]

    def score(self, alpha: float, jackknife: bool) -> CandidateScores:
        """The estimate from the rollouts so far (cached until more rollouts arrive)."""
        if self._scores is None:
            self._scores = self._estimate(alpha, jackknife)
        return self._scores

    def _estimate(self, alpha: float, jackknife: bool) -> CandidateScores:
        m = max((len(r) for r in self.rollouts), default=0)
        lam = np.zeros((len(self.candidates), m))
        mass = np.zeros_like(lam)
        future = np.zeros(len(self.candidates), dtype=bool)
        for j, row in enumerate(self.rollouts):
            if row:
                lam[j] = [r.logprob for r in row]
                mass[j] = [r.log_mass for r in row]
                future[j] = True
        log_p = [c.logprob for c in self.candidates]
        constrained = self.state.constraint is not None
        return score_candidates(
            log_p,
            lam,
            alpha,
            has_future=future,
            jackknife=jackknife,
            log_mass=mass if constrained else None,
        )


_Proposal = tuple[list[Candidate], tuple[float, float]]
"""A step's kept candidates and the power mass of those dropped (see ``_Decision.dropped``)."""


def _power_mass(dropped: list[Candidate], alpha: float) -> tuple[float, float]:
    """log Σ p^α of dropped candidates: (with a future, ended)."""
    future = [alpha * c.logprob for c in dropped if not c.finished]
    ended = [alpha * c.logprob for c in dropped if c.finished]
    return (
        float(logsumexp(np.array(future))) if future else -np.inf,
        float(logsumexp(np.array(ended))) if ended else -np.inf,
    )


class ScalablePowerSampler(Sampler):
    """Algorithms 1 and 2 of the paper over any backend."""

    def __init__(self, backend: Backend, config: PowerSamplingConfig) -> None:
        super().__init__(backend, config)
        self._carried: dict[SequenceState, list[Continuation]] = {}

    def step(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[Commit]:
        cfg = self.config
        if cfg.block_size == 1:
            proposals = self._top_tokens(active, stop)
        else:
            proposals = self._top_blocks(active, stop, rng)
        decisions = []
        for state, (candidates, dropped) in zip(active, proposals, strict=True):
            horizons = [
                0 if c.finished else min(cfg.rollout_length, state.remaining - len(c.token_ids))
                for c in candidates
            ]
            rollouts: list[list[Continuation]] = [[] for _ in candidates]
            decisions.append(_Decision(state, candidates, rollouts, horizons, dropped))

        # Rollouts, in two rounds when the adaptive budget is on.
        first = cfg.num_rollouts
        if cfg.adaptive_tolerance > 0 and cfg.num_rollouts >= 4:
            first = cfg.num_rollouts // 2
        self._roll_out(decisions, first, stop, rng)
        if first < cfg.num_rollouts:
            undecided = [
                d
                for d in decisions
                if d.scored
                and not d.score(cfg.alpha, cfg.jackknife).settled(cfg.adaptive_tolerance)
            ]
            self._roll_out(undecided, cfg.num_rollouts - first, stop, rng)

        return [self._choose(d, rng) for d in decisions]

    def _roll_out(
        self, decisions: list[_Decision], m: int, stop: StopCondition, rng: np.random.Generator
    ) -> None:
        """``m`` more rollouts for every scored candidate of every decision: one backend call."""
        owners = [(d, j) for d in decisions for j in d.scored]
        rows = self.sample(
            [(d.state, d.state.prefix + d.candidates[j].token_ids) for d, j in owners],
            m,
            [d.horizons[j] for d, j in owners],
            rng=rng,
            stop=stop,
            # Reused rollouts are next step's candidates: kept, their rollouts need no prefill
            # (with H = B, each candidate is a kept rollout row itself).
            keep_cache=self.config.reuse_rollouts,
            kind="rollout",
        )
        for (d, j), row in zip(owners, rows, strict=True):
            d.rollouts[j].extend(row)
            d._scores = None

    def _choose(self, decision: _Decision, rng: np.random.Generator) -> Commit:
        cfg, state, candidates = self.config, decision.state, decision.candidates
        if not candidates:
            raise dead_end(state)
        scores = decision.score(cfg.alpha, cfg.jackknife)
        chosen = int(rng.choice(len(candidates), p=scores.probs)) if len(candidates) > 1 else 0
        kept = kept_mass(
            [c.logprob for c in candidates],
            scores.log_zeta,
            cfg.alpha,
            has_future=[h > 0 for h in decision.horizons],
            dropped_future=decision.dropped[0],
            dropped_ended=decision.dropped[1],
        )
        state.stats.min_kept_mass = min(state.stats.min_kept_mass, kept)
        if state.trace is not None:
            state.trace.append(
                StepTrace(
                    position=len(state.tokens),
                    candidates=[c.token_ids for c in candidates],
                    candidate_logprobs=[c.logprob for c in candidates],
                    log_zeta=scores.log_zeta.tolist(),
                    p_hat=scores.p_hat.tolist(),
                    p_jk=scores.p_jk.tolist(),
                    chosen=chosen,
                    num_rollouts=sum(len(r) for r in decision.rollouts),
                    kept_mass=kept,
                )
            )
        if cfg.reuse_rollouts:
            self._carried[state] = decision.rollouts[chosen]
        pick = candidates[chosen]
        return state, state.commit(pick.token_ids, pick.finished, pick.logprob)

    def _top_tokens(self, active: list[SequenceState], stop: StopCondition) -> list[_Proposal]:
        """Algorithm 1: the K most likely next tokens are the candidates (with a bound on the
        power mass of the tokens left out)."""
        out = self.backend.top_k(
            [s.prefix for s in active],
            self.config.top_k,
            keep_cache=True,
            **constraint_kwargs([(s, s.prefix) for s in active]),
        )
        for state in active:
            state.stats.backend_calls += 1
            state.stats.forward_tokens += round(out.forward_tokens / len(active))
            state.stats.sequential_steps += out.sequential_steps or 1
        vocab, alpha = self.backend.vocab_size, self.config.alpha
        return [
            (
                [
                    Candidate((t,), lp, t in stop.token_ids)
                    for t, lp in zip(entry.token_ids, entry.logprobs, strict=True)
                ],
                (dropped_token_mass(entry.logprobs, alpha, vocab), -np.inf),
            )
            for entry in out.entries
        ]

    def _top_blocks(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[_Proposal]:
        """Algorithm 2: draw L blocks (less any reused ones), drop duplicates, keep the top K."""
        cfg = self.config
        pools = {state: self._reusable(state) for state in active}
        # One call for every sequence, even when they reuse different numbers of blocks: each
        # fresh block is its own request (the backend prefills each distinct prefix once).
        requests = [
            request
            for state in active
            for request in [(state, state.prefix)] * (cfg.num_candidates - len(pools[state]))
        ]
        drawn = self.sample(
            requests,
            1,
            [min(cfg.block_size, state.remaining) for state, _ in requests],
            rng=rng,
            stop=stop,
            keep_cache=True,
        )
        for (state, _), (block,) in zip(requests, drawn, strict=True):
            if block.log_mass > -np.inf:  # a block at a dead end has no valid completion
                pools[state].append(Candidate(block.token_ids, block.logprob, block.finished))
        out = []
        for state in active:
            distinct = {c.token_ids: c for c in pools[state]}
            ranked = sorted(distinct.values(), key=lambda c: -c.logprob)
            out.append((ranked[: cfg.top_k], _power_mass(ranked[cfg.top_k :], cfg.alpha)))
        return out

    def _reusable(self, state: SequenceState) -> list[Candidate]:
        """The previous step's chosen-block rollouts, cut to this block's length."""
        rollouts = self._carried.pop(state, [])
        length = min(self.config.block_size, state.remaining)
        # A rollout cut before its end token no longer ends the sequence.
        return [
            Candidate(
                r.token_ids[:length],
                sum(r.token_logprobs[:length]),
                r.finished and len(r.token_ids) <= length,
            )
            for r in rollouts[: self.config.num_candidates]
            if (len(r.token_ids) >= length or r.finished) and r.log_mass > -np.inf
        ]
