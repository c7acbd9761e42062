"""Budget-aware constraints against the exact π_G conditioned on completing within the budget,
on table models: a constraint whose outputs can run on (a loop) and that π_G would cut
half-written at ``max_new_tokens``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from tables import random_table
from test_constraints_exact import empirical, noise_bound, power_config

from power_sampling import PowerSampler, TableLM, exact
from power_sampling.constraints import BudgetedConstraint, Constraint, TokenAutomaton
from power_sampling.exact import total_variation

EOS, A, B, C, D = 0, 1, 2, 3, 4
PROMPT = (A,)
LOOP = TokenAutomaton({0: {A: 1, B: 2}, 1: {C: 1, D: 3}, 2: {D: 3}, 3: {}}, accepting={3})
"""a c* d or b d: after ``a`` the output may loop on c past any budget."""


def looping() -> TableLM:
    """After a, c (0.9) is far likelier than d, so most of π_G's outputs are cut mid-loop."""

    def probs(prefix: tuple[int, ...]) -> list[float]:
        generated = prefix[len(PROMPT) :]
        if not generated:
            return [0.0, 0.7, 0.3, 0.0, 0.0]
        if generated[-1] == D:
            return [1.0, 0.0, 0.0, 0.0, 0.0]
        return [0.0, 0.0, 0.0, 0.9, 0.1] if generated[0] == A else [0.0, 0.0, 0.0, 0.0, 1.0]

    return TableLM(probs, EOS, vocab_size=5)


def complete(tokens: Sequence[int], automaton: TokenAutomaton = LOOP) -> bool:
    matcher = automaton.matcher(looping(), {EOS})
    for token in tokens:
        if token == EOS:
            return True
        assert matcher.accept(token)
    return matcher.accept(EOS)


def conditioned(pi: dict[tuple, float], automaton: TokenAutomaton = LOOP) -> dict[tuple, float]:
    kept = {x: w for x, w in pi.items() if complete(x, automaton)}
    total = sum(kept.values())
    return {x: w / total for x, w in kept.items()}


@pytest.mark.parametrize("budget", [2, 3, 4, 5])
def test_the_budgeted_target_is_pi_g_conditioned_on_completing(budget: int) -> None:
    lm, alpha = looping(), 2.0
    pi_g = exact.power_distribution(lm, PROMPT, alpha, budget, constraint=LOOP)
    assert sum(w for x, w in pi_g.items() if not complete(x)) > 0.2  # π_G cuts many outputs
    budgeted = BudgetedConstraint(LOOP, budget)
    pi_b = exact.power_distribution(lm, PROMPT, alpha, budget, constraint=budgeted)
    assert all(complete(x) for x in pi_b)
    assert pi_b == pytest.approx(conditioned(pi_g))


def test_a_random_table_under_a_random_automaton_closes_within_every_budget() -> None:
    automaton = TokenAutomaton(
        {0: {A: 1, B: 2}, 1: {C: 1, D: 2, A: 3}, 2: {B: 2, C: 3}, 3: {D: 3}}, accepting={3}
    )
    lm = random_table(5, 11)
    for budget in range(2, 6):
        pi_g = exact.power_distribution(lm, PROMPT, 3.0, budget, constraint=automaton)
        budgeted = BudgetedConstraint(automaton, budget)
        pi_b = exact.power_distribution(lm, PROMPT, 3.0, budget, constraint=budgeted)
        assert pi_b == pytest.approx(conditioned(pi_g, automaton))


@pytest.mark.parametrize("block_size", [1, 2])
def test_power_sampling_under_a_budget_matches_the_conditioned_target(block_size: int) -> None:
    lm, alpha, budget, runs = looping(), 2.0, 4, 400
    budgeted = BudgetedConstraint(LOOP, budget)
    target = exact.power_distribution(lm, PROMPT, alpha, budget, constraint=budgeted)
    config = power_config(block_size, budget, alpha=alpha)
    draws = empirical(PowerSampler(lm, config), runs, budgeted)
    assert all(complete(x) for x in draws)  # every draw closes, on every seed
    assert total_variation(draws, target) < noise_bound(target, runs) + 0.04


def test_a_narrow_band_only_closes_near_the_end() -> None:
    lm, budget = looping(), 5
    narrow = BudgetedConstraint(LOOP, budget, band=0)
    pi_b = exact.power_distribution(lm, PROMPT, 2.0, budget, constraint=narrow)
    assert all(complete(x) for x in pi_b)
    assert pi_b == pytest.approx(
        conditioned(exact.power_distribution(lm, PROMPT, 2.0, budget, constraint=LOOP))
    )
    assert np.isfinite(list(pi_b.values())).all()


# -- the closing search on a real tokenizer ---------------------------------------------------

NOTE = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "body": {"type": "string"},
        "n": {"type": "integer"},
    },
    "required": ["title", "body", "n"],
}
"""Long strings first, then an integer: a walk that fills the strings is cut half-written."""


def walks(constraint, budget: int, runs: int, seed: int = 0) -> tuple[int, int]:
    """(complete, runs) over random walks that draw uniformly among the allowed tokens of
    ``constraint`` on the tiny byte-level tokenizer, ``budget`` tokens at most."""
    pytest.importorskip("xgrammar")
    from power_sampling.backends.scripted import ScriptedLM
    from power_sampling.constraints import allowed_tokens
    from power_sampling.testing import tiny_tokenizer

    backend = ScriptedLM(tiny_tokenizer(), "x")
    stop = backend.stop.token_ids
    root = constraint.matcher(backend, stop)
    rng, done = np.random.default_rng(seed), 0
    for _ in range(runs):
        matcher = root.fork()
        for _ in range(budget):
            allowed = np.flatnonzero(allowed_tokens(matcher, backend.vocab_size))
            token = int(rng.choice(allowed))
            if token in stop:
                done += 1
                break
            assert matcher.accept(token)
        else:
            done += bool(allowed_tokens(matcher, backend.vocab_size)[sorted(stop)].any())
    return done, runs


@pytest.mark.parametrize("budget", [24, 40])
def test_the_closing_search_completes_every_walk_that_the_plain_schema_cuts(budget: int) -> None:
    inner = Constraint.json_schema(NOTE)
    plain, runs = walks(inner, budget, 30)
    assert plain < runs // 2  # uniform walks rarely close a string by themselves
    closed, _ = walks(BudgetedConstraint.closing(inner, budget), budget, 30)
    assert closed == runs
