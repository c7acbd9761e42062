"""The frontier study: its files, and its estimators against laws known otherwise."""

from __future__ import annotations

import datetime
import importlib.util
import json
from pathlib import Path

import numpy as np
from test_smc_exact import sir_law

from power_sampling import PowerSamplingConfig, exact
from power_sampling.exact import total_variation
from power_sampling.measure import frontier
from power_sampling.measure.fidelity import main
from power_sampling.measure.tables import LENGTH, PROMPT, SHAPES, sampled_distribution
from power_sampling.samplers import ScalablePowerSampler


def test_quick_frontier_writes_table_json_and_plot(tmp_path: Path) -> None:
    """The tiny grid writes its files, with the command and date; SMC's TV to π falls from
    N = 2 to N = 16 on every shape by more than both noises."""
    assert main(["--frontier", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "frontier.md").read_text()
    assert "`python -m power_sampling.measure.fidelity --frontier --quick --out" in md
    assert datetime.date.today().isoformat() in md
    assert "## Presets at their measured points" in md and "| cpu | power block" in md
    results = json.loads((tmp_path / "frontier.json").read_text())["results"]
    assert {r["shape"] for r in results} == set(SHAPES)
    smc = {(r["budget"], r["shape"]): r for r in results if r["family"] == "smc"}
    for shape in SHAPES:
        small, large = smc[("N=2", shape)], smc[("N=16", shape)]
        assert large["tv"] + large["noise"] + small["noise"] < small["tv"], shape
        assert large["forward_per_token"] > small["forward_per_token"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trajectory_estimate_matches_the_kernel_estimate() -> None:
    """Where both apply (power without reuse), averaging whole runs' step probabilities agrees
    with the composed kernels within their noises."""
    lm = SHAPES["early-end"]()
    point = frontier.block(4, 8, 2)
    sampler = ScalablePowerSampler(lm, point.config())
    kernels = sampled_distribution(sampler, 200)
    laws = [frontier._one_run(sampler, seed)[0] for seed in range(400)]
    halves = frontier._mean(laws[:200]), frontier._mean(laws[200:])
    noise = 0.5 * total_variation(*halves)
    assert total_variation(frontier._mean(laws), kernels.distribution) < 3 * (noise + kernels.noise)


def test_smc_final_weights_estimate_the_exact_sir_law() -> None:
    """Without resampling the answer's law is the exact SIR law p_N: the final normalised
    weights, averaged over runs, estimate it within 3x their noise."""
    lm = SHAPES["late-end"]()
    config = PowerSamplingConfig(
        method="smc", alpha=4.0, num_particles=4, ess_threshold=0.0, max_new_tokens=LENGTH
    )
    pi = exact.power_distribution(lm, PROMPT, 4.0, LENGTH)
    q = exact.base_distribution(lm, PROMPT, LENGTH, temperature=0.25)
    law = sir_law(pi, q, 4)
    sampler = frontier._RecordingSMC(lm, config)
    laws = [frontier._one_run(sampler, seed)[0] for seed in range(600)]
    assert all(np.isclose(sum(one.values()), 1.0) for one in laws)
    noise = 0.5 * total_variation(frontier._mean(laws[:300]), frontier._mean(laws[300:]))
    assert total_variation(frontier._mean(laws), law) < 3 * noise + 0.01
