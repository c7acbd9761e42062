"""Constraints that close within a token budget.

A constraint alone lets an output run into ``max_new_tokens`` half-written (a long string
argument, then no room for ``"}``). :class:`BudgetedConstraint` wraps one and, after a prefix
s of n tokens with r = B - n tokens left of the budget B, allows a token v only if the output
can still be completed after s v within r - 1 more tokens.

Moves and distance. A *closing search* names, for each state s, a set of moves M(s) (tokens
the inner constraint allows) and the distance d_M(s): the fewest moves from s to a complete
output (a state where an end token is allowed). Two searches:

- exhaustive (:class:`BudgetedConstraint`, for table models and token automata): M(s) is every
  allowed token of ``alphabet`` (all tokens by default), found breadth-first within
  ``max_nodes`` states. With the full alphabet d_M = d, the true shortest completion.
- closing (:meth:`BudgetedConstraint.closing`, for JSON schemas and tool calls on a real
  tokenizer, where a breadth-first search over ~50k tokens is out of reach): M(s) is one token,
  chosen by a fixed policy from the state alone: the first token of the text the grammar forces
  next (xgrammar's jump-forward string, tokenised), else a closer (``"`` inside a string, else
  the first allowed of ``}``, ``]``, ``"``, ``0``, ``true``, ``null``, ``{``, ``[``, ``a``).
  d_M(s) is the length of that policy's path, followed with one matcher and no branching. It is
  an upper bound on d.

Rule. With d_M(s) known, d_M(s) ≤ r and d_M(s) + ``band`` ≥ r (the closing phase), the allowed
tokens are the end tokens the inner constraint allows and the checked tokens v with
d_M(s v) ≤ r - 1; elsewhere (the free phase) the inner constraint's tokens are allowed unchanged.
The checked tokens are M(s) plus, for the exhaustive search, every allowed alphabet token, and
for the closing search the structural closers ``"``, ``}``, ``]`` the inner constraint allows.

Guarantee. Each search is consistent: d_M(s) = 1 + min over v in M(s) of d_M(s v), so wherever
the closing phase starts with d_M(s) ≤ r the first move of a shortest path is allowed and keeps
d_M ≤ r - 1: from then on every output completes within B tokens. What can still be cut is an
output whose free-phase token raises d_M from below r - band to more than r - 1 (a jump of
more than ``band`` + 1 tokens). With ``band`` ≥ B (the exhaustive default) every step is in the
closing phase, so the guarantee is unconditional for d_M(start) ≤ B.

Target. The rule is a mask that depends only on the prefix, so it is a constraint like any other
and every method keeps its target, now over the budgeted constraint G_B:
π_{G_B}(x) ∝ p(x)^α · 1[x ∈ G_B]. With the exhaustive search, the full alphabet and ``band`` ≥ B,
G_B is exactly the valid outputs that complete within B tokens, so π_{G_B} is π_G conditioned on
completing in the budget: outputs π_G would cut half-written lose their mass and every other
output keeps its relative weight. With the closing search (or a smaller band or alphabet), G_B
is the valid outputs that obey the rule: free until d_M(s) + band ≥ r, then only checked tokens
that keep d_M within the budget. That is a subset of the outputs that complete within B (those
that stay within the budget are all complete), and the sampler targets π_G conditioned on it
exactly; outputs of π_G that never enter a closing phase (they end with room to spare) keep
their relative weights.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from .base import Constraint, Matcher, Vocabulary, new_bitmask

__all__ = ["CLOSING_BAND", "BudgetedConstraint", "closing_constraint"]

CLOSING_BAND = 4
"""Tokens of slack before the last possible moment at which the closing search's rule applies."""

CLOSERS = ("}", "]", '"', "0", "true", "null", "{", "[", "a")
"""The closing policy's fallback tokens, in order of preference outside a string."""
STRUCTURAL = ('"', "}", "]")
"""Closers the closing phase also checks besides the policy's own move."""


