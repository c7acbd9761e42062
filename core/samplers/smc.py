"""Power-SMC (Azizi et al., arXiv 2602.10273): sequential Monte Carlo over p(x)^α.

N particles start from the prompt and are decoded together from the proposal q, the model at
temperature 1/α (the prefix-only proposal of least incremental-weight variance: q ∝ p^α).
A particle that draws y after its prefix gains the log-weight

    α_t · log p(y) − log q(y)  +  (α_t − α_{t−1}) · log p(prefix),

where α_t rises linearly from 1 (α_0 = 1) to α over the first ``alpha_ramp_tokens`` tokens and
the second term bridges the change of exponent, so that after t tokens a live particle is
weighted for γ_t(x) = p(x)^{α_t}. When a particle is done (it ended, or reached
``max_new_tokens``) it gains the catch-up (α − α_t) · log p(x), is weighted for p(x)^α, and is
frozen: no more tokens, increments 0. At the end every particle is weighted for π(x) ∝ p(x)^α
over completions capped at ``max_new_tokens``, and the answer is one particle drawn with
probability proportional to its final weight (not the arg-max).

Every ``resample_interval`` tokens the effective sample size ESS = 1/Σ w̄² of the normalised
weights is checked; below ``ess_threshold``·N the particles are resampled systematically (one
uniform, N evenly spaced points) and the weights reset to equal. With ``lookahead_rollouts`` > 0
the particles are instead selected at every boundary by weight × a rollout estimate of their
future (:mod:`.smc_lookahead`, where the correction that keeps the target is derived).

Batching. The proposal does not couple particles within an interval, so an interval is one
``backend.sample`` call for the live particles of every sequence, each with the interval's
budget. The backend reports per-token base log-probs and the log-probs of the distribution the
token was actually drawn from (``Continuation.proposal_logprobs``, after temperature and
renormalisation), so the weights need no per-step normaliser of their own. The call keeps its
rows (``keep_cache``): the next interval's prefixes are those rows, and particles resampled from
one ancestor pass the same prefix, which the backend resolves once and shares across their rows.

Constraints. Under a constraint the proposal is the masked model at temperature 1/α, whose
reported log q includes the renormalisation over the allowed tokens, so the same increments
target π_G(x) ∝ p(x)^α · 1[x valid]: at α_t = α a token's increment is the log allowed power
mass log Σ_{v allowed} p(v)^α of its step, the correction the constraint needs and nothing
else. A particle that reaches a dead end gets weight 0.
Each particle carries its own matcher, forked from its ancestor's.

``mask_eos_tokens`` > 0 forbids the end tokens for the first tokens through the same masks:
this changes the target to π restricted to outputs that do not end that early (exactly).
Power-SMC's other target-changing option, top-p truncation of the proposal, is not offered: the
backend protocol draws without truncation.

Streaming. The answer is one of the particles that still have positive weight, so the longest
common prefix of those is decided: it is committed as soon as resampling makes the particles
agree on it; the rest comes when the last particle is done.

Finite N makes the answer a sampling-importance-resampling draw, biased for small N and
consistent as N grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import Backend, Continuation, StopCondition
from ..config import PowerSamplingConfig
from ..constraints import Matcher
from ..power_math import logsumexp
from .base import Commit, Sampler, SequenceState, dead_end
from .smc_lookahead import Lookahead, floor_dead, log_potentials


@dataclass(frozen=True)
class _Particle:
    tokens: tuple[int, ...]
    """The generated tokens (prompt excluded)."""
    logprob: float
    """log p(tokens | prompt) under the base model."""
    token_logprobs: tuple[float, ...]
    done: bool
    finished: bool
    """Ended at a stop token (``done`` also covers the length cap and dead ends)."""
    matcher: Matcher | None
    """The constraint after ``tokens`` (never advanced: forked for every use)."""


@dataclass
class _Population:
    particles: list[_Particle]
    log_w: np.ndarray
    committed: int = 0
    """Tokens already committed to the sequence (the particles' decided common prefix)."""


class PowerSMCSampler(Sampler):
    """Power-SMC, with the optional look-ahead, over any backend."""

    def __init__(self, backend: Backend, config: PowerSamplingConfig) -> None:
        if not getattr(backend, "returns_proposal_logprobs", True):
            fix = getattr(backend, "proposal_logprobs_fix", None) or (
                "(a vLLM engine built with logprobs_mode='raw_logprobs'); build the engine with "
                "logprobs_mode='processed_logprobs' (VLLMBackend.from_pretrained does)"
            )
            raise ValueError(
                f"{type(backend).__name__} cannot return the proposal log-probs at temperature "
                f"1/alpha that Power-SMC's weights need {fix}, or use method='power'"
            )
        super().__init__(backend, config)
        self._populations: dict[SequenceState, _Population] = {}

    def alpha_at(self, t: int) -> float:
        """The ramped exponent after ``t`` generated tokens (α_0 = 1)."""
        cfg = self.config
        if cfg.alpha_ramp_tokens == 0:
            return cfg.alpha
        return 1.0 + (cfg.alpha - 1.0) * min(t, cfg.alpha_ramp_tokens) / cfg.alpha_ramp_tokens

    def step(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[Commit]:
        cfg = self.config
        pops = [self._population(state, stop) for state in active]

        # 1. One interval for the live particles of every sequence: one backend call.
        live = [
            (state, pop, i)
            for state, pop in zip(active, pops, strict=True)
            for i, p in enumerate(pop.particles)
            if not p.done
        ]
        rows = self.sample(
            [(state, state.prompt + pop.particles[i].tokens) for state, pop, i in live],
            1,
            [
                min(cfg.resample_interval, state.max_new_tokens - len(pop.particles[i].tokens))
                for state, pop, i in live
            ],
            rng=rng,
            stop=stop,
            temperature=1.0 / cfg.alpha,
            keep_cache=True,
            matchers=[pop.particles[i].matcher for _, pop, i in live],
        )
        for (state, pop, i), (row,) in zip(live, rows, strict=True):
            pop.particles[i], increment = self._extend(state, pop.particles[i], row)
            pop.log_w[i] += increment

        # 2. Select: by weight x look-ahead potential at every boundary, or by weight when the
        # effective sample size is low. The last check draws the answer instead.
        going = [
            (s, p)
            for s, p in zip(active, pops, strict=True)
            if not all(q.done for q in p.particles)
        ]
        if cfg.lookahead_rollouts > 0 and going:
            self._lookahead(going, stop, rng)
        else:
            for state, pop in going:
                ess = _ess(pop.log_w)
                state.stats.ess_history.append(ess)
                if ess < cfg.ess_threshold * cfg.num_particles:
                    self._resample(
                        state, pop, _systematic(pop.log_w, rng), np.zeros(len(pop.log_w))
                    )

        commits = []
        for state, pop in zip(active, pops, strict=True):
            if all(p.done for p in pop.particles):
                commits.append(self._finish(state, pop, rng))
            else:
                commits.append(self._stream(state, pop))
        return commits

    def _population(self, state: SequenceState, stop: StopCondition) -> _Population:
        pop = self._populations.get(state)
        if pop is None:
            matcher: Matcher | None = None if state.constraint is None else state.constraint.at(())
            if self.config.mask_eos_tokens > 0:
                matcher = _NoEndYet(matcher, stop.token_ids, self.config.mask_eos_tokens)
            root = _Particle((), 0.0, (), state.max_new_tokens <= 0, False, matcher)
            n = self.config.num_particles
            pop = self._populations[state] = _Population([root] * n, np.zeros(n))
        return pop

    def _extend(
        self, state: SequenceState, particle: _Particle, row: Continuation
    ) -> tuple[_Particle, float]:
        """The particle after one interval, and its log-weight increment."""
        alpha = self.config.alpha
        if len(row.proposal_logprobs) != len(row.token_ids):
            raise ValueError(
                f"{type(self.backend).__name__} returned no proposal log-probs for its "
                "continuations; Power-SMC's weights need them (Continuation.proposal_logprobs)"
            )
        log_p, t, increment = particle.logprob, len(particle.tokens), 0.0
        previous = self.alpha_at(t)
        for base, proposal in zip(row.token_logprobs, row.proposal_logprobs, strict=True):
            t += 1
            now = self.alpha_at(t)
            increment += (now - previous) * log_p + now * base - proposal
            log_p += base
            previous = now
        tokens = particle.tokens + row.token_ids
        token_logprobs = particle.token_logprobs + tuple(row.token_logprobs)
        dead = row.log_mass == -np.inf
        done = dead or row.finished or len(tokens) >= state.max_new_tokens
        if dead:
            increment = -np.inf
        elif done:
            increment += (alpha - previous) * log_p  # the catch-up: weighted for p^α from now on
        matcher = particle.matcher
        if matcher is not None and not done:
            matcher = matcher.fork()
            for token in row.token_ids:
                matcher.accept(int(token))
        particle = _Particle(tokens, log_p, token_logprobs, done, row.finished, matcher)
        return particle, increment

    def _lookahead(
        self,
        going: list[tuple[SequenceState, _Population]],
        stop: StopCondition,
        rng: np.random.Generator,
    ) -> None:
        cfg = self.config
        requests = [
            Lookahead(
                state,
                p.tokens,
                p.matcher,
                0.0 if p.done else (cfg.alpha - self.alpha_at(len(p.tokens))) * p.logprob,
                0
                if p.done or w == -np.inf
                else min(cfg.rollout_length, state.max_new_tokens - len(p.tokens)),
            )
            for state, pop in going
            for p, w in zip(pop.particles, pop.log_w, strict=True)
        ]
        log_psi = log_potentials(self, requests, cfg.lookahead_rollouts, cfg.alpha, stop, rng)
        start = 0
        for state, pop in going:
            mine = floor_dead(log_psi[start : start + len(pop.particles)])
            start += len(pop.particles)
            select = pop.log_w + mine
            state.stats.ess_history.append(_ess(select))
            ancestors = _systematic(select, rng)
            self._resample(state, pop, ancestors, -mine[ancestors])

    def _resample(
        self, state: SequenceState, pop: _Population, ancestors: np.ndarray, log_w: np.ndarray
    ) -> None:
        # Children share their ancestor's particle, hence its prefix and the backend's rows.
        pop.particles = [pop.particles[a] for a in ancestors]
        pop.log_w = log_w
        state.stats.resamples += 1
        state.stats.unique_ancestors.append(len(set(ancestors.tolist())))

    def _stream(self, state: SequenceState, pop: _Population) -> Commit:
        """Commit the common prefix of the particles that can still be chosen."""
        alive = [p for p, w in zip(pop.particles, pop.log_w, strict=True) if w > -np.inf]
        # Distinct particles only (children share their ancestor's object), compared from the
        # committed length on: the committed prefix is common already.
        distinct = list({id(p): p for p in alive}.values())
        first, length = distinct[0].tokens, min(len(p.tokens) for p in distinct)
        for p in distinct[1:]:
            k = pop.committed
            while k < length and p.tokens[k] == first[k]:
                k += 1
            length = k
        if length <= pop.committed:
            return state, ()
        return self._commit(state, pop, alive[0], length, finished=False)

    def _finish(self, state: SequenceState, pop: _Population, rng: np.random.Generator) -> Commit:
        """Draw the answer from the final normalised weights and commit the rest of it."""
        del self._populations[state]
        log_w = pop.log_w
        state.stats.ess_history.append(_ess(log_w))
        if not np.any(log_w > -np.inf):
            raise dead_end(state)
        chosen = pop.particles[int(rng.choice(len(log_w), p=_normalised(log_w)))]
        return self._commit(state, pop, chosen, len(chosen.tokens), finished=chosen.finished)

    def _commit(
        self, state: SequenceState, pop: _Population, source: _Particle, length: int, finished: bool
    ) -> Commit:
        tokens = source.tokens[pop.committed : length]
        logprob = float(sum(source.token_logprobs[pop.committed : length]))
        pop.committed = length
        return state, state.commit(tokens, finished, logprob)


def _normalised(log_w: np.ndarray) -> np.ndarray:
    w = np.exp(log_w - logsumexp(log_w))
    return w / w.sum()


def _ess(log_w: np.ndarray) -> float:
    if not np.any(log_w > -np.inf):
        return 0.0
    return float(1.0 / np.sum(_normalised(log_w) ** 2))


def _systematic(log_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling: ancestors at N evenly spaced points of the weights' CDF."""
    n, w = len(log_w), _normalised(log_w)
    points = (rng.random() + np.arange(n)) / n
    # A point past the CDF's rounded end goes to the last particle of positive weight.
    return np.minimum(np.searchsorted(np.cumsum(w), points, side="right"), np.flatnonzero(w)[-1])


class _NoEndYet:
    """A matcher that forbids the end tokens for the first ``left`` tokens, on top of ``inner``
    (None: everything else allowed)."""

    def __init__(self, inner: Matcher | None, stop: frozenset[int], left: int) -> None:
        self._inner, self._stop, self._left = inner, stop, left

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        if self._inner is None:
            bitmask[row] = -1  # every bit set: all tokens allowed
        else:
            self._inner.fill_bitmask(bitmask, row)
        if self._left > 0:
            words = bitmask[row].view(np.uint32)
            for token in self._stop:
                words[token >> 5] &= ~np.uint32(1 << (token & 31))

    def accept(self, token: int) -> bool:
        if self._left > 0 and token in self._stop:
            return False
        if self._inner is not None and not self._inner.accept(token):
            return False
        self._left = max(self._left - 1, 0)
        return True

    def fork(self) -> Matcher:
        inner = None if self._inner is None else self._inner.fork()
        return _NoEndYet(inner, self._stop, self._left)
