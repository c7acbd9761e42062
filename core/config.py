"""One flat, frozen settings object for every sampling method, validated once."""

from __future__ import annotations

import math
import operator
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

Method = Literal["power", "mcmc", "smc", "low_temperature", "standard", "best_of_n"]
METHODS: tuple[str, ...] = get_args(Method)

ALPHA_RANGE = (1e-6, 1e100)
"""Accepted alpha: outside it p^alpha is uniform or greedy to float64 precision anyway, and inside
it alpha times any log-prob (or rollout log-likelihood) a model gives stays finite."""

UPPER_BOUNDS: dict[str, tuple[int, str]] = {
    "top_k": (4096, "each candidate gets num_rollouts rollouts every step"),
    "num_rollouts": (4096, "the cost per step is top_k x num_rollouts rollouts"),
    "num_candidates": (65536, "every candidate block is drawn every step"),
    "best_of": (65536, "each sample is a whole generation"),
    "mcmc_steps": (100_000, "each step regenerates a suffix of every sequence"),
    "max_new_tokens": (10_000_000, "no model has a longer context"),
    "rollout_length": (10_000_000, "no model has a longer context"),
    "block_size": (10_000_000, "no model has a longer context"),
    "num_particles": (65536, "every particle is decoded every step"),
    "resample_interval": (10_000_000, "no model has a longer context"),
    "alpha_ramp_tokens": (10_000_000, "no model has a longer context"),
    "mask_eos_tokens": (10_000_000, "no model has a longer context"),
    "lookahead_rollouts": (4096, "each particle gets lookahead_rollouts rollouts every interval"),
}
"""Largest accepted value of each count, and why: a value past it would run practically for
ever (10**9 rollouts) rather than fail, so it is refused up front."""

INT_FIELDS = (
    "top_k",
    "num_rollouts",
    "rollout_length",
    "block_size",
    "num_candidates",
    "mcmc_steps",
    "best_of",
    "max_new_tokens",
    "num_particles",
    "resample_interval",
    "alpha_ramp_tokens",
    "mask_eos_tokens",
    "lookahead_rollouts",
)


