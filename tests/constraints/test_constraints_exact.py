"""Constrained sampling against the exact π_G(x) ∝ p(x)^α · 1[x valid] on table models.

Noise bounds as in test_samplers_exact: for n draws from q, E[TV(empirical, q)] ≤
½ Σ_x sqrt(q(x)(1-q(x))/n); tests allow 3x that, plus a stated allowance for the estimator.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from tables import random_table

from power_sampling import PowerSampler, PowerSamplingConfig, TableLM, exact
from power_sampling.backends.base import SampleOutput, StopCondition, TopKOutput
from power_sampling.constraints import Constraint, TokenAutomaton
from power_sampling.exact import total_variation

EOS, A, B, C, D = 0, 1, 2, 3, 4
PROMPT = (A,)


def squeezed_branch() -> tuple[TableLM, TokenAutomaton]:
    """Two branches; the constraint removes most of the mass after ``a`` and none after ``b``.

    p(a) = 0.8, p(b) = 0.2; after a: p(c) = 0.1, p(d) = 0.9, but only c is allowed; after b:
    c and d (0.5 each), both allowed; then EOS (certain). With α = 2:
    π_G(a c) ∝ (0.8·0.1)² = 0.0064, π_G(b c) = π_G(b d) ∝ (0.2·0.5)² = 0.01, so
    π_G = 0.242 / 0.379 / 0.379. The masked model q makes a's future certain
    (q(c | a) = 1), so the power of q puts 0.64 / (0.64 + 0.04·0.5) = 0.97 on a.
    """

    def probs(prefix: tuple[int, ...]) -> list[float]:
        generated = prefix[len(PROMPT) :]
        if not generated:
            return [0.0, 0.8, 0.2, 0.0, 0.0]
        if len(generated) == 1:
            return [0.0, 0.0, 0.0, 0.1, 0.9] if generated[0] == A else [0.0, 0.0, 0.0, 0.5, 0.5]
        return [1.0, 0.0, 0.0, 0.0, 0.0]

    automaton = TokenAutomaton({0: {A: 1, B: 2}, 1: {C: 3}, 2: {C: 3, D: 3}}, accepting={3})
    return TableLM(probs, EOS, vocab_size=5), automaton


RANDOM_AUTOMATON = TokenAutomaton(
    {0: {A: 1, B: 2}, 1: {D: 3}, 2: {A: 3, B: 3, C: 3}, 3: {C: 3, D: 3}}, accepting={2, 3}
)


class MaskedModelAsModel:
    """The naive variant: a backend that reports the masked model's own log-probs
    (log q = log p - μ) with no allowed mass, as if the masked model were the model."""

    def __init__(self, lm: TableLM) -> None:
        self.lm = lm

    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size

    @property
    def stop(self) -> StopCondition:
        return self.lm.stop

    def top_k(self, prefixes: Sequence[Sequence[int]], k: int, **kwargs: Any) -> TopKOutput:
        return self.lm.top_k(prefixes, k, **kwargs)

    def sample(self, *args: Any, **kwargs: Any) -> SampleOutput:
        out = self.lm.sample(*args, **kwargs)
        rows = [
            [dataclasses.replace(c, logprob=c.logprob - c.log_mass, log_mass=0.0) for c in row]
            for row in out.continuations
        ]
        return dataclasses.replace(out, continuations=rows)


def empirical(sampler: PowerSampler, runs: int, constraint: Constraint) -> dict[tuple, float]:
    counts = Counter(
        tuple(sampler.generate(list(PROMPT), seed=i, constraint=constraint).token_ids)
        for i in range(runs)
    )
    return {x: c / runs for x, c in counts.items()}


def noise_bound(reference: dict[tuple, float], runs: int) -> float:
    return 3 * 0.5 * sum(np.sqrt(q * (1 - q) / runs) for q in reference.values())


def power_config(block_size: int, length: int, **extra: Any) -> PowerSamplingConfig:
    return PowerSamplingConfig(
        block_size=block_size,
        top_k=6,
        num_candidates=16,
        num_rollouts=8,
        rollout_length=length,
        max_new_tokens=length,
        **extra,
    )


def test_table_backend_reports_base_logprobs_and_the_allowed_mass() -> None:
    lm, automaton = squeezed_branch()
    root = automaton.matcher(lm, lm.stop.token_ids)
    top = lm.top_k([(*PROMPT, A)], 5, constraint=[_after(root, [A])]).entries[0]
    assert top.token_ids == (C,) and top.logprobs == pytest.approx((np.log(0.1),))
    rows = lm.sample([PROMPT], 50, 3, seed=0, constraint=[root]).continuations[0]
    for row in rows:
        assert row.token_ids in {(A, C, EOS), (B, C, EOS), (B, D, EOS)}
        expected = np.log(0.1) if row.token_ids[0] == A else 0.0  # the mass after a is p(c|a)
        assert row.log_mass == pytest.approx(expected)
        assert row.logprob == pytest.approx(
            np.log(lm.probs(PROMPT)[row.token_ids[0]])
            + (np.log(0.1) if row.token_ids[0] == A else np.log(0.5))
        )
    assert {r.token_ids[0] for r in rows} == {A, B}


def _after(matcher: Any, tokens: list[int]) -> Any:
    forked = matcher.fork()
    for token in tokens:
        assert forked.accept(token)
    return forked


def test_exact_pi_g_is_the_hand_derived_distribution() -> None:
    lm, automaton = squeezed_branch()
    pi_g = exact.power_distribution(lm, PROMPT, 2.0, 3, constraint=automaton)
    assert pi_g == pytest.approx(
        {(A, C, EOS): 0.0064 / 0.0264, (B, C, EOS): 0.01 / 0.0264, (B, D, EOS): 0.01 / 0.0264}
    )
    masked = exact.base_distribution(lm, PROMPT, 3, constraint=automaton)
    assert masked == pytest.approx({(A, C, EOS): 0.8, (B, C, EOS): 0.1, (B, D, EOS): 0.1})


@pytest.mark.parametrize("block_size", [1, 2])
def test_constrained_power_sampling_matches_pi_g_and_the_naive_variant_does_not(
    block_size: int,
) -> None:
    """The importance-weighted sampler matches π_G; reporting the masked model as the model
    (no mass correction: candidates weighted by q, rollouts by q^(α-1)) targets q^α instead,
    which puts 0.97 on a against π_G's 0.24."""
    lm, automaton = squeezed_branch()
    runs, length = 600, 3
    pi_g = exact.power_distribution(lm, PROMPT, 2.0, length, constraint=automaton)
    config = power_config(block_size, length, alpha=2.0)
    tv = total_variation(empirical(PowerSampler(lm, config), runs, automaton), pi_g)
    assert tv < noise_bound(pi_g, runs) + 0.03
    naive = PowerSampler(MaskedModelAsModel(lm), config)
    naive_tv = total_variation(empirical(naive, runs // 3, automaton), pi_g)
    assert naive_tv > 0.5  # q^α is 0.73 away from π_G in total variation


@pytest.mark.parametrize("block_size", [1, 2])
def test_constrained_power_sampling_matches_pi_g_on_a_random_table(block_size: int) -> None:
    """A random model where the constraint cuts different mass on every branch and allows EOS
    only in some states; estimated ζ (not exact as in the hand example) at M = 8."""
    lm, alpha, length, runs = random_table(5, 9), 4.0, 3, 500
    pi_g = exact.power_distribution(lm, PROMPT, alpha, length, constraint=RANDOM_AUTOMATON)
    masked_power = _power_of_masked_model(lm, alpha, length)
    assert total_variation(pi_g, masked_power) > 0.5  # the two targets differ a lot here
    config = power_config(block_size, length, alpha=alpha)
    tv = total_variation(empirical(PowerSampler(lm, config), runs, RANDOM_AUTOMATON), pi_g)
    # Allowance for the estimator: finite M (jackknife bias O(1/M²)) and, in block mode, only
    # the distinct blocks drawn are scored.
    assert tv < noise_bound(pi_g, runs) + 0.04


def _power_of_masked_model(lm: TableLM, alpha: float, length: int) -> dict[tuple, float]:
    table = exact.enumerate_completions(lm, PROMPT, length, constraint=RANDOM_AUTOMATON)
    weights = {x: alpha * lq for x, (_, lq) in table.items()}
    peak = max(weights.values())
    total = sum(np.exp(w - peak) for w in weights.values())
    return {x: float(np.exp(w - peak) / total) for x, w in weights.items()}


@pytest.mark.parametrize(("method", "temperature"), [("standard", 1.0), ("low_temperature", 0.25)])
def test_temperature_baselines_sample_the_masked_model(method: str, temperature: float) -> None:
    lm, runs = random_table(5, 9), 1500
    config = PowerSamplingConfig(method=method, alpha=4.0, block_size=2, max_new_tokens=3)
    reference = exact.base_distribution(
        lm, PROMPT, 3, temperature=temperature, constraint=RANDOM_AUTOMATON
    )
    tv = total_variation(empirical(PowerSampler(lm, config), runs, RANDOM_AUTOMATON), reference)
    assert tv < noise_bound(reference, runs)


def test_best_of_n_ranks_masked_draws_by_base_likelihood() -> None:
    lm, runs = squeezed_branch()[0], 1500
    automaton = squeezed_branch()[1]
    reference = exact.best_of_n_distribution(lm, PROMPT, 3, 3, constraint=automaton)
    # Three draws from q (0.8 on a c) usually contain a c, yet b c / b d win whenever drawn.
    assert reference[(A, C, EOS)] == pytest.approx(0.8**3)
    config = PowerSamplingConfig(method="best_of_n", best_of=3, max_new_tokens=3)
    tv = total_variation(empirical(PowerSampler(lm, config), runs, automaton), reference)
    assert tv < noise_bound(reference, runs)


def test_mcmc_targets_pi_g() -> None:
    """At α = 1, π_G is p conditioned on validity (0.08 / 0.28 = 0.29 on a c), while the chain's
    proposal, the masked model q, puts 0.8 there; Metropolis-Hastings must move it to π_G.

    Mixing: a step leaves a c with probability 1/3 · 0.2 (cut at 0, propose b, accepted) and
    returns with 1/3 · 0.8 · 0.1, so the excess on a c shrinks by 0.91 per step: 0.5 · 0.91^50
    ≈ 0.005 after 50 steps, inside the allowance.
    """
    lm, automaton = squeezed_branch()
    runs, length = 300, 3
    pi_g = exact.power_distribution(lm, PROMPT, 1.0, length, constraint=automaton)
    assert pi_g[(A, C, EOS)] == pytest.approx(0.08 / 0.28)
    config = PowerSamplingConfig(
        method="mcmc", alpha=1.0, block_size=length, mcmc_steps=50, max_new_tokens=length
    )
    tv = total_variation(empirical(PowerSampler(lm, config), runs, automaton), pi_g)
    assert tv < noise_bound(pi_g, runs) + 0.03


def test_a_dead_end_is_a_clear_error() -> None:
    lm, _ = squeezed_branch()
    nowhere = TokenAutomaton({0: {C: 1}}, accepting={1})  # p(c | prompt) = 0
    sampler = PowerSampler(lm, PowerSamplingConfig(method="standard", max_new_tokens=3))
    with pytest.raises(ValueError, match="allows no token of positive probability"):
        sampler.generate(list(PROMPT), seed=0, constraint=nowhere)


def test_automaton_rejects_token_ids_outside_the_vocabulary() -> None:
    lm, _ = squeezed_branch()
    with pytest.raises(ValueError, match=r"transitions\[0\].*\[7\]"):
        TokenAutomaton({0: {7: 1}}, accepting={1}).matcher(lm, {EOS})
