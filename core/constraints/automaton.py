"""Token automata: exact constraints over explicit token ids, for table models and token-id
backends (no tokenizer needed)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from .base import Constraint, Matcher, Vocabulary


class TokenAutomaton(Constraint):
    """A deterministic automaton over token ids: ``transitions[state][token] = next state``.

    The end tokens are allowed exactly in ``accepting`` states. Exact and tiny, for table models
    and token-id backends (no tokenizer needed).
    """

    def __init__(
        self,
        transitions: Mapping[int, Mapping[int, int]],
        accepting: Collection[int],
        start: int = 0,
    ) -> None:
        self.transitions = {
            int(s): {int(t): int(n) for t, n in e.items()} for s, e in transitions.items()
        }
        self.accepting = frozenset(int(s) for s in accepting)
        self.start = int(start)

    def matcher(self, backend: Vocabulary, stop_token_ids: Collection[int]) -> Matcher:
        vocab = backend.vocab_size
        for state, edges in self.transitions.items():
            bad = [t for t in edges if not 0 <= t < vocab]
            if bad:
                raise ValueError(
                    f"TokenAutomaton.transitions[{state}] uses token ids {bad} outside the "
                    f"vocabulary [0, {vocab}); use this backend's token ids"
                )
        return _AutomatonMatcher(self, self.start, frozenset(int(t) for t in stop_token_ids))


class _AutomatonMatcher:
    _ENDED = -1  # after an end token: nothing more is allowed

    def __init__(self, automaton: TokenAutomaton, state: int, stop: frozenset[int]) -> None:
        self._automaton, self._state, self._stop = automaton, state, stop

    def _allowed(self) -> list[int]:
        if self._state == self._ENDED:
            return []
        out = list(self._automaton.transitions.get(self._state, {}))
        if self._state in self._automaton.accepting:
            out.extend(t for t in self._stop if t not in out)
        return out

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        words = bitmask[row].view(np.uint32)
        words[:] = 0
        ids = np.array(self._allowed(), dtype=np.int64)
        np.bitwise_or.at(words, ids >> 5, np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))

    def accept(self, token: int) -> bool:
        if self._state == self._ENDED:
            return False
        edges = self._automaton.transitions.get(self._state, {})
        if token in edges:
            self._state = edges[token]
            return True
        if token in self._stop and self._state in self._automaton.accepting:
            self._state = self._ENDED
            return True
        return False

    def fork(self) -> Matcher:
        return _AutomatonMatcher(self._automaton, self._state, self._stop)
