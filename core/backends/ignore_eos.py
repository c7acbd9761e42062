"""``IgnoreEOS``: a backend whose model never ends a continuation by itself, for speed runs.

Serving benchmarks call this ignore-EOS: every continuation runs to its token budget, so methods
are compared at equal lengths whatever the model's taste for ending early (a randomly
initialised model ends wherever its end token happens to be drawn). Samplers build their stop
condition from ``backend.stop`` plus the caller's extra stop tokens and strings; here
``backend.stop`` is empty and a call without ``stop`` gets none, so only what the caller asks
for explicitly still ends a continuation. The log-probs are the model's own, end tokens included:
only the decision to stop is changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Backend, SampleOutput, StopCondition, TopKOutput


class IgnoreEOS:
    """Wrap ``backend`` so that its own end-of-sequence and end-of-turn tokens end nothing.

    Everything else (``vocab_size``, text methods, ``name``, the model) is the wrapped backend's.
    """

    def __init__(self, backend: Backend) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(
                f"IgnoreEOS wraps a power_sampling backend, got {type(backend)!r}; pass e.g. a "
                "TransformersBackend"
            )
        self.backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    @property
    def stop(self) -> StopCondition:
        """No end tokens of the model's own."""
        return StopCondition()

    def top_k(self, prefixes: Sequence[Sequence[int]], k: int, **kwargs: Any) -> TopKOutput:
        return self.backend.top_k(prefixes, k, **kwargs)

    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        n: int,
        max_new_tokens: int | Sequence[int],
        *,
        stop: StopCondition | None = None,
        **kwargs: Any,
    ) -> SampleOutput:
        """The wrapped backend's ``sample`` (which checks the call), with no end tokens of the
        model's own unless ``stop`` names them."""
        stop = StopCondition() if stop is None else stop
        return self.backend.sample(prefixes, n, max_new_tokens, stop=stop, **kwargs)
