"""The estimator against hand-derived numbers and brute-force enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from tables import EOS, random_table

from power_sampling.power_math import (
    log_zeta,
    logsumexp,
    power_distribution,
    score_candidates,
)


def test_alpha_one_recovers_the_base_distribution_over_candidates() -> None:
    rng = np.random.default_rng(0)
    log_p = np.log([0.5, 0.3, 0.15])
    rollouts = rng.normal(-20.0, 5.0, size=(3, 8))
    scores = score_candidates(log_p, rollouts, alpha=1.0)
    expected = np.array([0.5, 0.3, 0.15]) / 0.95
    np.testing.assert_allclose(scores.p_hat, expected, atol=1e-12)
    np.testing.assert_allclose(scores.p_jk, expected, atol=1e-12)
    np.testing.assert_allclose(scores.log_zeta, 0.0, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0, 8.0])
def test_estimates_sum_to_one(alpha: float) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        k, m = rng.integers(2, 6), rng.integers(2, 9)
        scores = score_candidates(
            rng.normal(-2, 1, size=k), rng.normal(-30, 10, size=(k, m)), alpha
        )
        assert scores.p_hat.sum() == pytest.approx(1.0, abs=1e-12)
        assert scores.p_jk.sum() == pytest.approx(1.0, abs=1e-12)
        assert scores.p_jk_raw is not None
        assert scores.p_jk_raw.sum() == pytest.approx(1.0, abs=1e-9)


def test_hand_derived_jackknife() -> None:
    """Two equally likely candidates, α = 2, M = 2, so (α-1)Λ = log p(f) per rollout.

    Candidate 0's rollouts have p(f) = 0.5 and 0.1: ζ̂ = 0.3. Candidate 1's: 0.2 and 0.2: ζ̂ = 0.2.
    p̂ ∝ 0.5²·0.3 : 0.5²·0.2 = 0.6 : 0.4.
    Leave rollout 1 out: ζ = 0.1 : 0.2 -> p = 1/3 : 2/3.
    Leave rollout 2 out: ζ = 0.5 : 0.2 -> p = 5/7 : 2/7.
    p̂_JK(0) = 2·0.6 - ½(1/3 + 5/7) = 1.2 - 11/21;  p̂_JK(1) = 0.8 - ½(2/3 + 2/7) = 0.8 - 10/21.
    """
    log_p = np.log([0.5, 0.5])
    rollouts = np.log([[0.5, 0.1], [0.2, 0.2]])
    scores = score_candidates(log_p, rollouts, alpha=2.0)
    np.testing.assert_allclose(np.exp(scores.log_zeta), [0.3, 0.2], atol=1e-12)
    np.testing.assert_allclose(scores.p_hat, [0.6, 0.4], atol=1e-12)
    np.testing.assert_allclose(scores.p_jk, [1.2 - 11 / 21, 0.8 - 10 / 21], atol=1e-12)


def test_negative_jackknife_entries_are_clipped_and_renormalised() -> None:
    """ζ-values (p(f) with α = 2): candidate 0 has 1.0 and 1e-4, candidate 1 has 0.01 twice.

    p̂(0) = 0.50005 / 0.51005; leave-one-out p(0) = 1e-4/0.0101 and 1/1.01, so
    raw p̂_JK(0) = 2 p̂(0) - ½(0.0099 + 0.9901) ≈ 1.46 and p̂_JK(1) ≈ -0.46 < 0 -> clipped to 0.
    """
    scores = score_candidates(np.log([0.5, 0.5]), np.log([[1.0, 1e-4], [0.01, 0.01]]), 2.0)
    assert scores.p_jk_raw is not None
    raw0 = 2 * 0.50005 / 0.51005 - 0.5 * (1e-4 / 0.0101 + 1 / 1.01)
    assert scores.p_jk_raw[0] == pytest.approx(raw0, abs=1e-12)
    assert scores.p_jk_raw[1] < 0
    np.testing.assert_allclose(scores.p_jk, [1.0, 0.0])
    np.testing.assert_allclose(scores.probs, scores.p_jk)


def test_single_rollout_skips_the_jackknife() -> None:
    scores = score_candidates(np.log([0.7, 0.3]), [[-3.0], [-1.0]], alpha=4.0)
    assert scores.p_jk_raw is None
    np.testing.assert_array_equal(scores.p_jk, scores.p_hat)


def test_jackknife_off_uses_the_ratio_estimate() -> None:
    scores = score_candidates(
        np.log([0.7, 0.3]), [[-3.0, -1.0], [-1.0, -2.0]], 4.0, jackknife=False
    )
    np.testing.assert_array_equal(scores.probs, scores.p_hat)


def test_leave_one_out_estimates_are_the_estimate_without_that_rollout() -> None:
    log_p, lam = np.log([0.5, 0.5]), np.array([[-1.0, -30.0, -2.0], [-20.0, -20.0, -3.0]])
    scores = score_candidates(log_p, lam, alpha=4.0, jackknife=False)
    assert scores.p_loo is not None and scores.p_loo.shape == (3, 2)
    for s in range(3):
        alone = score_candidates(log_p, np.delete(lam, s, axis=1), alpha=4.0, jackknife=False)
        np.testing.assert_allclose(scores.p_loo[s], alone.p_hat)


def test_settled_needs_dominance_that_survives_leaving_out_any_rollout() -> None:
    log_p = np.log([0.5, 0.5])
    # One lucky rollout of candidate 0 makes it look certain; without it candidate 1 wins.
    lucky = score_candidates(log_p, [[-1.0, -30.0], [-20.0, -20.0]], alpha=4.0)
    assert lucky.probs.max() > 0.99
    assert not lucky.settled(0.05)
    # Both rollouts favour candidate 0: settled.
    steady = score_candidates(log_p, [[-1.0, -2.0], [-20.0, -20.0]], alpha=4.0)
    assert steady.settled(0.05)
    # Close candidates are never settled; a single rollout has no leave-one-out to check.
    assert not score_candidates(log_p, [[-1.0, -1.5], [-1.2, -1.1]], alpha=4.0).settled(0.05)
    assert score_candidates(log_p, [[-1.0], [-20.0]], alpha=4.0).settled(0.05)


def test_candidates_without_future_have_zeta_one() -> None:
    """An ended candidate is scored by p^α alone, whatever its (ignored) rollout row holds."""
    scores = score_candidates(
        np.log([0.5, 0.5]), [[np.nan, np.nan], [-2.0, -2.0]], 2.0, has_future=[False, True]
    )
    # ζ(1) = exp((α-1)·(-2)) = e^-2 for both rollouts.
    assert scores.log_zeta[0] == 0.0
    assert scores.log_zeta[1] == pytest.approx(-2.0)
    expected = np.array([1.0, np.exp(-2.0)]) / (1 + np.exp(-2.0))
    np.testing.assert_allclose(scores.p_hat, expected, atol=1e-12)
    np.testing.assert_allclose(scores.p_jk, expected, atol=1e-12)


@pytest.mark.parametrize("alpha", [4.0, 0.5, 16.0])
def test_extreme_log_likelihoods_stay_finite(alpha: float) -> None:
    rollouts = np.array([[-5000.0, -4990.0, -5010.0], [-4000.0, -6000.0, -5500.0]])
    scores = score_candidates([-800.0, -790.0], rollouts, alpha)
    for values in (scores.log_zeta, scores.p_hat, scores.p_jk):
        assert np.all(np.isfinite(values))
    assert scores.p_jk.sum() == pytest.approx(1.0)
    assert logsumexp([-np.inf, -np.inf]) == -np.inf  # all -inf gives -inf, not NaN


def test_inputs_are_not_mutated() -> None:
    log_p = np.log([0.6, 0.4])
    rollouts = np.array([[-1.0, -2.0], [-3.0, -4.0]])
    before = (log_p.copy(), rollouts.copy())
    score_candidates(log_p, rollouts, 4.0)
    np.testing.assert_array_equal(log_p, before[0])
    np.testing.assert_array_equal(rollouts, before[1])


def _brute_force_next_token_power(lm, prompt, alpha, length):
    """Σ over every full sequence of p(x)^α, grouped by first token: independent of exact.py."""
    mass: dict[int, float] = {}

    def walk(seq: tuple[int, ...], prob: float) -> None:
        generated = len(seq) - len(prompt)
        if generated == length or (generated and seq[-1] == EOS):
            mass[seq[len(prompt)]] = mass.get(seq[len(prompt)], 0.0) + prob**alpha
            return
        for token, p in enumerate(lm.probs(seq)):
            if p > 0:
                walk((*seq, token), prob * p)

    walk(tuple(prompt), 1.0)
    total = sum(mass.values())
    return {t: m / total for t, m in mass.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_exact_futures_reproduce_brute_force(seed: int) -> None:
    """Feeding every future with weight p(f) makes ζ̂ exact: p̂ = the true next-token p_pow."""
    lm, prompt, alpha, length = random_table(4, seed), (1,), 3.0, 4
    first = lm.probs(prompt)
    tokens = [t for t in range(4) if first[t] > 0]
    futures = []
    for t in tokens:
        rows = []
        if t != EOS:
            for tail_len in range(1, length):
                for tail in itertools.product(range(4), repeat=tail_len):
                    if EOS in tail[:-1] or (tail_len < length - 1 and tail[-1] != EOS):
                        continue
                    logp = sum(
                        np.log(lm.probs((*prompt, t, *tail[:i]))[tail[i]]) for i in range(tail_len)
                    )
                    if np.isfinite(logp):
                        rows.append(logp)
        futures.append(rows)
    width = max(len(r) for r in futures) or 1
    lam = np.zeros((len(tokens), width))
    log_w = np.full((len(tokens), width), -np.inf)
    for i, rows in enumerate(futures):
        lam[i, : len(rows)] = rows
        log_w[i, : len(rows)] = rows
    lz = np.where([len(r) > 0 for r in futures], log_zeta(lam, alpha, log_w), 0.0)
    p = power_distribution(np.log(first[tokens]), lz, alpha)
    brute = _brute_force_next_token_power(lm, prompt, alpha, length)
    for i, t in enumerate(tokens):
        assert p[i] == pytest.approx(brute[t], abs=1e-9)
