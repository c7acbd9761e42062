"""Constraints on the output, and the target power sampling defines under them.

A :class:`Constraint` (a JSON schema, a regex, a grammar, or a token automaton) gives per-output
:class:`Matcher` objects: a matcher knows the tokens allowed next, accepts one token at a time,
and forks cheaply, so rollouts and candidates that branch from one prefix each get their own.
The end tokens are allowed only where the output is complete.

Target. With A(s) the tokens allowed after a prefix s, a completion x (ended by an end token, or
cut at ``max_new_tokens``) is *valid* when every token x_t is in A(x_<t). Power sampling under a
constraint targets

    π_G(x) ∝ p(x)^α · 1[x valid],

the power distribution restricted to valid outputs: not (q(x))^α for the locally renormalised
masked model q(v | s) = p(v | s) 1[v ∈ A(s)] / m(s), with m(s) = Σ_{v ∈ A(s)} p(v | s) the
allowed mass. The two differ wherever the constraint removes more mass on one branch than on
another.

Derivation. The token-level theorem (algorithm.md §2) holds over valid futures:

    p_G(v | s) ∝ p(v | s)^α 1[v ∈ A(s)] ζ_G(s v),   ζ_G(s v) = Σ_{valid f} p(f | s v)^α.

Rollouts are drawn from q (the only way to stay valid), and q(f) = p(f) / Π_i m(s_i), the
product over the rollout's own steps. So

    ζ_G = Σ_f q(f) · p(f)^α / q(f) = E_{f ~ q}[ p(f)^(α-1) · Π_i m(s_i) ],

an importance-weighted mean: each rollout's term (α-1)Λ_r gains μ_r = Σ_i log m(s_i), the log
allowed mass summed over its tokens (:attr:`Continuation.log_mass`). Leaving μ out estimates
E_q[p(f)^(α-1)] = Σ_f p(f)^α / Π m, which over-weights futures the constraint squeezes.

Candidate blocks are drawn from q as well. Algorithm 2 weights each *distinct* kept block b by
α log p(b) + log ζ̂(b), the exact unnormalised π_G-marginal of b, so the proposal only decides
which blocks enter the set. The weight must use the base log p(b) = log q(b) + μ(b), never the
masked log q(b) the block was drawn with (that would target q^α), and its ζ̂ uses the corrected
rollouts above. Backends therefore report base log-probs (unnormalised under the mask) in
``Continuation.logprob`` and μ separately; a block with μ = -inf hit a dead end (no allowed
token had probability) and has weight 0. Token level ranks the top-K *allowed* tokens by base
log p; nothing is drawn there, so no correction is needed beyond the rollouts'.

The baselines keep their own targets: standard and low temperature sample q (at temperature 1
or 1/α per token, the allowed tokens renormalised), best-of-N keeps the highest base log p of N
draws from q, and MCMC's proposal is q at temperature 1/α, whose masked, renormalised log-probs
enter the Metropolis-Hastings ratio, so its chain targets π_G exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..backends.base import Backend


def bitmask_words(vocab_size: int) -> int:
    """Number of 32-bit words of one row of a token bitmask."""
    return (vocab_size + 31) // 32


def new_bitmask(rows: int, vocab_size: int) -> np.ndarray:
    """An all-disallowed bitmask: int32 ``[rows, words]``, bit j of word w is token 32 w + j."""
    return np.zeros((rows, bitmask_words(vocab_size)), dtype=np.int32)


def unpack_bitmask(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """The boolean ``[rows, vocab_size]`` mask of a bitmask (little-endian words, as x86 and the
    grammar engines lay them out)."""
    bits = np.unpackbits(np.ascontiguousarray(bitmask).view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :vocab_size].astype(bool)


@runtime_checkable
class Matcher(Protocol):
    """One output's position in a constraint."""

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the tokens allowed next into row ``row`` of an int32 bitmask
        (:func:`new_bitmask`); an empty row means a dead end."""
        ...

    def accept(self, token: int) -> bool:
        """Advance by ``token``; False (and no change) if it is not allowed."""
        ...

    def fork(self) -> Matcher:
        """An independent copy at the same position."""
        ...


def allowed_tokens(matcher: Matcher, vocab_size: int) -> np.ndarray:
    """The boolean mask of the tokens ``matcher`` allows next."""
    bitmask = new_bitmask(1, vocab_size)
    matcher.fill_bitmask(bitmask, 0)
    return unpack_bitmask(bitmask, vocab_size)[0]


class Constraint(ABC):
    """What outputs are valid. Build one with :meth:`json_schema`, :meth:`regex`,
    :meth:`grammar` or :meth:`json` (a grammar engine, for backends with a tokenizer), or
    :class:`TokenAutomaton` (explicit token ids, for any backend)."""

    @abstractmethod
    def matcher(self, backend: Backend, stop_token_ids: Collection[int]) -> Matcher:
        """A matcher at the start of an output of ``backend``; ``stop_token_ids`` are the end
        tokens, allowed once the output is complete."""

    @staticmethod
    def json_schema(
        schema: Mapping[str, Any] | str | type, *, any_whitespace: bool = False
    ) -> Constraint:
        """Outputs that are JSON documents valid under ``schema`` (a dict, a JSON string, or a
        pydantic model class), laid out like ``json.dumps`` (``", "`` and ``": "``) unless
        ``any_whitespace`` allows free whitespace between tokens (small models fill it)."""
        from .grammar import GrammarConstraint

        return GrammarConstraint.from_json_schema(schema, any_whitespace=any_whitespace)

    @staticmethod
    def regex(pattern: str) -> Constraint:
        """Outputs whose text matches ``pattern`` in full."""
        from .grammar import GrammarConstraint

        return GrammarConstraint("regex", pattern)

    @staticmethod
    def grammar(ebnf: str) -> Constraint:
        """Outputs of a context-free grammar in GBNF/EBNF (``root ::= ...``)."""
        from .grammar import GrammarConstraint

        return GrammarConstraint("grammar", ebnf)

    @staticmethod
    def json() -> Constraint:
        """Any JSON value."""
        from .grammar import GrammarConstraint

        return GrammarConstraint("json", "")


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

    def matcher(self, backend: Backend, stop_token_ids: Collection[int]) -> Matcher:
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