class BudgetedConstraint(Constraint):
    """``inner`` restricted to outputs that complete within ``budget`` tokens (see the module
    docstring for the rule, its guarantee and its target). This constructor gives the
    exhaustive search: ``alphabet`` (token ids) is what it and the closing rule use, all tokens
    when None; ``band`` is how many tokens before the last possible moment the rule starts to
    apply (the whole budget by default). :meth:`closing` gives the closing search."""

    def __init__(
        self,
        inner: Constraint,
        budget: int,
        *,
        alphabet: Sequence[int] | None = None,
        band: int | None = None,
        max_nodes: int = 4096,
        policy: bool = False,
    ) -> None:
        if budget < 1:
            raise ValueError(f"budget={budget}: use 1 or more tokens")
        self.inner, self.budget = inner, int(budget)
        self.alphabet = None if alphabet is None else tuple(int(t) for t in alphabet)
        self.band = self.budget if band is None else int(band)
        self.max_nodes = int(max_nodes)
        self.policy = policy

    @classmethod
    def closing(
        cls, inner: Constraint, budget: int, *, band: int = CLOSING_BAND
    ) -> BudgetedConstraint:
        """``inner`` (a JSON schema or grammar on a backend with a tokenizer) under the closing
        search: cheap per token, for real vocabularies."""
        return cls(inner, budget, band=band, policy=True)

    def __repr__(self) -> str:
        kind = ", closing" if self.policy else ""
        return f"BudgetedConstraint({self.inner!r}, budget={self.budget}{kind})"

    def matcher(self, backend: Vocabulary, stop_token_ids: Collection[int]) -> Matcher:
        vocab, stop = backend.vocab_size, frozenset(int(t) for t in stop_token_ids)
        search: _Search
        if self.policy:
            tokenizer = getattr(backend, "tokenizer", None)
            if tokenizer is None:
                raise TypeError(
                    f"{type(backend).__name__} has no tokenizer: the closing search needs one; "
                    "use BudgetedConstraint(inner, budget) for token-id backends"
                )
            search = _Policy(self, vocab, stop, tokenizer)
        else:
            alphabet = np.array(self.alphabet if self.alphabet is not None else range(vocab))
            search = _Exhaustive(self, vocab, stop, alphabet)
        return _BudgetMatcher(self.inner.matcher(backend, stop_token_ids), search, ())


@functools.lru_cache(maxsize=256)
def closing_constraint(inner: Constraint, budget: int) -> BudgetedConstraint:
    """The closing-search constraint of ``inner`` within ``budget`` tokens, one per pair, so
    that requests with equal constraints and budgets share it (and batch together)."""
    return BudgetedConstraint.closing(inner, budget)


