"""Cancellation inside model calls: a cancelled request stops costing model steps at once.

Two granularities, one for each way a request reaches the model:

* :func:`cancellation` / :func:`cancel_requested`: the request's own thread calls the backend
  directly (an engine that batches by itself, :mod:`.continuous`). The backend polls
  :func:`cancel_requested` while it waits, aborts its engine requests and raises
  :class:`Cancelled`.
* :func:`abandon_when` / :func:`abandoned`: many requests share one merged call (the batcher),
  and only some of its prefixes are abandoned.

A merged backend call (:mod:`power_sampling.engine.batcher`) serves many requests at once; when
one of them is cancelled in the middle of a long decode (a rollout, a candidate block, a whole
standard answer), its rows should stop costing model steps at once rather than run to their
budget. The caller of ``sample`` states which prefixes are abandoned with :func:`abandon_when`;
a backend that can drop rows mid-call asks :func:`abandoned` at its own sync points and cuts
those rows' continuations short (unfinished). The caller discards them, so nothing else changes:
every other row draws exactly what it would have drawn.

The probe is ambient (a context variable) rather than an argument, because it changes no
result a caller keeps: backends that cannot stop rows early simply never ask.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Cancelled", "abandon_when", "abandoned", "cancel_requested", "cancellation"]


class Cancelled(Exception):
    """The running request was cancelled; raised by its next (or current) model call."""


_local = threading.local()


@contextmanager
def cancellation(cancelled: Callable[[], bool]) -> Iterator[None]:
    """Model calls made by this thread inside the block stop once ``cancelled()`` is true."""
    before = getattr(_local, "cancelled", None)
    _local.cancelled = cancelled
    try:
        yield
    finally:
        _local.cancelled = before


def cancel_requested() -> bool:
    """Whether the request this thread runs (see :func:`cancellation`) was cancelled."""
    check = getattr(_local, "cancelled", None)
    return bool(check is not None and check())


_PROBE: ContextVar[Callable[[], Collection[int]] | None] = ContextVar(
    "power_sampling_abandoned", default=None
)


@contextmanager
def abandon_when(probe: Callable[[], Collection[int]]) -> Iterator[None]:
    """Within the block, ``probe()`` lists the indices of the prefixes of a ``sample`` call that
    are abandoned: the backend may end their rows early."""
    token = _PROBE.set(probe)
    try:
        yield
    finally:
        _PROBE.reset(token)


def abandoned() -> Collection[int]:
    """The indices of the current call's abandoned prefixes (none outside :func:`abandon_when`)."""
    probe = _PROBE.get()
    return probe() if probe is not None else ()
