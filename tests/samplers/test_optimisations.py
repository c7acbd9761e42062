"""Options beyond the paper: each must save work, and must not move the sampled distribution.

Fidelity uses the bound of test_samplers_exact: 3x the expected TV of n draws, plus the same
allowance for the estimator as without the option.
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest
from tables import rarely_ending_table

from power_sampling import PowerSampler, PowerSamplingConfig, TableLM, exact
from power_sampling.exact import total_variation
from power_sampling.measure.bench import RecordingBackend

LENGTH = 6
BASE = dict(
    alpha=4.0,
    block_size=2,
    top_k=4,
    num_candidates=8,
    num_rollouts=8,
    rollout_length=LENGTH,
    max_new_tokens=LENGTH,
)


@functools.cache
def model() -> TableLM:
    """One table for the exact target and every run: its rows are drawn as contexts are first
    asked for, so the exact enumeration (run first) fixes them all before any sampler runs."""
    table = rarely_ending_table(3, 1)
    exact.power_distribution(table, [1], BASE["alpha"], LENGTH)
    return table


def run(config: PowerSamplingConfig, runs: int):
    sampler = PowerSampler(model(), config)
    generations = [sampler.generate([1], seed=i) for i in range(runs)]
    counts = Counter(tuple(g.token_ids) for g in generations)
    empirical = {x: c / runs for x, c in counts.items()}
    return empirical, generations


def mean_stat(generations, field: str) -> float:
    return float(np.mean([getattr(g.stats, field) for g in generations]))


@pytest.fixture(scope="module")
def baseline():
    return run(PowerSamplingConfig(**BASE), 2000)


@pytest.fixture(scope="module")
def pi():
    return exact.power_distribution(model(), [1], BASE["alpha"], LENGTH)


def bound(pi: dict, runs: int) -> float:
    return 3 * 0.5 * sum(np.sqrt(q * (1 - q) / runs) for q in pi.values()) + 0.01


def test_rollout_reuse_draws_fewer_candidates_at_the_same_fidelity(baseline, pi) -> None:
    reused, generations = run(PowerSamplingConfig(**BASE, reuse_rollouts=True), 2000)
    # After the first block, M = 8 of the L = 8 candidates come from the previous rollouts.
    assert mean_stat(generations, "candidate_tokens") < 0.7 * mean_stat(
        baseline[1], "candidate_tokens"
    )
    assert total_variation(baseline[0], pi) < bound(pi, 2000)
    assert total_variation(reused, pi) < bound(pi, 2000)


def test_adaptive_budget_saves_rollouts_at_the_same_fidelity(baseline, pi) -> None:
    adaptive, generations = run(PowerSamplingConfig(**BASE, adaptive_tolerance=0.05), 2000)
    assert mean_stat(generations, "rollout_tokens") < 0.8 * mean_stat(baseline[1], "rollout_tokens")
    assert total_variation(adaptive, pi) < bound(pi, 2000)


def test_adaptive_budget_stops_after_the_first_round_only_when_settled() -> None:
    config = PowerSamplingConfig(**BASE, adaptive_tolerance=0.05)
    sampler = PowerSampler(rarely_ending_table(3, 1), config)
    steps = [s for i in range(50) for s in sampler.generate([1], seed=i, trace=True).trace]
    early = 0
    for step in steps:
        scored = sum(1 for lz in step.log_zeta if lz != 0.0)  # candidates that were rolled out
        if scored and step.num_rollouts == 4 * scored:  # first round (M/2) only
            early += 1
            assert max(step.p_jk) >= 0.95  # allowed only when one candidate holds 1 - tolerance
        elif scored:
            assert step.num_rollouts == 8 * scored
    assert early > 0, "no step stopped after the first round"


def test_a_certain_step_spends_no_rollouts() -> None:
    """A model with one possible block: the choice is certain, so no rollout is drawn."""
    lm = TableLM(lambda prefix: [0.0, 1.0, 0.0], eos_token_id=0)
    generation = PowerSampler(lm, PowerSamplingConfig(**BASE)).generate([1], seed=0)
    assert generation.token_ids == [1] * LENGTH
    assert generation.stats.rollout_tokens == 0


def test_rollout_reuse_draws_every_sequences_blocks_in_one_call() -> None:
    """Sequences that reuse different numbers of blocks (here M/2 or M rollouts, with the
    adaptive budget) still share one candidate call per step: separate calls would decode one
    after another."""
    recorder = RecordingBackend(rarely_ending_table(3, 1, eos=0.0))
    config = PowerSamplingConfig(**BASE, reuse_rollouts=True, adaptive_tolerance=0.05)
    prompts = [[1], [2], [1, 1], [1, 2], [2, 1], [2, 2], [1, 1, 1], [2, 2, 2]]  # all distinct
    generations = PowerSampler(recorder, config).generate_batch(prompts, seed=0)
    steps = max(g.stats.steps for g in generations)
    candidate_calls = [call for call in recorder.calls if call.n == 1]  # rollouts: n = M
    assert len(candidate_calls) == steps
    # Sequences did reuse blocks, and different numbers of them within one call.
    per_prefix = [sorted(Counter(c.prefixes).values()) for c in candidate_calls[1:]]
    assert any(counts[0] < counts[-1] for counts in per_prefix if counts)


def test_adaptive_tolerance_trades_rollouts_for_fidelity_within_the_bound() -> None:
    """On a flat table (no end token, so every step is a real choice), a larger tolerance
    settles more steps after the first round: fewer rollouts, with the distribution still
    within the noise bound of exact π at every tolerance."""
    lm = rarely_ending_table(4, 1, eos=0.0, concentration=2.0)
    pi = exact.power_distribution(lm, [1], BASE["alpha"], LENGTH)
    runs, rollouts = 1500, []
    for tolerance in (0.0, 0.05, 0.2):
        config = PowerSamplingConfig(**BASE, adaptive_tolerance=tolerance)
        generations = PowerSampler(lm, config).generate_batch([[1]] * runs, seed=7)
        counts = Counter(tuple(g.token_ids) for g in generations)
        assert total_variation({x: c / runs for x, c in counts.items()}, pi) < bound(pi, runs)
        rollouts.append(mean_stat(generations, "rollout_tokens"))
    assert rollouts[0] > rollouts[1] > rollouts[2]
