"""The frontier: every method's TV to the exact π against its cost, at several budgets.

``python -m power_sampling.measure.fidelity --frontier [--quick] [--out DIR]`` runs every
method on the study's table shapes (:data:`.tables.SHAPES`, α = 4, 4 new tokens) at several
budgets: power sampling at token level over K, M and at block level (B = 2) over K, L, M, with
and without the reuse fast path; MCMC over ``mcmc_steps``; Power-SMC over ``num_particles``
with and without ``lookahead_rollouts``; low temperature, standard decoding and best-of-N. For
each it records the TV to π and two costs per output token: forward tokens (compute) and
sequential model steps (``GenerationStats.sequential_steps``: the latency a GPU follows, where a
batched step costs about what one row does). :mod:`.frontier_report` writes the table and
:mod:`.frontier_plot` the plot.

Each method's distribution is estimated as precisely as its structure allows:

- power without reuse is Markov in the prefix: composed one-step kernels
  (:func:`.tables.sampled_distribution`);
- power with reuse, SMC and MCMC carry state across steps, so whole generations are run with
  fixed seeds and averaged, each Rao-Blackwellised where the sampler exposes its last draw: a
  power step adds the probability it gave each candidate that ends the completion there, an SMC
  run adds its final normalised weights over its particles (the answer is drawn from them), an
  MCMC run adds its one answer;
- standard decoding, low temperature and best-of-N have exact laws (:mod:`power_sampling.exact`);
  their cost is measured on a few runs.

``noise`` is half the TV between the estimates from each half of the runs (0 for exact laws).
Costs per output token are ratios of means: mean cost per generation over mean completion length.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import exact
from ..backends.table import TableLM
from ..config import PowerSamplingConfig
from ..samplers import PowerSMCSampler, ScalablePowerSampler, SequenceState, make_sampler
from ..samplers.base import Commit, Sampler
from .tables import LENGTH, PROMPT, SHAPES, sampled_distribution

ALPHA = 4.0
BLOCK = 2
"""Block size of power, MCMC and the SMC interval on the 4-token tables (two blocks)."""

Dist = dict[tuple[int, ...], float]


@dataclass(frozen=True)
class Point:
    """One method at one budget."""

    family: str
    """The method (``power block``, ``smc + look-ahead``, ...): one line of the plot."""
    budget: str
    """The budget's settings, as a label."""
    options: tuple[tuple[str, Any], ...]
    """Config fields on top of α = 4 and the tables' length."""

    @property
    def label(self) -> str:
        return f"{self.family} {self.budget}".strip()

    def config(self) -> PowerSamplingConfig:
        return PowerSamplingConfig(
            alpha=ALPHA, max_new_tokens=LENGTH, rollout_length=LENGTH, **dict(self.options)
        )

    @property
    def real_cost(self) -> int | None:
        """Power sampling only: tokens drawn per decided token on a real model with B = H = 16
        (L + K·M at block level, 1 + 16·K·M at token level), as :class:`.fidelity.Setting`."""
        o = dict(self.options)
        if o.get("method", "power") != "power":
            return None
        if o["block_size"] == 1:
            return 1 + 16 * o["top_k"] * o["num_rollouts"]
        return int(o["num_candidates"] + o["top_k"] * o["num_rollouts"])


def block(k: int, n: int, m: int, reuse: bool = False) -> Point:
    name = "power block + reuse" if reuse else "power block"
    options = dict(block_size=BLOCK, top_k=k, num_candidates=n, num_rollouts=m)
    if reuse:
        options["reuse_rollouts"] = True
    return Point(name, f"K={k} L={n} M={m}", tuple(options.items()))


def token(k: int, m: int) -> Point:
    return Point(
        "power token", f"K={k} M={m}", (("block_size", 1), ("top_k", k), ("num_rollouts", m))
    )


def mcmc(steps: int) -> Point:
    options = (("method", "mcmc"), ("block_size", BLOCK), ("mcmc_steps", steps))
    return Point("mcmc", f"steps={steps}", options)