class PowerSamplingConfig(BaseModel):
    """Settings of the samplers. Defaults are the paper's (arXiv 2601.21590, §6).

    Invalid values raise ``ValueError`` naming the field, the value and the fix.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    method: str = "power"
    """Which sampler runs: ``power`` (scalable power sampling, the default), ``mcmc`` (Karan & Du's
    Metropolis-Hastings power sampling), ``smc`` (Power-SMC, a particle filter; see
    :mod:`power_sampling.samplers.smc`), ``low_temperature`` (temperature 1/alpha per token),
    ``standard`` (temperature 1) or ``best_of_n`` (``best_of`` samples, highest base
    log-likelihood wins)."""

    temperature: float | None = None
    """Per-token sampling temperature of ``standard`` and ``low_temperature`` (OpenAI's
    ``temperature``): tokens are drawn from p^(1/T), renormalised; 0 = greedy (the most likely
    token at every step); None = the method's own (1 for ``standard``, 1/alpha for
    ``low_temperature``). The other methods take only None or 1; the semantics of every
    OpenAI-style field are in :mod:`power_sampling.fields`."""

    alpha: float = 4.0
    """Power exponent of the target p(x)^alpha; > 0, paper 4 (4-5 works best). 1 = the base
    model. Used by ``power``, ``mcmc``, ``smc`` and ``low_temperature`` (as temperature 1/alpha)."""

    top_k: int = 8
    """K, candidates scored per step: the top-K tokens (``block_size`` 1) or the top-K distinct
    candidate blocks by base log-likelihood; >= 1, paper 8. ``power`` only."""

    num_rollouts: int = 8
    """M, rollouts per candidate that estimate its future quality zeta; >= 1, paper 8. With 1 the
    jackknife is skipped. ``power`` only."""

    rollout_length: int = 192
    """H, maximum tokens per rollout (shortened near ``max_new_tokens``); >= 1, default 192.
    ``power`` only."""

    block_size: int = 192
    """B, tokens decided per step; >= 1, paper 192. 1 = token-level Algorithm 1, larger =
    block-level Algorithm 2. ``power`` and ``mcmc`` (its block growth), and the streaming
    granularity of ``standard`` and ``low_temperature``."""

    num_candidates: int = 32
    """L, candidate blocks drawn per block step before the top-K are kept; >= ``top_k`` when
    ``block_size`` > 1, default 32. Unused at ``block_size`` 1. ``power`` only."""

    jackknife: bool = True
    """Use the jackknife-corrected estimate p_JK (bias O(1/M^2)) instead of the plain ratio
    estimate p-hat (bias O(1/M)); default True. ``power`` only."""

    mcmc_steps: int = 10
    """Metropolis-Hastings steps per block; >= 0, paper 10. ``mcmc`` only."""

    best_of: int = 32
    """N, samples drawn by ``best_of_n``; >= 1, paper 32."""

    max_new_tokens: int = 3072
    """Maximum tokens generated after the prompt; >= 1, paper 3072."""

    seed: int | None = None
    """Seed of the sampler's random generator; the same seed gives the same output (per call:
    every call with this seed repeats). None draws fresh randomness for every call."""

    adaptive_tolerance: float = 0.0
    """Adaptive rollout budget: roll out half of the M rollouts first and skip the rest of a
    step when one candidate already holds at least 1 - tolerance of the estimated power
    distribution, also with any one of those rollouts left out; in [0, 1), default 0 (off:
    always M rollouts). ``power`` only."""

    reuse_rollouts: bool = False
    """Block mode: the chosen block's rollouts, cut to the next block's length, serve as up to M
    of the next step's L candidate blocks, so only the rest are drawn afresh. Off by default:
    those blocks were selected partly for their rollouts (the frontier in docs/fidelity.md
    measures the effect). ``power`` only."""

    num_particles: int = 64
    """N, particles decoded together by ``smc``; >= 1, Power-SMC's scripts 64. The returned
    sample converges to pi as N grows (finite N leaves a bias)."""

    ess_threshold: float = 0.5
    """kappa: ``smc`` resamples when the effective sample size 1/sum(w^2) of the normalised
    weights falls below kappa*N; in [0, 1], Power-SMC's 0.5. 0 never resamples, 1 always."""

    resample_interval: int = 64
    """Tokens between the effective-sample-size checks of ``smc`` (each is one batched backend
    call for all particles); >= 1, Power-SMC's 64. Also the block of the look-ahead."""

    alpha_ramp_tokens: int = 400
    """``smc`` raises the exponent linearly from 1 to alpha over this many first tokens, with
    bridging weights that leave the target pi unchanged; >= 0, Power-SMC's 400. 0 = no ramp."""

    mask_eos_tokens: int = 0
    """``smc``: forbid the end tokens during the first this many generated tokens (Power-SMC's
    code: 100). Changes the target to pi restricted to outputs that do not end that early;
    >= 0, default 0 (off)."""

    lookahead_rollouts: int = 0
    """``smc``: M rollouts of up to ``rollout_length`` tokens after every distinct particle at
    each interval, whose future-quality estimate steers resampling (a look-ahead auxiliary
    particle filter; the target stays pi); >= 0, default 0 (off: plain Power-SMC)."""

    @field_validator(*INT_FIELDS, "seed", mode="before")
    @classmethod
    def _integer(cls, value: Any, info: Any) -> Any:
        # Pydantic would take 2.0 (and True) as an integer; a count must be one.
        if value is None and info.field_name == "seed":
            return None
        return check_integer(info.field_name, value)

    @field_validator("alpha", "adaptive_tolerance", "ess_threshold", "temperature", mode="before")
    @classmethod
    def _real(cls, value: Any, info: Any) -> Any:
        if value is None and info.field_name == "temperature":
            return None
        if isinstance(value, bool | str | bytes):  # pydantic would read "4" or True as numbers
            _fail(info.field_name, value, "use a number")
        return value

    @model_validator(mode="after")
    def _check(self) -> PowerSamplingConfig:
        if self.method not in METHODS:
            _fail("method", self.method, f"use one of {', '.join(METHODS)}")
        if (problem := temperature_problem(self.method, self.temperature)) is not None:
            _fail("temperature", self.temperature, problem)
        low, high = ALPHA_RANGE
        if not (math.isfinite(self.alpha) and low <= self.alpha <= high):
            _fail(
                "alpha",
                self.alpha,
                f"use a finite value in [{low:g}, {high:g}] (the paper uses 4; 1 = the base model;"
                " outside that range p^alpha is uniform or greedy to float precision)",
            )
        at_least_one = ("top_k", "num_rollouts", "rollout_length", "block_size", "best_of")
        for name in (*at_least_one, "num_particles", "resample_interval"):
            if getattr(self, name) < 1:
                _fail(name, getattr(self, name), "use an integer >= 1")
        if self.max_new_tokens < 1:
            _fail("max_new_tokens", self.max_new_tokens, "use an integer >= 1")
        for name in ("mcmc_steps", "alpha_ramp_tokens", "mask_eos_tokens", "lookahead_rollouts"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "use an integer >= 0")
        if not (math.isfinite(self.ess_threshold) and 0.0 <= self.ess_threshold <= 1.0):
            _fail(
                "ess_threshold",
                self.ess_threshold,
                "use a value in [0, 1] (0 = never resample, 1 = always)",
            )
        if self.num_candidates < 1:
            _fail("num_candidates", self.num_candidates, "use an integer >= 1")
        if self.method == "power" and self.block_size > 1 and self.num_candidates < self.top_k:
            _fail(
                "num_candidates",
                self.num_candidates,
                f"block mode keeps the top_k={self.top_k} of num_candidates drawn blocks; "
                f"use num_candidates >= top_k",
            )
        if not 0.0 <= self.adaptive_tolerance < 1.0:
            _fail("adaptive_tolerance", self.adaptive_tolerance, "use a value in [0, 1); 0 = off")
        if self.seed is not None and self.seed < 0:
            _fail("seed", self.seed, "use a non-negative integer or None")
        for name, (most, why) in UPPER_BOUNDS.items():
            if getattr(self, name) > most:
                _fail(name, getattr(self, name), f"use at most {most} ({why})")
        return self

    def replace(self, **changes: Any) -> PowerSamplingConfig:
        """A copy with ``changes`` applied and validated."""
        return PowerSamplingConfig(**{**self.model_dump(), **changes})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PowerSamplingConfig:
        """A named preset (``paper``, ``paper-fast`` or ``cpu``) with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's settings (§6): alpha 4, B = H = 192, K = M = 8, L = 32, 3072 tokens, seed 0.
    "paper": dict(
        alpha=4.0,
        block_size=192,
        rollout_length=192,
        top_k=8,
        num_rollouts=8,
        num_candidates=32,
        max_new_tokens=3072,
        mcmc_steps=10,
        best_of=32,
        seed=0,
    ),
    # Small budgets for a small model on a CPU.
    # K, L, M from the fidelity study (docs/fidelity.md): L = 16 candidates,
    # the top 8 with 2 rollouts each. Each preset's measured TV and cost: results/frontier.md.
    "cpu": dict(
        alpha=4.0,
        block_size=16,
        rollout_length=16,
        top_k=8,
        num_rollouts=2,
        num_candidates=16,
        max_new_tokens=160,
        mcmc_steps=2,
        best_of=8,
    ),
}
# The reuse fast path at the paper's settings: L = M = 8, so after the first block the chosen
# block's kept rollouts are every candidate and a block costs one rollout phase (H steps, no
# candidate call): the critical path of standard decoding (docs/performance.md).
PRESETS["paper-fast"] = dict(PRESETS["paper"], num_candidates=8, reuse_rollouts=True)


TEMPERATURE_METHODS = ("standard", "low_temperature")
"""The methods that draw each token at a temperature of the caller's choosing."""


