"""Power-SMC against exact distributions on table models.

Bounds, all for S seeded runs (``RUNS``) and fixed seeds:

* Sampling noise. For S independent draws from r, E[TV(empirical, r)] ≤ ½ Σ_x sqrt(r(x)(1-r(x))/S)
  (Jensen per outcome; over k outcomes at most ½ sqrt((k-1)/S), and about sqrt((k-1)/(2πS)) for
  large S). As in test_samplers_exact, tests allow 3x that (``noise``): TV moves by at most 1/S
  per draw, so by McDiarmid it exceeds its mean by t with probability ≤ exp(-2 S t²).
* The law of the answer without resampling (``ess_threshold`` 0) is that of sampling-importance-
  resampling with N whole-sequence draws from q (the model at temperature 1/α, masked under a
  constraint) and weights w = π/q: the α ramp's bridging terms telescope to exactly that weight.
  With φ(t) = Σ_y q(y) e^{-t w(y)} (w normalised to E_q w = 1), the chosen particle is x with
  probability
      p_N(x) = N q(x) w(x) ∫_0^∞ e^{-t w(x)} φ(t)^{N-1} dt        (1/(a+b) = ∫ e^{-t(a+b)} dt),
  computed here by quadrature (``sir_law``): p_1 = q and p_N → π. So the sampler is checked
  against its exact finite-N law, not only in the limit.
* Bias. For self-normalised importance sampling, |E π_N(f) - π(f)| ≤ 12 ρ/N for |f| ≤ 1, with
  ρ = E_q[w²] / E_q[w]² = Σ π²/q (Agapiou et al. 2017, Thm 2.1), so TV(p_N, π) ≤ 6 ρ/N. With
  resampling no closed form is tested; the same 6ρ/N is the stated allowance, plus ``noise``.
  On these tables that allowance is loose (above low temperature's own TV on some), so the
  controls below compare with the proposal directly.

Controls: low-temperature samples (the proposal itself) must fail the exact-law check, and be
farther from π than the largest N by more than the noise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from tables import early_stop_trap
from test_constraints_exact import RANDOM_AUTOMATON, squeezed_branch

from power_sampling import PowerSampler, PowerSamplingConfig, TableLM, exact
from power_sampling.constraints import Constraint
from power_sampling.exact import total_variation
from power_sampling.measure.fidelity import SHAPES

PROMPT = (1,)
ALPHA, LENGTH, RUNS = 4.0, 3, 1000
Dist = dict[tuple[int, ...], float]


def noise(reference: Dist, runs: int = RUNS) -> float:
    return 3 * 0.5 * sum(np.sqrt(r * (1 - r) / runs) for r in reference.values())


def empirical(sampler: PowerSampler, runs: int = RUNS, **options: object) -> Dist:
    counts = Counter(
        tuple(sampler.generate(list(PROMPT), seed=i, **options).token_ids) for i in range(runs)
    )
    return {x: c / runs for x, c in counts.items()}


def targets(lm: TableLM, constraint: Constraint | None = None) -> tuple[Dist, Dist]:
    """π (π_G under ``constraint``) and the proposal's law q (temperature 1/α, masked)."""
    pi = exact.power_distribution(lm, PROMPT, ALPHA, LENGTH, constraint=constraint)
    q = exact.base_distribution(lm, PROMPT, LENGTH, temperature=1 / ALPHA, constraint=constraint)
    return pi, q


def sir_law(pi: Dist, q: Dist, n: int) -> Dist:
    """The exact law p_N of the answer of N-particle SIR (see the module docstring)."""
    keys = list(pi)
    qx = np.array([q[x] for x in keys])
    w = np.array([pi[x] for x in keys]) / qx
    t = np.exp(np.linspace(-30.0, 30.0, 60001))[:, None]  # t = e^s, dt = t ds
    phi = np.exp(-t * w) @ qx
    integrand = np.exp(-t * w) * (phi ** (n - 1))[:, None] * t
    ds = 60.0 / 60000
    integral = ds * (integrand.sum(axis=0) - 0.5 * (integrand[0] + integrand[-1]))
    law = n * qx * w * integral
    assert law.sum() == pytest.approx(1.0, abs=1e-6)
    return dict(zip(keys, law.tolist(), strict=True))


def rho(pi: Dist, q: Dist) -> float:
    return sum(p * p / q[x] for x, p in pi.items())


def smc(lm: TableLM, n: int, **options: object) -> PowerSampler:
    config = PowerSamplingConfig(
        method="smc",
        alpha=ALPHA,
        num_particles=n,
        resample_interval=1,
        alpha_ramp_tokens=0,
        max_new_tokens=LENGTH,
    )
    return PowerSampler(lm, config.replace(**options))


def low_temperature(lm: TableLM, **options: object) -> Dist:
    config = PowerSamplingConfig(
        method="low_temperature", alpha=ALPHA, block_size=1, max_new_tokens=LENGTH
    )
    return empirical(PowerSampler(lm, config), **options)


TABLES: dict[str, Callable[[], TableLM]] = {
    "early-stop-trap": early_stop_trap,
    "late-end": SHAPES["late-end"],
}


