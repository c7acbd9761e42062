"""Values users passed that used to loop for ever, run practically for ever or return NaN."""

from __future__ import annotations

import numpy as np
import pytest
from tables import random_table

from power_sampling import PowerSampler, PowerSamplingConfig, power_math


def test_generate_with_max_new_tokens_2_5_is_refused() -> None:
    sampler = PowerSampler(random_table(4, 0), PowerSamplingConfig(method="standard"))
    with pytest.raises(ValueError, match=r"max_new_tokens=2\.5 is invalid: use an integer"):
        sampler.generate([1], max_new_tokens=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_new_tokens=2\.5 is invalid: use an integer"):
        PowerSamplingConfig(max_new_tokens=2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("best_of", 10**9),
        ("num_rollouts", 10**9),
        ("top_k", 10**9),
        ("num_candidates", 10**9),
        ("mcmc_steps", 10**9),
        ("max_new_tokens", 10**12),
    ],
)
def test_huge_counts_are_refused_with_the_reason(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"{field}={value} is invalid: use at most \d+ \(\w+"):
        PowerSamplingConfig(
            **{field: value, "num_candidates": 10**9} if field == "top_k" else {field: value}
        )


@pytest.mark.parametrize("field", ["top_k", "block_size", "seed", "best_of"])
@pytest.mark.parametrize("value", [2.0, True, "3"])
def test_counts_that_are_not_integers_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"{field}=.* is invalid: use an integer"):
        PowerSamplingConfig(**{field: value})


def test_numpy_integers_are_integers() -> None:
    assert PowerSamplingConfig(top_k=np.int64(3)).top_k == 3


@pytest.mark.parametrize("alpha", [1e308, float("nan"), float("inf"), 0.0, -1.0, 1e-300])
def test_alpha_outside_the_finite_range_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"alpha=.* is invalid"):
        PowerSamplingConfig(alpha=alpha)


@pytest.mark.parametrize("method", ["power", "mcmc", "low_temperature"])
@pytest.mark.parametrize("alpha", [1e-6, 1e100])
def test_any_accepted_alpha_gives_finite_results(method: str, alpha: float) -> None:
    config = PowerSamplingConfig(
        method=method, alpha=alpha, block_size=1, top_k=4, num_rollouts=4, rollout_length=2
    )
    out = PowerSampler(random_table(4, 0), config).generate([1], max_new_tokens=3, seed=0)
    assert np.isfinite(out.logprob) and len(out.token_ids) >= 1


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_rollout_of_probability_zero_at_alpha_up_to_1_gives_probabilities(alpha: float) -> None:
    lam = np.array([[-np.inf, -1.0], [-2.0, -3.0]])
    scores = power_math.score_candidates(np.log([0.5, 0.5]), lam, alpha)
    for probs in (scores.p_hat, scores.p_jk, scores.probs):
        assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0)
    # The zero-probability rollout adds p(f)^α = 0 to ζ = Σ p(f)^α: half the weight of M = 2.
    expected = np.log(0.5 * np.exp((alpha - 1) * -1.0))
    assert scores.log_zeta[0] == pytest.approx(expected)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_log_probs_from_a_model_are_an_error_not_a_sample(bad: float) -> None:
    with pytest.raises(ValueError, match="model output: the candidate log-probs"):
        power_math.score_candidates(np.array([bad, -1.0]), np.zeros((2, 2)), 4.0)
    with pytest.raises(ValueError, match="model output: the rollout log-likelihoods"):
        power_math.score_candidates(np.array([-1.0, -1.0]), np.array([[bad, 0], [0, 0]]), 4.0)
