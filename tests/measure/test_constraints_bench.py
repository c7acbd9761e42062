"""The constraint-overhead measurement and its command-line option."""

from __future__ import annotations

import pytest
from test_constraints_exact import PROMPT, squeezed_branch

from power_sampling import PowerSampler, PowerSamplingConfig
from power_sampling.cli.bench import parse_constraint
from power_sampling.cli.common import UsageError
from power_sampling.measure.constraint_cost import constraint_markdown, constraint_overhead


def test_constraint_overhead_times_both_ways_on_the_same_prompts() -> None:
    lm, automaton = squeezed_branch()
    config = PowerSamplingConfig(block_size=1, top_k=2, num_rollouts=2, max_new_tokens=3)
    sampler = PowerSampler(lm, config)
    report = constraint_overhead(sampler, [list(PROMPT)] * 2, automaton, samples=2)
    assert [row["method"] for row in report["methods"]] == ["standard", "power"]
    for row in report["methods"]:
        # Every output of this model has 3 tokens, constrained or not: 2 prompts x 2 samples.
        assert row["completion_tokens"] == row["constrained_completion_tokens"] == 12
        assert row["forward_tokens"] > 0 and row["constrained_forward_tokens"] > 0
        assert row["overhead_per_forward_token"] == pytest.approx(
            row["constrained_seconds_per_forward_token"] - row["seconds_per_forward_token"]
        )
    assert "| power |" in constraint_markdown(report)


@pytest.mark.parametrize("spec", ["yaml:x", "regex:", "json-schema:{not json"])
def test_bad_constraint_options_name_the_accepted_forms(spec: str) -> None:
    with pytest.raises(UsageError, match="--constraint"):
        parse_constraint(spec)


def test_ignore_eos_compares_constrained_and_free_at_full_length(tiny_backend) -> None:
    """A constraint that cannot end within the budget, and end tokens ignored on the free side:
    both sides run every output to ``max_new_tokens`` (without ``ignore_eos`` the tiny model's
    free power-sampled outputs end early on these seeds)."""
    from power_sampling.constraints import Constraint

    config = PowerSamplingConfig(
        block_size=4, num_candidates=4, top_k=2, num_rollouts=2, rollout_length=4, max_new_tokens=24
    )
    sampler = PowerSampler(tiny_backend, config)
    report = constraint_overhead(
        sampler, ["Hi", "Count"], Constraint.regex("[a-z]{100}"), ignore_eos=True
    )
    assert report["ignore_eos"] and "end tokens ignored" in constraint_markdown(report)
    for row in report["methods"]:
        assert row["completion_tokens"] == row["constrained_completion_tokens"] == 2 * 24