def smc(n: int, lookahead: int = 0) -> Point:
    options = dict(method="smc", num_particles=n, resample_interval=BLOCK, alpha_ramp_tokens=BLOCK)
    if lookahead:
        options["lookahead_rollouts"] = lookahead
        return Point("smc + look-ahead", f"N={n} M={lookahead}", tuple(options.items()))
    return Point("smc", f"N={n}", tuple(options.items()))


def baseline(method: str, best_of: int = 1) -> Point:
    options = (("method", method), ("block_size", LENGTH), ("best_of", best_of))
    if method == "best_of_n":
        return Point("best-of-N", f"N={best_of}", options)
    return Point(method.replace("_", " "), "", options)


def grid(quick: bool = False) -> list[Point]:
    """The budgets studied (``quick``: a tiny grid for tests). Presets' shapes on the tables:
    ``cpu`` = power block K=8 L=16 M=2, MCMC 2 steps, best-of-8; ``paper`` = K=8 L=32 M=8,
    MCMC 10 steps, best-of-32; ``paper-fast`` = reuse K=8 L=8 M=8; SMC's defaults = N=64."""
    if quick:
        return [smc(2), smc(16), block(8, 16, 2), baseline("low_temperature")]
    blocks = [(2, 4, 2), (4, 8, 2), (8, 8, 2), (8, 16, 2), (8, 16, 4)]
    blocks += [(6, 20, 2), (4, 24, 2), (8, 24, 1)]  # the cpu preset's L + K·M = 32 in other splits
    blocks += [(8, 24, 2), (8, 32, 2), (16, 32, 2), (8, 32, 8)]
    out = [block(k, n, m) for k, n, m in blocks]
    # With L = M the kept rollouts are every candidate after the first block (paper-fast: 8).
    reused = [(8, 8, 2), (8, 8, 8), (8, 16, 16), (8, 16, 2), (8, 32, 8)]
    out += [block(k, n, m, reuse=True) for k, n, m in reused]
    out += [token(k, m) for k, m in ((2, 2), (5, 2), (5, 4))]
    out += [mcmc(s) for s in (1, 2, 4, 10, 20)]
    out += [smc(n) for n in (2, 4, 8, 16, 32, 64)]
    out += [smc(n, 4) for n in (2, 4, 8, 16, 32)]
    out += [baseline("standard"), baseline("low_temperature")]
    out += [baseline("best_of_n", n) for n in (2, 8, 32)]
    return out


@dataclass(frozen=True)
class Measured:
    """One point on one table shape."""

    shape: str
    family: str
    budget: str
    tv: float
    """Total variation between the method's completions and the exact π."""
    noise: float
    """Half the TV between the estimates from each half of the runs (0: exact law)."""
    forward_per_token: float
    """Forward tokens per output token."""
    steps_per_token: float
    """Sequential model steps per output token."""
    real_cost: int | None
    runs: int


class _RecordingSMC(PowerSMCSampler):
    """Power-SMC that keeps, per sequence, its final normalised weights over completions."""

    def __init__(self, backend: TableLM, config: PowerSamplingConfig) -> None:
        super().__init__(backend, config)
        self.final: dict[SequenceState, Dist] = {}

    def _finish(self, state: SequenceState, pop: Any, rng: np.random.Generator) -> Commit:
        log_w = np.asarray(pop.log_w)
        if np.any(log_w > -np.inf):
            w = np.exp(log_w - log_w.max())
            law: Dist = defaultdict(float)
            for particle, weight in zip(pop.particles, w / w.sum(), strict=True):
                law[particle.tokens] += float(weight)
            self.final[state] = dict(law)
        return super()._finish(state, pop, rng)


def _terminal(tokens: tuple[int, ...]) -> bool:
    return tokens[-1] == 0 or len(tokens) >= LENGTH


