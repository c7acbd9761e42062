"""Constraints that close within a token budget.

A constraint alone lets an output run into ``max_new_tokens`` half-written (a long string
argument, then no room for ``"}``). :class:`BudgetedConstraint` wraps one and, after a prefix
s of n tokens with r = B - n tokens left of the budget B, allows a token v only if the output
can still be completed after s v within r - 1 more tokens.

Distance. d(s) is the fewest tokens from s to a complete output (a state where an end token
is allowed), found by breadth-first search over the tokens of a *closing alphabet* A
(:attr:`BudgetedConstraint.alphabet`; all tokens by default), exploring at most
``max_nodes`` states; d(s) is unknown when the search gives up.

Rule. With d(s) known and d(s) + ``band`` ≥ r (near the end of the budget), the allowed
tokens are those v allowed by the inner constraint, in A or an end token, with d(s v) ≤ r - 1
(an end token is kept wherever the inner constraint allows it). Elsewhere the inner
constraint's tokens are allowed unchanged.

Guarantee. If d(start) ≤ B, then wherever the rule applies some token is allowed (the first
step of a shortest path has d(s v) = d(s) - 1), so every output is complete within B tokens —
provided that no token drawn outside the band (where d(s) + band < r) lengthens the distance
to more than r - 1, and that the search never gives up. With ``band`` ≥ B the rule applies at
every step and only the search budget remains; with A all tokens and the search complete (as
for table models and token automata) the guarantee is unconditional.

Target. The rule is a constraint like any other (a mask that depends only on the prefix), so
every method keeps its target, now over the budgeted constraint G_B: power sampling targets
π_{G_B}(x) ∝ p(x)^α · 1[x ∈ G_B]. With A all tokens and ``band`` ≥ B, G_B is exactly the
valid outputs that are complete within B tokens, so π_{G_B} is π_G conditioned on completing
in the budget: outputs π_G would cut half-written lose their mass and every other output keeps
its relative weight. That conditioning is the whole cost in fidelity to π_G. A smaller band,
or an alphabet smaller than the vocabulary, also removes valid outputs that use other tokens
near the end of the budget (their tokens are not checked), a further restriction of G_B that
the sampler targets exactly as well.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence

import numpy as np

from .base import Constraint, Matcher, Vocabulary, new_bitmask, unpack_bitmask

__all__ = ["BudgetedConstraint"]


class BudgetedConstraint(Constraint):
    """``inner`` restricted to outputs that complete within ``budget`` tokens (see the module
    docstring for the rule, its guarantee and its cost). ``alphabet`` (token ids) is what the
    distance search and the closing rule use, all tokens when None; ``band`` is how many
    tokens before the last possible moment the rule starts to apply."""

    def __init__(
        self,
        inner: Constraint,
        budget: int,
        *,
        alphabet: Sequence[int] | None = None,
        band: int | None = None,
        max_nodes: int = 4096,
    ) -> None:
        if budget < 1:
            raise ValueError(f"budget={budget}: use 1 or more tokens")
        self.inner, self.budget = inner, int(budget)
        self.alphabet = None if alphabet is None else tuple(int(t) for t in alphabet)
        self.band = self.budget if band is None else int(band)
        self.max_nodes = int(max_nodes)

    def __repr__(self) -> str:
        return f"BudgetedConstraint({self.inner!r}, budget={self.budget})"

    def matcher(self, backend: Vocabulary, stop_token_ids: Collection[int]) -> Matcher:
        vocab = backend.vocab_size
        alphabet = np.array(self.alphabet if self.alphabet is not None else range(vocab))
        search = _Search(self, vocab, frozenset(int(t) for t in stop_token_ids), alphabet)
        return _BudgetMatcher(self.inner.matcher(backend, stop_token_ids), search, ())


class _Search:
    """What the matchers of one output share: the settings and the known distances."""

    def __init__(
        self, owner: BudgetedConstraint, vocab: int, stop: frozenset[int], alphabet: np.ndarray
    ) -> None:
        self.owner, self.vocab, self.stop = owner, vocab, stop
        self.alphabet = alphabet[(alphabet >= 0) & (alphabet < vocab)]
        self.stops = np.array(sorted(t for t in stop if t < vocab), dtype=np.int64)
        self.alphabet_set = frozenset(int(t) for t in self.alphabet)
        self.known: dict[tuple[int, ...], int | None] = {}

    def allowed(self, matcher: Matcher) -> np.ndarray:
        bitmask = new_bitmask(1, self.vocab)
        matcher.fill_bitmask(bitmask, 0)
        return unpack_bitmask(bitmask, self.vocab)[0]

    def distance(self, matcher: Matcher, tokens: tuple[int, ...]) -> int | None:
        """Fewest alphabet tokens from ``matcher`` to a state that allows an end token."""
        if tokens in self.known:
            return self.known[tokens]
        if len(self.known) > 100_000:
            self.known.clear()
        found: int | None = None
        frontier: deque[tuple[Matcher, int]] = deque([(matcher, 0)])
        nodes = 0
        while frontier and nodes < self.owner.max_nodes:
            node, depth = frontier.popleft()
            nodes += 1
            mask = self.allowed(node)
            if self.stops.size and mask[self.stops].any():
                found = depth
                break
            for token in self.alphabet[mask[self.alphabet]]:
                if int(token) in self.stop:
                    continue
                child = node.fork()
                if child.accept(int(token)):
                    frontier.append((child, depth + 1))
        self.known[tokens] = found
        return found


class _BudgetMatcher:
    def __init__(self, inner: Matcher, search: _Search, tokens: tuple[int, ...]) -> None:
        self._inner, self._search, self._tokens = inner, search, tokens

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        self._inner.fill_bitmask(bitmask, row)
        search, owner = self._search, self._search.owner
        left = owner.budget - len(self._tokens)
        if left < 1:
            return
        distance = search.distance(self._inner, self._tokens)
        if distance is None or distance + owner.band < left or distance > left:
            return  # far from the end, or unknown, or already past saving: unchanged
        allowed = unpack_bitmask(bitmask[row : row + 1], search.vocab)[0]
        keep = np.zeros(search.vocab, dtype=bool)
        for token in map(int, np.flatnonzero(allowed)):
            if token in search.stop:
                keep[token] = True
                continue
            if token not in search.alphabet_set:
                continue
            child = self._inner.fork()
            if not child.accept(token):
                continue
            after = search.distance(child, (*self._tokens, token))
            keep[token] = after is not None and after <= left - 1
        words = np.packbits(keep, bitorder="little")
        words = np.pad(words, (0, bitmask.shape[1] * 4 - words.size))
        bitmask[row] = words.view(np.int32)

    def accept(self, token: int) -> bool:
        if not self._inner.accept(token):
            return False
        self._tokens = (*self._tokens, int(token))
        return True

    def fork(self) -> Matcher:
        return _BudgetMatcher(self._inner.fork(), self._search, self._tokens)