def _allowed(words: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which of ``ids`` a bitmask row (viewed as uint32 words) allows."""
    return ((words[ids >> 5] >> (ids & 31).astype(np.uint32)) & 1).astype(bool)


class _Search:
    """What the matchers of one output share: the settings, the end tokens, known distances."""

    def __init__(self, owner: BudgetedConstraint, vocab: int, stop: frozenset[int]) -> None:
        self.owner, self.vocab, self.stop = owner, vocab, stop
        self.stops = np.array(sorted(t for t in stop if t < vocab), dtype=np.int64)
        self.known: dict[tuple[int, ...], int | None] = {}
        self.row = new_bitmask(1, vocab)

    def words(self, matcher: Matcher) -> np.ndarray:
        matcher.fill_bitmask(self.row, 0)
        return self.row[0].view(np.uint32)

    def complete(self, words: np.ndarray) -> bool:
        return bool(self.stops.size and _allowed(words, self.stops).any())

    def distance(self, matcher: Matcher, tokens: tuple[int, ...]) -> int | None:
        """d_M after ``tokens`` (``matcher`` is there), None when the search gives up."""
        if tokens not in self.known:
            if len(self.known) > 100_000:
                self.known.clear()
            found, path = self.search(matcher)
            self.known[tokens] = found
            if found is not None:  # every state on a policy path is known too
                for k in range(1, len(path) + 1):
                    self.known[(*tokens, *path[:k])] = found - k
        return self.known[tokens]

    def search(self, matcher: Matcher) -> tuple[int | None, list[int]]:
        """d_M from ``matcher`` and the moves of a path that attains it (empty if not kept)."""
        raise NotImplementedError

    def checked(self, matcher: Matcher, words: np.ndarray) -> np.ndarray:
        """The tokens (ids, allowed by ``words``, end tokens aside) the closing phase checks."""
        raise NotImplementedError


class _Exhaustive(_Search):
    """Breadth-first over every allowed token of the alphabet."""

    def __init__(
        self, owner: BudgetedConstraint, vocab: int, stop: frozenset[int], alphabet: np.ndarray
    ) -> None:
        super().__init__(owner, vocab, stop)
        alphabet = alphabet[(alphabet >= 0) & (alphabet < vocab)].astype(np.int64)
        self.alphabet = alphabet[~np.isin(alphabet, self.stops)]

    def checked(self, matcher: Matcher, words: np.ndarray) -> np.ndarray:
        return self.alphabet[_allowed(words, self.alphabet)]

    def search(self, matcher: Matcher) -> tuple[int | None, list[int]]:
        frontier: deque[tuple[Matcher, int]] = deque([(matcher, 0)])
        nodes = 0
        while frontier and nodes < self.owner.max_nodes:
            node, depth = frontier.popleft()
            nodes += 1
            words = self.words(node)
            if self.complete(words):
                return depth, []
            for token in self.checked(node, words).tolist():
                child = node.fork()
                if child.accept(token):
                    frontier.append((child, depth + 1))
        return None, []


class _Policy(_Search):
    """One move per state: the forced text's first token, else a closer."""

    def __init__(
        self, owner: BudgetedConstraint, vocab: int, stop: frozenset[int], tokenizer: Any
    ) -> None:
        super().__init__(owner, vocab, stop)
        self.tokenizer = tokenizer
        ids = [self.single(text) for text in CLOSERS]
        self.closers = np.array([t for t in ids if t is not None], dtype=np.int64)
        self.structural = np.array(
            [t for t in (self.single(s) for s in STRUCTURAL) if t is not None], dtype=np.int64
        )
        self.quote, self.brace = self.single('"'), self.single("}")
        self.first: dict[str, int] = {}

    def single(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return int(ids[0]) if len(ids) == 1 and ids[0] < self.vocab else None

    def forced(self, matcher: Matcher) -> int | None:
        """The first token of the text the grammar forces next, if any. A state with forced
        text is never complete (ending there would not start with that text)."""
        forced = getattr(matcher, "forced_text", None)
        text = forced() if forced is not None else ""
        if not text:
            return None
        first = self.first.get(text)
        if first is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            first = self.first[text] = int(ids[0]) if ids and ids[0] < self.vocab else -1
        return first if first >= 0 else None

    def closer(self, words: np.ndarray) -> int | None:
        allowed = self.closers[_allowed(words, self.closers)].tolist()
        if not allowed:
            return None
        if self.quote in allowed and self.brace in allowed:  # inside a string: close it
            return self.quote
        return int(allowed[0])

    def move(self, matcher: Matcher, words: np.ndarray) -> int | None:
        first = self.forced(matcher)
        if first is not None and _allowed(words, np.array([first]))[0]:
            return first
        return self.closer(words)

    def checked(self, matcher: Matcher, words: np.ndarray) -> np.ndarray:
        move = self.move(matcher, words)
        ids = self.structural[_allowed(words, self.structural)]
        return ids if move is None or move in ids else np.append(ids, move)

    def search(self, matcher: Matcher) -> tuple[int | None, list[int]]:
        node, path = matcher.fork(), []
        for depth in range(self.owner.budget + 1):
            first = self.forced(node)
            if first is not None and node.accept(first):  # the move, without a mask
                path.append(first)
                continue
            words = self.words(node)
            if self.complete(words):
                return depth, path
            move = self.closer(words)
            if move is None or not node.accept(move):
                return None, []
            path.append(move)
        return None, []


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
        words = bitmask[row].view(np.uint32)
        keep = np.zeros(search.vocab, dtype=bool)
        keep[search.stops] = _allowed(words, search.stops)
        for token in search.checked(self._inner, words.copy()).tolist():
            child = self._inner.fork()
            if child.accept(token):
                after = search.distance(child, (*self._tokens, token))
                keep[token] = after is not None and after <= left - 1
        packed = np.packbits(keep, bitorder="little")
        packed = np.pad(packed, (0, bitmask.shape[1] * 4 - packed.size))
        bitmask[row] = packed.view(np.int32)

    def accept(self, token: int) -> bool:
        if not self._inner.accept(token):
            return False
        self._tokens = (*self._tokens, int(token))
        return True

    def fork(self) -> Matcher:
        return _BudgetMatcher(self._inner.fork(), self._search, self._tokens)