@pytest.mark.parametrize(("name", "ramp"), [("early-stop-trap", 0), ("late-end", 2)])
def test_without_resampling_the_answer_has_the_exact_sir_law(name: str, ramp: int) -> None:
    """ess_threshold 0: the empirical law matches the exact p_N at N = 2, 8, 32 (ramp on or
    off: its bridging telescopes), p_N moves towards π, and so does the empirical TV to π."""
    lm = TABLES[name]()
    pi, q = targets(lm)
    tvs = []
    for n in (2, 8, 32):
        law = sir_law(pi, q, n)
        got = empirical(smc(lm, n, ess_threshold=0.0, alpha_ramp_tokens=ramp))
        assert total_variation(got, law) < noise(law)
        assert total_variation(got, pi) < 6 * rho(pi, q) / n + noise(pi)
        tvs.append((total_variation(law, pi), total_variation(got, pi)))
    exact_tvs = [e for e, _ in tvs]
    assert exact_tvs[0] > exact_tvs[1] > exact_tvs[2]
    assert tvs[0][1] - tvs[2][1] > noise(pi)
    # The control: the proposal (low temperature) is far from the finite-N law.
    assert total_variation(low_temperature(lm), sir_law(pi, q, 32)) > noise(sir_law(pi, q, 32))


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize("lookahead", [0, 4])
def test_resampled_tv_to_pi_falls_with_particles(name: str, lookahead: int) -> None:
    """Resampling every token (κ = 0.5, ramp over 2 tokens; with the look-ahead: selection by
    ψ̂ from 4 rollouts, then the second-stage weight): TV to π falls from N = 2 to 32 by more
    than the noise, and at 32 is within the SIR bias allowance; low temperature is farther
    from π than N = 32 by more than the noise."""
    lm = TABLES[name]()
    pi, q = targets(lm)
    options = dict(alpha_ramp_tokens=2, lookahead_rollouts=lookahead, rollout_length=LENGTH)
    tvs = [total_variation(empirical(smc(lm, n, **options)), pi) for n in (2, 8, 32)]
    assert tvs[0] > tvs[1] > tvs[2]
    assert tvs[0] - tvs[2] > noise(pi)
    assert tvs[2] < 6 * rho(pi, q) / 32 + noise(pi)
    # The control: the proposal itself is farther from π than N = 32 by more than the noise.
    assert total_variation(low_temperature(lm), pi) > tvs[2] + noise(pi)


def test_constrained_sir_law_and_pi_g() -> None:
    """Under a constraint the target is π_G ∝ p^α 1[valid]: without resampling the answer has
    the exact SIR law of the masked proposal; with resampling TV to π_G falls with N. On the
    squeezed branch the masked model's power puts 0.97 on ``a`` where π_G puts 0.242."""
    lm, automaton = squeezed_branch()
    pi, q = targets(lm, automaton)
    for n in (2, 16):
        law = sir_law(pi, q, n)
        got = empirical(smc(lm, n, ess_threshold=0.0), constraint=automaton)
        assert total_variation(got, law) < noise(law)
    lm = SHAPES["peaked"]()
    pi, q = targets(lm, RANDOM_AUTOMATON)
    sampler = {n: smc(lm, n, alpha_ramp_tokens=2) for n in (2, 16)}
    tvs = [total_variation(empirical(sampler[n], constraint=RANDOM_AUTOMATON), pi) for n in (2, 16)]
    assert tvs[0] - tvs[1] > noise(pi)
    assert tvs[1] < 6 * rho(pi, q) / 16 + noise(pi)
    low = low_temperature(lm, constraint=RANDOM_AUTOMATON)
    assert total_variation(low, pi) > tvs[1] + noise(pi)


def test_one_call_per_interval_shared_rows_and_stats() -> None:
    """Every interval is one backend call for all particles; stats record each check."""
    lm = SHAPES["late-end"]()
    calls: list[int] = []
    sample = lm.sample

    def counting(prefixes, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(prefixes))
        return sample(prefixes, *args, **kwargs)

    lm.sample = counting  # type: ignore[method-assign]
    config = PowerSamplingConfig(
        method="smc", num_particles=16, resample_interval=2, ess_threshold=1.0, max_new_tokens=6
    )
    gen = PowerSampler(lm, config).generate(list(PROMPT), seed=0)
    assert len(calls) == gen.stats.backend_calls <= 3
    assert calls[0] == 16 and all(c <= 16 for c in calls)
    assert len(gen.stats.ess_history) == len(calls)
    assert gen.stats.resamples == len(calls) - 1  # κ = 1: at every check but the last
    assert all(1 <= u <= 16 for u in gen.stats.unique_ancestors)


def test_streaming_commits_the_decided_prefix_only() -> None:
    """Chunks join to the answer, for any seed; the end token never streams early."""
    lm = SHAPES["late-end"]()
    sampler = smc(lm, 8, ess_threshold=1.0)
    for seed in range(20):
        chunks = list(sampler.stream(list(PROMPT), seed=seed))
        gen = chunks[-1].generation
        assert gen is not None
        assert [t for c in chunks for t in c.token_ids] == gen.token_ids
        assert gen.token_ids == sampler.generate(list(PROMPT), seed=seed).token_ids


def test_mask_eos_changes_the_target_as_documented() -> None:
    """mask_eos_tokens = 1 forbids ending at the first token: the answer never is (EOS,)."""
    lm = early_stop_trap()
    outs = empirical(smc(lm, 8, mask_eos_tokens=1), runs=200)
    assert (0,) not in outs


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_particles", 0),
        ("ess_threshold", 1.5),
        ("resample_interval", 0),
        ("alpha_ramp_tokens", -1),
        ("mask_eos_tokens", -1),
        ("lookahead_rollouts", -1),
    ],
)
def test_smc_fields_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        PowerSamplingConfig(method="smc", **{field: value})
