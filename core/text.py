"""Stop strings, detected in one place: where a text first contains one (:func:`first_stop`),
after which token a continuation ends (:func:`tokens_to_stop`, used by the backends), and
incremental decoding for streaming committed tokens as text (:class:`StopStringTracker`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def first_stop(text: str, stop_strings: Sequence[str]) -> int:
    """Where the earliest stop string starts in ``text``, or -1 when none occurs."""
    return min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)


def tokens_to_stop(
    decode: Callable[[Sequence[int]], str],
    tokens: Sequence[int],
    start: int,
    stop_strings: Sequence[str],
) -> int | None:
    """The shortest length in ``(start, len(tokens)]`` whose decoded text contains a stop
    string (the continuation ends with the token that completes it), or None."""
    if not stop_strings or first_stop(decode(tokens), stop_strings) < 0:
        return None
    return next(
        j
        for j in range(start + 1, len(tokens) + 1)
        if first_stop(decode(tokens[:j]), stop_strings) >= 0
    )


class StopStringTracker:
    """Turns committed token chunks into text deltas that never need to be taken back.

    The completion is decoded whole after every commit; the first stop string ends it (the stop
    string itself is not part of the text). Text that could still turn out to be the start of a
    stop string, or an incomplete UTF-8 character, is held back until it is decided, so the
    deltas always join to the final ``text``.
    """

    def __init__(
        self, decode: Callable[[Sequence[int]], str] | None, stop_strings: Sequence[str]
    ) -> None:
        self._decode = decode
        self._stops = tuple(stop_strings)
        self._tokens: list[int] = []
        self._emitted = 0
        self.stopped = False
        self.text: str | None = None if decode is None else ""

    def push(self, tokens: Sequence[int]) -> str:
        """Add committed tokens; return the text that is now safe to show."""
        if self._decode is None or self.stopped:
            return ""
        self._tokens.extend(tokens)
        text = self._decode(self._tokens)
        cut = first_stop(text, self._stops)
        if cut >= 0:
            self.stopped = True
            self.text = text[:cut]
            return self._emit(len(self.text))
        self.text = text
        safe = len(text) - self._undecided_tail(text)
        return self._emit(safe)

    def finish(self) -> str:
        """The rest of the text, once no more tokens will come."""
        if self.text is None:
            return ""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        assert self.text is not None
        delta = self.text[self._emitted : max(upto, self._emitted)]
        self._emitted = max(upto, self._emitted)
        return delta

    def _undecided_tail(self, text: str) -> int:
        """Length of the tail that may still change: a partial character or stop-string start."""
        hold = len(text) - len(text.rstrip("\ufffd"))
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return hold
