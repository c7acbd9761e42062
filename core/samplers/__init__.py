"""One sampler per method, each written once over the backend protocol."""

from __future__ import annotations

from ..backends.base import Backend
from ..backends.continuous import ContinuousBackend
from ..config import PowerSamplingConfig
from .base import Sampler, SequenceState
from .baselines import BestOfNSampler, TemperatureSampler
from .mcmc import MCMCSampler
from .power import ScalablePowerSampler
from .smc import PowerSMCSampler
from .streamed import StreamedSampler


def make_sampler(backend: Backend, config: PowerSamplingConfig) -> Sampler:
    """The sampler that implements ``config.method`` (plain decoding streams on a backend that
    can: :mod:`.streamed`)."""
    if config.method == "power":
        return ScalablePowerSampler(backend, config)
    if config.method == "mcmc":
        return MCMCSampler(backend, config)
    if config.method == "smc":
        return PowerSMCSampler(backend, config)
    if config.method in ("standard", "low_temperature"):
        default = 1.0 if config.method == "standard" else 1.0 / config.alpha
        temperature = _or(config.temperature, default)
        if isinstance(backend, ContinuousBackend):  # one streamed engine request per output
            return StreamedSampler(backend, config, temperature)
        return TemperatureSampler(backend, config, temperature)
    if config.method == "best_of_n":
        return BestOfNSampler(backend, config)
    raise ValueError(f"unknown method {config.method!r}")  # unreachable: config validates it


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


__all__ = [
    "BestOfNSampler",
    "MCMCSampler",
    "PowerSMCSampler",
    "Sampler",
    "ScalablePowerSampler",
    "SequenceState",
    "StreamedSampler",
    "TemperatureSampler",
    "make_sampler",
]
