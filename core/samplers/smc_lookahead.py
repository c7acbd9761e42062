"""The look-ahead of Power-SMC (``lookahead_rollouts`` > 0): a blockwise auxiliary particle filter.

Setting. At an interval boundary (every ``resample_interval`` tokens) the weighted particles
{(x^i, w^i)} are properly weighted for the current unnormalised target γ_t: p(x)^{α_t} for a
live particle (α_t the ramped exponent), p(x)^α for one that ended (its catch-up is applied).
The final target is π(x) ∝ p(x)^α.

First stage. The ideal potential of a prefix is what the rest of the final target adds to it,

    ψ*(x) = Σ_f γ_final(x f) / γ_t(x) = p(x)^{α−α_t} · ζ(x),   ζ(x) = E_{f~p(·|x)}[p(f|x)^{α−1}],

the paper's future factor ζ (algorithm.md §2) times the exponent the ramp still owes. It is
estimated from M rollouts f_r of at most H = ``rollout_length`` tokens drawn after x at
temperature 1 (the masked model under a constraint, Λ_r their base log-likelihood, μ_r their log
allowed mass, as in :mod:`power_sampling.constraints.base`):

    log ψ̂(x) = (α − α_t) log p(x) + logsumexp_r((α−1) Λ_r + μ_r) − log M,

and ψ̂ = 1 for a particle that is done. N ancestors a_j are drawn systematically with
probabilities v^i ∝ w^i ψ̂^i, and each child gets the weight w̃^j = 1 / ψ̂^{a_j}.

Why the target is unchanged. For any function f, conditionally on the particles and on ψ̂,

    E[Σ_j w̃^j f(x^{a_j})] = N Σ_i (w^i ψ̂^i / Σ_k w^k ψ̂^k) · f(x^i) / ψ̂^i
                          = (N / Σ_k w^k ψ̂^k) · Σ_i w^i f(x^i),

the weighted measure before selection up to a factor common to all particles. So selection by
w·ψ̂ followed by the weight 1/ψ̂ keeps the system properly weighted for γ_t for every positive
ψ̂, however crude (a short H, a small M): ψ̂ may depend on the rollouts' randomness because the
correction divides out the same realised value. Each child is then extended by one block from
the proposal q and multiplied by the ordinary incremental weight γ_{t+B}/(γ_t q), so its
second-stage weight is

    w^j = γ_{t+B}(x^j) / (γ_t(x^{a_j}) · q(block^j) · ψ̂(x^{a_j})).

With ψ̂ = ψ* and a proposal that samples the block from its π-conditional, these weights are all
equal (a fully adapted filter); the closer ψ̂ is to ψ*, the more even they are, which is the
point: particles are moved to prefixes with good futures before the block is spent on them,
and the weights keep the answer consistent as N grows.

Positivity: a particle of positive weight whose rollouts all hit dead ends (ζ̂ = 0) gets the
smallest positive potential of its population instead (any positive value is exact).

With the look-ahead on, the particles are selected at every boundary (the effective sample size
of v is recorded, not used as a trigger): steering is the look-ahead's purpose. Cost per
interval: one more batched backend call, M rollouts for every distinct live particle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import StopCondition
from ..constraints import Matcher
from ..power_math import logsumexp
from .base import Sampler, SequenceState


@dataclass(frozen=True)
class Lookahead:
    """One particle's request: where it is and what the ramp still owes it."""

    state: SequenceState
    tokens: tuple[int, ...]
    matcher: Matcher | None
    owed: float
    """(α − α_t) · log p(x): the exponent the ramp has not yet applied, 0 when done."""
    horizon: int
    """Rollout length: min(H, tokens left); 0 for a particle that is done."""


def log_potentials(
    sampler: Sampler,
    particles: Sequence[Lookahead],
    rollouts: int,
    alpha: float,
    stop: StopCondition,
    rng: np.random.Generator,
) -> np.ndarray:
    """log ψ̂ for every particle: one backend call, M rollouts per distinct live particle."""
    distinct: dict[tuple[int, tuple[int, ...]], Lookahead] = {}
    for p in particles:
        if p.horizon > 0:
            distinct.setdefault((id(p.state), p.tokens), p)
    todo = list(distinct.values())
    rows = sampler.sample(
        [(p.state, p.state.prompt + p.tokens) for p in todo],
        rollouts,
        [p.horizon for p in todo],
        rng=rng,
        stop=stop,
        kind="rollout",
        matchers=[p.matcher for p in todo],
    )
    log_zeta: dict[tuple[int, tuple[int, ...]], float] = {}
    for p, row in zip(todo, rows, strict=True):
        terms = np.array([(alpha - 1.0) * r.logprob + r.log_mass for r in row])
        log_zeta[(id(p.state), p.tokens)] = float(logsumexp(terms) - np.log(len(row)))
    return np.array(
        [log_zeta[(id(p.state), p.tokens)] + p.owed if p.horizon > 0 else 0.0 for p in particles]
    )


def floor_dead(log_psi: np.ndarray) -> np.ndarray:
    """Replace ψ̂ = 0 (every rollout at a dead end) by the smallest positive ψ̂ (1 if none)."""
    finite = log_psi[np.isfinite(log_psi)]
    floor = float(finite.min()) if finite.size else 0.0
    return np.where(np.isfinite(log_psi), log_psi, floor)
