"""The fidelity study's table models and its Rao-Blackwellised estimator of a sampler's law.

The tables are small random models of several shapes (flat and peaked next-token distributions,
early and late endings) over 5 tokens, 4 new tokens after a one-token prompt, where the exact π
is enumerable. :func:`sampled_distribution` estimates the distribution of a power sampler's
completions from one-step kernels (:mod:`.fidelity` and :mod:`.frontier` use it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .. import exact
from ..backends.table import TableLM
from ..samplers import ScalablePowerSampler, SequenceState

PROMPT = (1,)
EOS = 0
VOCAB = 5
LENGTH = 4


def table(seed: int, concentration: float, eos: float | None = None) -> TableLM:
    """A random table model over 5 tokens (0 = EOS), next-token distributions drawn from a
    Dirichlet per context (the last two tokens); ``eos`` fixes the end probability."""
    rng = np.random.default_rng(seed)
    rows: dict[tuple[int, ...], list[float]] = {}

    def probs(prefix: tuple[int, ...]) -> list[float]:
        key = prefix[-2:]
        if key not in rows:
            if eos is None:
                rows[key] = rng.dirichlet(np.full(VOCAB, concentration)).tolist()
            else:
                rest = rng.dirichlet(np.full(VOCAB - 1, concentration)) * (1 - eos)
                rows[key] = [eos, *rest.tolist()]
        return rows[key]

    return TableLM(probs, EOS, vocab_size=VOCAB)


SHAPES: dict[str, Callable[[], TableLM]] = {
    "flat": lambda: table(11, 2.0),
    "peaked": lambda: table(12, 0.3),
    "early-end": lambda: table(13, 0.5, eos=0.35),
    "late-end": lambda: table(14, 0.5, eos=0.03),
}
"""The table shapes of the study (each a fixed seed)."""


Kernel = dict[tuple[int, ...], float]
"""One step's distribution over the blocks it commits."""


def step_kernels(
    sampler: ScalablePowerSampler, prefix: tuple[int, ...], runs: int, seed: int
) -> tuple[list[Kernel], float, float, float]:
    """``runs`` independent steps from ``prefix``: each step's ``probs`` over its candidates
    (the step draws its block from them), the mean forward tokens, mean kept mass and mean
    sequential model steps."""
    rng = np.random.default_rng([seed, *prefix])
    stop = sampler.backend.stop
    kernels, forward, kept, sequential = [], 0.0, 0.0, 0.0
    for _ in range(runs):
        state = SequenceState(PROMPT + prefix, LENGTH - len(prefix), trace=[])
        sampler.step([state], stop, rng)
        assert state.trace
        trace = state.trace[0]
        kernel: Kernel = defaultdict(float)
        for block, prob in zip(trace.candidates, trace.p_jk, strict=True):
            kernel[block] += prob
        kernels.append(kernel)
        forward += state.stats.forward_tokens
        sequential += state.stats.sequential_steps
        kept += trace.kept_mass
    return kernels, forward / runs, kept / runs, sequential / runs


@dataclass
class Estimate:
    """The sampler's completion distribution, composed from per-prefix step kernels."""

    distribution: dict[tuple[int, ...], float]
    noise: float
    forward_tokens: float
    kept_mass: float
    unexplored: float
    sequential_steps: float = 0.0
    """Mean sequential model steps per generation (``GenerationStats.sequential_steps``)."""


def sampled_distribution(
    sampler: ScalablePowerSampler,
    runs: int,
    *,
    seed: int = 0,
    min_reach: float = 1e-3,
    min_steps: int = 20,
) -> Estimate:
    """The distribution of the sampler's completions of :data:`PROMPT`, Rao-Blackwellised.

    The sampler is Markov in the prefix (no rollout reuse), so its distribution is the product of
    one-step kernels Q(block | prefix). Each Q is the mean of the ``probs`` that independent steps
    from that prefix sample from. Prefixes are explored while their probability of being reached
    is at least ``min_reach`` (the rest is ``unexplored`` mass); a prefix reached with
    probability r gets max(``min_steps``, r · runs) steps. ``noise`` is half the TV between the two
    estimates from each half of the steps, about the TV of the whole estimate from its mean.
    """
    # Per explored prefix: its kernel from all steps, and from each half of them.
    explored: dict[tuple[int, ...], list[Kernel]] = {}
    forward = kept = unexplored = steps = sequential = 0.0
    stack: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    while stack:
        prefix, reach = stack.pop()
        if reach < min_reach:
            unexplored += reach
            continue
        count = max(min_steps, math.ceil(reach * runs))
        kernels, cost, share, waits = step_kernels(sampler, prefix, count, seed)
        forward += reach * cost
        sequential += reach * waits
        kept += reach * share
        steps += reach
        halves = [_mean(kernels[: count // 2]), _mean(kernels[count // 2 :])]
        explored[prefix] = [_mean(kernels), *halves]
        for block, q in explored[prefix][0].items():
            if not _terminal(sampler, prefix + block):
                stack.append((prefix + block, reach * q))
    full, first, second = (_compose(explored, sampler, i) for i in range(3))
    noise = 0.5 * exact.total_variation(first, second)
    return Estimate(full, noise, forward, kept / steps, unexplored, sequential)


def _mean(kernels: Sequence[Kernel]) -> Kernel:
    out: Kernel = defaultdict(float)
    for kernel in kernels:
        for block, q in kernel.items():
            out[block] += q / len(kernels)
    return out


def _terminal(sampler: ScalablePowerSampler, tokens: tuple[int, ...]) -> bool:
    return tokens[-1] in sampler.backend.stop.token_ids or len(tokens) >= LENGTH


def _compose(
    explored: dict[tuple[int, ...], list[Kernel]], sampler: ScalablePowerSampler, which: int
) -> dict[tuple[int, ...], float]:
    out: dict[tuple[int, ...], float] = defaultdict(float)
    stack: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    while stack:
        prefix, reach = stack.pop()
        if prefix not in explored:
            continue
        for block, q in explored[prefix][which].items():
            if _terminal(sampler, prefix + block):
                out[prefix + block] += reach * q
            else:
                stack.append((prefix + block, reach * q))
    return dict(out)
