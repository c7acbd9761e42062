"""Backends whose engine batches concurrent calls itself, and the cancellation they watch.

A :class:`ContinuousBackend` runs on an engine with its own continuous batching (vLLM's
``AsyncLLM``): calls from many threads go to the engine as they come and the engine schedules
them together, so nothing in front of it needs to merge them. It also offers
:meth:`~ContinuousBackend.generate_stream`, plain decoding of one prefix as one engine request
whose tokens arrive as they are drawn; the plain-decoding samplers use it when it is there
(:mod:`power_sampling.samplers.streamed`). Every other backend keeps the two protocol calls
only, and the engine's batcher merges them.

Such a backend watches :func:`~power_sampling.backends.cancel.cancel_requested` while it waits
on its engine, so a cancelled request leaves the engine within one poll.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .base import Backend, Continuation, StopCondition

__all__ = ["ContinuousBackend", "Streamed"]


@dataclass(frozen=True)
class Streamed:
    """One piece of a :meth:`ContinuousBackend.generate_stream`: the tokens drawn since the last
    piece and, on the last piece only, the whole continuation (its tokens, base log-probs and
    finished flag) with the token positions the engine ran."""

    token_ids: tuple[int, ...]
    done: Continuation | None = None
    forward_tokens: int = 0


@runtime_checkable
class ContinuousBackend(Backend, Protocol):
    """A backend over an engine that batches concurrent calls itself (see the module docstring)."""

    def generate_stream(
        self,
        prefix: tuple[int, ...],
        max_new_tokens: int,
        *,
        seed: int,
        temperature: float,
        stop: StopCondition,
    ) -> Iterator[Streamed]:
        """One continuation of ``prefix`` of at most ``max_new_tokens`` tokens at
        ``temperature`` (no truncation), ended by ``stop``, as it is drawn. The tokens of the
        last piece come with its ``done``; closing the iterator early aborts the engine's
        request."""
        ...
