"""Continuous batching: the backend calls of every request in flight, merged step by step.

Each request runs its sampler unchanged, in a thread of its own, against a :class:`Lane`: a
proxy of the backend whose ``sample`` and ``top_k`` hand the call to the :class:`Batcher` and
wait. The batcher's thread gathers the calls of all live lanes and makes one backend call per
kind of call, so requests of any method and settings advance together:

1. A round starts once every live lane is waiting on a call, or ``window`` seconds after its
   first call arrived, the last round ended or the last lane joined, whichever is latest:
   lanes that just got their results, or just started, have that long to come back, so
   requests stay in step, and a lane busy in Python does not hold the others up for longer.
2. Calls are merged when the backend would treat them alike: ``sample`` calls with equal ``n``,
   temperature, stop condition and ``keep_cache``; ``top_k`` calls with equal ``keep_cache``
   (the largest ``k`` is asked for and each call gets its own top entries); ``score`` calls
   (a :class:`~power_sampling.backends.base.ScoringBackend`'s) all together. Unlike calls of one
   round run one after the other.
3. Every prefix carries its own seed (:func:`~power_sampling.backends.base.prefix_seeds`), so a
   request's draws are the same whatever it is merged with.
4. A lane joins at the next round and leaves when its request ends. A lane whose request was
   cancelled raises :class:`Cancelled` at its next call, so it takes no part in later rounds;
   inside a merged ``sample`` call, a backend that can (transformers) ends its rows at its next
   sync point (:mod:`power_sampling.backends.cancel`), so a long rollout or answer stops
   costing model steps within a few decode steps.

Why a proxy rather than a scheduler that knows each method's steps: the samplers stay the one
implementation of each method, and anything that speaks the backend protocol (a new method,
Power-SMC, a user's own sampler) is batched with the rest without being written for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend, SampleOutput, TopK, TopKOutput, prefix_seeds
from ..backends.cancel import Cancelled, abandon_when

__all__ = ["Batcher", "Cancelled", "Lane"]

logger = logging.getLogger(__name__)

_IDLE_EXIT = 30.0  # seconds without lanes before the batcher's thread exits


@dataclass(eq=False)
class _Call:
    lane: Lane
    kind: str
    key: tuple[Any, ...]
    prefixes: list[Sequence[int]]
    options: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Lane:
    """One request's view of the backend: the backend's attributes, with ``sample`` and
    ``top_k`` merged with the calls of the other lanes."""

    def __init__(self, batcher: Batcher, cancelled: Callable[[], bool]) -> None:
        self._batcher, self._cancelled = batcher, cancelled
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batcher.backend, name)

    @property
    def base(self) -> Backend:
        """The backend this lane's calls go to."""
        return self._batcher.backend

    @property
    def vocab_size(self) -> int:
        return int(self._batcher.backend.vocab_size)

    @property
    def stop(self) -> Any:
        return self._batcher.backend.stop

    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        n: int,
        max_new_tokens: int | Sequence[int],
        *,
        seed: int | Sequence[int],
        temperature: float = 1.0,
        stop: Any = None,
        keep_cache: bool = False,
        constraint: Sequence[Any] | None = None,
    ) -> SampleOutput:
        count = len(prefixes)
        budgets = (
            [int(max_new_tokens)] * count
            if isinstance(max_new_tokens, int)
            else [int(b) for b in max_new_tokens]
        )
        options = {
            "budgets": budgets,
            "seeds": prefix_seeds(seed, count),
            "constraint": list(constraint) if constraint is not None else None,
        }
        key = ("sample", n, float(temperature), stop, bool(keep_cache))
        output: SampleOutput = self._call("sample", key, prefixes, options)
        return output

    def top_k(
        self,
        prefixes: Sequence[Sequence[int]],
        k: int,
        *,
        keep_cache: bool = False,
        constraint: Sequence[Any] | None = None,
    ) -> TopKOutput:
        options = {"k": int(k), "constraint": list(constraint) if constraint is not None else None}
        output: TopKOutput = self._call("top_k", ("top_k", bool(keep_cache)), prefixes, options)
        return output

    def score(self, sequences: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
        """The backend's :meth:`~power_sampling.backends.base.ScoringBackend.score`, merged
        with the other lanes' scoring calls."""
        output: list[tuple[float, ...]] = self._call("score", ("score",), sequences, {})
        return output

    def _call(
        self, kind: str, key: tuple[Any, ...], prefixes: Sequence[Sequence[int]], options: Any
    ) -> Any:
        if self._cancelled():
            raise Cancelled
        self.calls += 1
        call = _Call(self, kind, key, [list(p) for p in prefixes], options)
        self._batcher.requested += 1
        self._batcher._submit(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        if self._cancelled():
            raise Cancelled
        return call.result

    def close(self) -> None:
        """Leave the batcher: rounds no longer wait for this lane."""
        self._batcher._leave(self)


class Batcher:
    """Merges the backend calls of its lanes into one call per kind and round."""

    def __init__(self, backend: Backend, *, window: float = 0.005) -> None:
        self.backend = backend
        self.window = window
        self.calls = 0
        """Backend calls made so far."""
        self.requested = 0
        """Calls the lanes asked for so far (merged into :attr:`calls`)."""
        self._cond = threading.Condition()
        self._lanes: set[Lane] = set()
        self._pending: list[_Call] = []
        self._first_at = 0.0
        self._round_end = 0.0
        self._joined_at = 0.0
        self._thread: threading.Thread | None = None

    def lane(self, cancelled: Callable[[], bool] = lambda: False) -> Lane:
        """A new lane; close it when its request ends."""
        lane = Lane(self, cancelled)
        with self._cond:
            self._lanes.add(lane)
            self._joined_at = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="power-sampling-batcher", daemon=True
                )
                self._thread.start()
        return lane

    def _leave(self, lane: Lane) -> None:
        with self._cond:
            self._lanes.discard(lane)
            self._cond.notify_all()

    def _submit(self, call: _Call) -> None:
        with self._cond:
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append(call)
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                round_ = self._next_round()
                if round_ is None:
                    self._thread = None
                    return
            groups: dict[tuple[Any, ...], list[_Call]] = {}
            for call in round_:
                groups.setdefault(call.key, []).append(call)
            for calls in groups.values():
                self._run(calls)
            with self._cond:
                self._round_end = time.monotonic()

    def _next_round(self) -> list[_Call] | None:
        """The calls of the next round (under the lock), or None once idle for long."""
        idle_since = time.monotonic()
        while True:
            if self._pending:
                waiting = {call.lane for call in self._pending}
                since = max(self._first_at, self._round_end, self._joined_at)
                left = since + self.window - time.monotonic()
                if left <= 0 or not (self._lanes - waiting):
                    round_, self._pending = self._pending, []
                    return round_
                self._cond.wait(left)
            elif not self._lanes and time.monotonic() - idle_since >= _IDLE_EXIT:
                return None
            else:
                self._cond.wait(_IDLE_EXIT if not self._lanes else None)

    def _run(self, calls: list[_Call]) -> None:
        try:
            kinds: dict[str, Callable[[list[_Call]], Sequence[Any]]] = {
                "sample": self._sample,
                "top_k": self._top_k,
                "score": self._score,
            }
            merge = kinds[calls[0].kind]
            outputs: Sequence[Any] = merge(calls)
            for call, output in zip(calls, outputs, strict=True):
                call.result = output
        except BaseException as exc:  # every caller of the merged call gets its error
            for call in calls:
                call.error = exc
        finally:
            for call in calls:
                call.done.set()

    def _sample(self, calls: list[_Call]) -> list[SampleOutput]:
        _, n, temperature, stop, keep_cache = calls[0].key
        prefixes = [p for call in calls for p in call.prefixes]
        kwargs = _constraint_kwargs(calls)
        lanes = [call.lane for call in calls for _ in call.prefixes]
        self.calls += 1
        with abandon_when(lambda: {i for i, lane in enumerate(lanes) if lane._cancelled()}):
            out = self.backend.sample(
                prefixes,
                n,
                [b for call in calls for b in call.options["budgets"]],
                seed=[s for call in calls for s in call.options["seeds"]],
                temperature=temperature,
                stop=stop,
                keep_cache=keep_cache,
                **kwargs,
            )
        rows = _split(out.continuations, calls)
        drawn = [sum(len(c.token_ids) for r in part for c in r) for part in rows]
        shares = _shares(out.forward_tokens, drawn)
        return [
            SampleOutput(part, share, out.sequential_steps)
            for part, share in zip(rows, shares, strict=True)
        ]

    def _top_k(self, calls: list[_Call]) -> list[TopKOutput]:
        _, keep_cache = calls[0].key
        prefixes = [p for call in calls for p in call.prefixes]
        kwargs = _constraint_kwargs(calls)
        self.calls += 1
        k = max(call.options["k"] for call in calls)
        out = self.backend.top_k(prefixes, k, keep_cache=keep_cache, **kwargs)
        parts = _split(out.entries, calls)
        shares = _shares(out.forward_tokens, [len(c.prefixes) for c in calls])
        return [
            TopKOutput(
                [TopK(e.token_ids[: c.options["k"]], e.logprobs[: c.options["k"]]) for e in part],
                share,
                out.sequential_steps,
            )
            for c, part, share in zip(calls, parts, shares, strict=True)
        ]

    def _score(self, calls: list[_Call]) -> list[list[tuple[float, ...]]]:
        self.calls += 1
        scores = self.backend.score([p for call in calls for p in call.prefixes])  # type: ignore[attr-defined]
        return _split(scores, calls)


def _constraint_kwargs(calls: Sequence[_Call]) -> dict[str, Any]:
    """``{"constraint": one matcher or None per merged prefix}`` when any call is constrained,
    else ``{}`` (backends without constraint support keep serving unconstrained calls)."""
    if all(call.options["constraint"] is None for call in calls):
        return {}
    return {
        "constraint": [
            m for call in calls for m in (call.options["constraint"] or [None] * len(call.prefixes))
        ]
    }


def _split(items: Sequence[Any], calls: Sequence[_Call]) -> list[list[Any]]:
    """``items`` (one per merged prefix) cut back into one list per call."""
    out, start = [], 0
    for call in calls:
        out.append(list(items[start : start + len(call.prefixes)]))
        start += len(call.prefixes)
    return out


def _shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (equally when they are all zero)."""
    whole = sum(weights)
    if whole == 0:
        return [total // max(len(weights), 1)] * len(weights)
    return [round(total * w / whole) for w in weights]