def temperature_problem(method: str, temperature: float | None) -> str | None:
    """What is wrong with ``temperature`` under ``method`` and the fix, or None when it is
    valid: a number >= 0 for :data:`TEMPERATURE_METHODS`, None or 1 for the others."""
    if temperature is None:
        return None
    if not (math.isfinite(temperature) and temperature >= 0):
        return "use a finite number >= 0 (0 = greedy, 1 = the model itself)"
    if method in TEMPERATURE_METHODS or temperature == 1:
        return None
    if method == "best_of_n":
        return (
            "best_of_n draws its best_of samples from the model itself (temperature 1) and keeps "
            "the most likely; leave temperature unset or 1, or use method='standard' for a "
            "tempered sample"
        )
    return (
        f"method={method!r} samples p(x)^alpha, which no per-token temperature gives exactly; "
        "alpha controls the sharpening (alpha 4 is the paper's; 1 = the model itself), so set "
        "alpha instead and leave temperature unset or 1, or use method='standard' or "
        "'low_temperature' for a per-token temperature (0 = greedy)"
    )


def check_integer(field: str, value: Any) -> int:
    """``value`` as an ``int`` if it is an integer (numpy integers included; not a bool, float
    or string), else a ValueError naming ``field``."""
    if isinstance(value, bool | str | bytes | float):
        _fail(field, value, "use an integer")
    try:
        return operator.index(value)
    except TypeError:
        _fail(field, value, "use an integer")
        raise  # unreachable: _fail raises


def _fail(field: str, value: object, fix: str) -> Any:
    raise ValueError(f"{field}={value!r} is invalid: {fix}")