def _one_run(sampler: Sampler, seed: int) -> tuple[Dist, SequenceState]:
    """One seeded generation and its Rao-Blackwellised law (see the module docstring)."""
    state = SequenceState(PROMPT, LENGTH, trace=[])
    for _ in sampler.run([state], sampler.backend.stop, np.random.default_rng([seed, 7])):
        pass
    law: Dist = defaultdict(float)
    if isinstance(sampler, _RecordingSMC):
        law.update(sampler.final.pop(state))
    elif isinstance(sampler, ScalablePowerSampler):
        assert state.trace is not None
        for step in state.trace:
            before = tuple(state.tokens[: step.position])
            for candidate, q in zip(step.candidates, step.p_jk, strict=True):
                if _terminal(before + candidate):
                    law[before + candidate] += q
    else:
        law[tuple(state.tokens)] = 1.0
    return law, state


def _mean(laws: Sequence[Dist]) -> Dist:
    out: Dist = defaultdict(float)
    for law in laws:
        for x, q in law.items():
            out[x] += q / len(laws)
    return dict(out)


def _per_token(states: Sequence[SequenceState]) -> tuple[float, float]:
    tokens = max(sum(len(s.tokens) for s in states), 1)
    forward = sum(s.stats.forward_tokens for s in states) / tokens
    return forward, sum(s.stats.sequential_steps for s in states) / tokens


def measure(shape: str, point: Point, runs: int) -> Measured:
    """TV to π and the costs of ``point`` on the table shape ``shape``."""
    lm = SHAPES[shape]()
    config = point.config()
    pi = exact.power_distribution(lm, PROMPT, ALPHA, LENGTH)
    if config.method == "power" and not config.reuse_rollouts:
        est = sampled_distribution(ScalablePowerSampler(lm, config), runs)
        length = sum(q * len(x) for x, q in est.distribution.items())
        length /= max(sum(est.distribution.values()), 1e-12)
        tv, noise = exact.total_variation(est.distribution, pi), est.noise
        forward, steps, count = est.forward_tokens / length, est.sequential_steps / length, runs
    else:
        sampler: Sampler = (
            _RecordingSMC(lm, config) if config.method == "smc" else make_sampler(lm, config)
        )
        law: Dist | None = None
        if config.method in ("standard", "low_temperature"):
            law = exact.base_distribution(lm, PROMPT, LENGTH, temperature=_temperature(config))
        elif config.method == "best_of_n":
            law = exact.best_of_n_distribution(lm, PROMPT, config.best_of, LENGTH)
        count = min(runs, 50) if law is not None else runs
        done = [_one_run(sampler, seed) for seed in range(count)]
        forward, steps = _per_token([state for _, state in done])
        if law is not None:
            tv, noise = exact.total_variation(law, pi), 0.0
        else:
            laws = [one for one, _ in done]
            half = _mean(laws[: count // 2]), _mean(laws[count // 2 :])
            tv = exact.total_variation(_mean(laws), pi)
            noise = 0.5 * exact.total_variation(*half)
    return Measured(
        shape,
        point.family,
        point.budget,
        round(tv, 4),
        round(noise, 4),
        round(forward, 2),
        round(steps, 2),
        point.real_cost,
        count,
    )


def _temperature(config: PowerSamplingConfig) -> float:
    return 1.0 if config.method == "standard" else 1.0 / config.alpha


def runs_for(point: Point, runs: int) -> int:
    """Runs per shape: the kernels need fewer (each step averages a whole candidate pool) than
    whole generations, which count one answer each (SMC: one weighted population)."""
    method = dict(point.options).get("method", "power")
    if method == "power" and not dict(point.options).get("reuse_rollouts", False):
        return runs
    if method == "mcmc":
        return 4 * runs
    return 2 * runs


def run(points: Sequence[Point], runs: int, shapes: Sequence[str] | None = None) -> list[Measured]:
    """Every point on every shape."""
    return [
        measure(shape, p, runs_for(p, runs)) for p in points for shape in (shapes or list(SHAPES))
    ]
