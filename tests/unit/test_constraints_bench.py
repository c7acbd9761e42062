"""The constraint-overhead measurement and its command-line option."""

from __future__ import annotations

import pytest
from test_constraints_exact import PROMPT, squeezed_branch

from power_sampling import PowerSampler, PowerSamplingConfig
from power_sampling.bench import constraint_markdown, constraint_overhead
from power_sampling.cli.bench import parse_constraint
from power_sampling.cli.common import UsageError


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
