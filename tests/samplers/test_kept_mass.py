"""The kept-mass diagnostic: the share of the candidate pool's power mass the top K hold."""

from __future__ import annotations

import numpy as np
import pytest

from power_sampling import PowerSampler, PowerSamplingConfig, TableLM
from power_sampling.power_math import dropped_token_mass, kept_mass

EOS = 0
FIRST = np.array([0.5, 0.3, 0.2])  # tokens 1, 2, 3 at the first two positions


def certain_future() -> TableLM:
    """Two free positions (tokens 1-3 at 0.5/0.3/0.2), then token 1 for sure: every block of
    two has ζ = 1 exactly, so the kept share is Σ_kept p^α / Σ_pool p^α."""

    def probs(prefix: tuple[int, ...]) -> list[float]:
        if len(prefix) <= 2:  # the prompt is one token
            return [0.0, *FIRST]
        return [0.0, 1.0, 0.0, 0.0]

    return TableLM(probs, EOS, vocab_size=4)


class FirstCallRecorder(TableLM):
    """Remembers the blocks of the first ``sample`` call (the candidate pool of step one)."""

    pool: list[tuple[int, ...]] | None = None

    def sample(self, prefixes, n, max_new_tokens, **kwargs):  # type: ignore[no-untyped-def]
        out = super().sample(prefixes, n, max_new_tokens, **kwargs)
        if self.pool is None:
            self.pool = [row[0].token_ids for row in out.continuations]
        return out


def test_kept_mass_formula() -> None:
    # Kept: p = 0.5 (ζ = 0.2) and 0.3 (ζ = 0.4); dropped with a future: p = 0.1; ended: p = 0.05.
    alpha = 2.0
    kept = 0.25 * 0.2 + 0.09 * 0.4
    zeta_bar = (0.2 + 0.4) / 2
    expected = kept / (kept + zeta_bar * 0.01 + 0.0025)
    got = kept_mass(
        np.log([0.5, 0.3]),
        np.log([0.2, 0.4]),
        alpha,
        dropped_future=2 * np.log(0.1),
        dropped_ended=2 * np.log(0.05),
    )
    assert got == pytest.approx(expected, rel=1e-12)
    assert kept_mass(np.log([0.5, 0.3]), np.log([0.2, 0.4]), alpha) == 1.0


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 4.0])
def test_dropped_token_mass_bounds_the_truth(alpha: float) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = np.sort(rng.dirichlet(np.full(7, 0.4)))[::-1]
        k = int(rng.integers(1, 7))
        bound = dropped_token_mass(np.log(p[:k]), alpha, 7)
        truth = np.log(np.sum(p[k:] ** alpha))
        assert bound >= truth - 1e-9


def test_block_step_reports_the_exact_share_when_zeta_is_known() -> None:
    lm = FirstCallRecorder(certain_future().probs, EOS, vocab_size=4)
    alpha = 2.0
    config = PowerSamplingConfig(
        alpha=alpha,
        block_size=2,
        top_k=2,
        num_candidates=12,
        num_rollouts=2,
        rollout_length=2,
        max_new_tokens=4,
    )
    generation = PowerSampler(lm, config).generate([1], seed=3, trace=True)
    assert lm.pool is not None
    mass = {b: float(np.prod(FIRST[[t - 1 for t in b]])) ** alpha for b in set(lm.pool)}
    kept = sorted(mass.values(), reverse=True)[:2]
    assert len(mass) > 2  # the seed draws more distinct blocks than K, so some are dropped
    step = generation.trace[0]
    assert step.kept_mass == pytest.approx(sum(kept) / sum(mass.values()), rel=1e-9)
    assert generation.stats.min_kept_mass == pytest.approx(
        min(s.kept_mass for s in generation.trace)
    )
    assert generation.to_dict()["trace"][0]["kept_mass"] == step.kept_mass
    assert generation.to_dict()["stats"]["min_kept_mass"] < 1.0


def test_token_step_share_is_a_lower_estimate() -> None:
    # Top-1 of (0.5, 0.3, 0.2) at α = 2: the bound puts 0.5 · 0.5 on the two dropped tokens, so
    # the reported share is 0.25 / 0.5; the exact share (ζ equal for all) is 0.25 / 0.38.
    config = PowerSamplingConfig(
        alpha=2.0, block_size=1, top_k=1, num_rollouts=2, rollout_length=3, max_new_tokens=3
    )
    generation = PowerSampler(certain_future(), config).generate([1], seed=0, trace=True)
    assert generation.trace[0].kept_mass == pytest.approx(0.5, rel=1e-9)
    assert generation.trace[0].kept_mass < 0.25 / 0.38


def test_nothing_dropped_keeps_everything() -> None:
    for block_size, top_k in ((1, 4), (2, 12)):
        config = PowerSamplingConfig(
            alpha=4.0,
            block_size=block_size,
            top_k=top_k,
            num_candidates=12,
            num_rollouts=2,
            rollout_length=2,
            max_new_tokens=4,
        )
        generation = PowerSampler(certain_future(), config).generate([1], seed=1, trace=True)
        assert generation.stats.min_kept_mass == 1.0
