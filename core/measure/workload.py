"""The bench's workload: its prompts, and a sampler whose model's end tokens end nothing."""

from __future__ import annotations

import numpy as np

from ..backends.base import Backend
from ..backends.ignore_eos import IgnoreEOS
from ..samplers.power_sampler import PowerSampler

BENCH_PROMPTS: tuple[str, ...] = (
    "A baker makes 24 muffins and sells 3 boxes of 6. How many muffins are left?",
    "Tom has 5 apples, buys 7 more and gives 4 away. How many apples does he have?",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
    "Sara reads 12 pages a day. How many pages does she read in 2 weeks?",
)


def token_prompts(backend: Backend, count: int, length: int = 48) -> list[list[int]]:
    """``count`` fixed token-id prompts of ``length`` ids (no end tokens), for backends without a
    tokenizer such as ``random:<architecture>`` models; the same for every run."""
    rng = np.random.default_rng(0)
    ends = backend.stop.token_ids
    allowed = np.array([t for t in range(min(backend.vocab_size, 32768)) if t not in ends])
    return [[int(t) for t in rng.choice(allowed, size=length)] for _ in range(count)]


def full_length(sampler: PowerSampler) -> PowerSampler:
    """The sampler over its backend with the end tokens ignored
    (:class:`~power_sampling.backends.IgnoreEOS`), so every method runs to ``max_new_tokens``."""
    return PowerSampler(IgnoreEOS(sampler.backend), sampler.config)
