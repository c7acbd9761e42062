"""The MCMC baseline with blocks shorter than the answer, against exact enumeration.

A chain that ended inside an early block used to be committed at once, so answers that end early
were drawn about twice as often as under π (TV 0.34 at α = 1, block size 1, 3 tokens). Bounds are
three standard deviations of each outcome's frequency over the draws, summed (``noise_bound``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from tables import random_table

from power_sampling import PowerSampler, PowerSamplingConfig, TableLM, exact
from power_sampling.exact import total_variation

PROMPT = (1,)
LENGTH = 3


def _tv_and_bound(lm: TableLM, alpha: float, block_size: int, runs: int) -> tuple[float, float]:
    config = PowerSamplingConfig(
        method="mcmc", alpha=alpha, block_size=block_size, mcmc_steps=10, max_new_tokens=LENGTH
    )
    sampler = PowerSampler(lm, config)
    counts = Counter(tuple(sampler.generate(list(PROMPT), seed=i).token_ids) for i in range(runs))
    pi = exact.power_distribution(lm, PROMPT, alpha, LENGTH)
    bound = 3 * 0.5 * sum(np.sqrt(q * (1 - q) / runs) for q in pi.values())
    return total_variation({x: c / runs for x, c in counts.items()}, pi), bound


@pytest.mark.parametrize("block_size", [1, 2])
def test_mcmc_at_alpha_1_with_blocks_shorter_than_the_answer_draws_from_the_model(
    block_size: int,
) -> None:
    """At α = 1 the target is p itself and proposals are p: 10 steps mix, so only the draws'
    noise separates the result from p."""
    tv, bound = _tv_and_bound(random_table(4, 0), 1.0, block_size, runs=800)
    assert tv < bound, (tv, bound)


@pytest.mark.parametrize(("seed", "vocab", "block_size"), [(2, 5, 1), (1, 4, 2)])
def test_mcmc_at_alpha_4_with_blocks_shorter_than_the_answer_draws_from_pi(
    seed: int, vocab: int, block_size: int
) -> None:
    """Tables where 10 steps mix at α = 4 (on others the chain needs far more steps; see
    test_mcmc_approaches_pi_as_steps_grow)."""
    tv, bound = _tv_and_bound(random_table(vocab, seed), 4.0, block_size, runs=500)
    assert tv < bound, (tv, bound)
