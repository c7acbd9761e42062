"""One sequence's position in a constraint, after any prefix of its output."""

from __future__ import annotations

from collections.abc import Sequence

from .base import Matcher


class ConstraintCursor:
    """One sequence's matchers: at the start of its output and after its committed tokens.

    Samplers ask for matchers after arbitrary generated prefixes (candidates extend the
    committed tokens; MCMC cuts inside them): one that extends the committed tokens forks the
    committed matcher and replays only the extra tokens, any other replays from the start.
    """

    def __init__(self, root: Matcher) -> None:
        self._root = root
        self._committed = root.fork()
        self._tokens: list[int] = []

    def at(self, generated: Sequence[int]) -> Matcher:
        """A fresh matcher after ``generated`` (the output tokens so far)."""
        n = len(self._tokens)
        if len(generated) >= n and list(generated[:n]) == self._tokens:
            matcher, rest = self._committed.fork(), generated[n:]
        else:
            matcher, rest = self._root.fork(), generated
        for token in rest:
            if not matcher.accept(int(token)):
                raise ValueError(f"token {token} of {list(generated)} violates the constraint")
        return matcher

    def commit(self, tokens: Sequence[int]) -> None:
        """Advance the committed matcher by decided tokens."""
        for token in tokens:
            if not self._committed.accept(int(token)):
                raise ValueError(f"committed token {token} violates the constraint")
        self._tokens.extend(int(t) for t in tokens)
