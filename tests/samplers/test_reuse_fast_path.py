"""The reuse fast path (``reuse_rollouts`` with L <= M): after the first block every candidate is
one of the chosen block's rollouts, so no candidate call runs. It must sample the same power
distribution: exact enumeration on a table model, the bound of test_samplers_exact (3x the
expected TV of n draws plus an allowance for the estimator)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from tables import rarely_ending_table

from power_sampling import PowerSampler, PowerSamplingConfig, exact
from power_sampling.exact import total_variation
from power_sampling.measure.bench import RecordingBackend

RUNS = 2000
# Two blocks: the first block's rollouts (H = B = 2) cover the whole future, so its estimate
# needs no truncation; the second block's candidates are exactly those rollouts.
FAST = dict(
    alpha=4.0,
    block_size=2,
    rollout_length=2,
    top_k=4,
    num_candidates=8,
    num_rollouts=8,
    max_new_tokens=4,
    reuse_rollouts=True,
)


def test_the_fast_path_samples_pi_without_candidate_calls_after_the_first_block() -> None:
    table = rarely_ending_table(3, 1)
    pi = exact.power_distribution(table, [1], FAST["alpha"], FAST["max_new_tokens"])
    recorder = RecordingBackend(table)
    sampler = PowerSampler(recorder, PowerSamplingConfig(**FAST))
    counts: Counter[tuple[int, ...]] = Counter()
    for seed in range(RUNS):
        recorder.calls.clear()
        generation = sampler.generate([1], seed=seed)
        counts[tuple(generation.token_ids)] += 1
        if len(generation.token_ids) == 4:  # both blocks ran (a first block may end the text)
            # First block: its candidate call and its rollouts; second block: no call at all.
            assert len(recorder.calls) == 2
    empirical = {x: c / RUNS for x, c in counts.items()}
    bound = 3 * 0.5 * sum(np.sqrt(q * (1 - q) / RUNS) for q in pi.values()) + 0.01
    assert total_variation(empirical, pi) < bound


def test_the_paper_fast_preset_has_the_critical_path_of_standard_decoding() -> None:
    from power_sampling.measure.bench import expected_sequential_steps

    fast = PowerSamplingConfig.preset("paper-fast")
    paper = PowerSamplingConfig.preset("paper")
    assert fast.replace(num_candidates=32, reuse_rollouts=False) == paper
    fast_steps = expected_sequential_steps(fast, "power", 3072)
    assert fast_steps == expected_sequential_steps(paper, "standard", 3072) == 3073
    assert expected_sequential_steps(paper, "power", 3072) == 5938
