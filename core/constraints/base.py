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

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from . import grammar as engine


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


class Vocabulary(Protocol):
    """What a constraint needs of a backend: its vocabulary size (and, for text constraints, a
    ``tokenizer`` attribute). Every :class:`~power_sampling.backends.base.Backend` is one."""

    @property
    def vocab_size(self) -> int: ...


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
    def matcher(self, backend: Vocabulary, stop_token_ids: Collection[int]) -> Matcher:
        """A matcher at the start of an output of ``backend``; ``stop_token_ids`` are the end
        tokens, allowed once the output is complete."""

    @staticmethod
    def json_schema(
        schema: Mapping[str, Any] | str | type, *, any_whitespace: bool = False
    ) -> Constraint:
        """Outputs that are JSON documents valid under ``schema`` (a dict, a JSON string, or a
        pydantic model class), laid out like ``json.dumps`` (``", "`` and ``": "``) unless
        ``any_whitespace`` allows free whitespace between tokens (small models fill it)."""
        return GrammarConstraint.from_json_schema(schema, any_whitespace=any_whitespace)

    @staticmethod
    def regex(pattern: str) -> Constraint:
        """Outputs whose text matches ``pattern`` in full."""
        return GrammarConstraint("regex", pattern)

    @staticmethod
    def grammar(ebnf: str) -> Constraint:
        """Outputs of a context-free grammar in GBNF/EBNF (``root ::= ...``)."""
        return GrammarConstraint("grammar", ebnf)

    @staticmethod
    def json() -> Constraint:
        """Any JSON value."""
        return GrammarConstraint("json", "")


Kind = Literal["json_schema", "regex", "grammar", "json"]


class GrammarConstraint(Constraint):
    """A constraint compiled by xgrammar: ``kind`` is ``json_schema`` (``source`` a JSON schema
    string), ``regex``, ``grammar`` (EBNF/GBNF) or ``json`` (any JSON, ``source`` unused)."""

    def __init__(self, kind: Kind, source: str, *, any_whitespace: bool = False) -> None:
        if kind not in ("json_schema", "regex", "grammar", "json"):
            raise ValueError(
                f"constraint kind {kind!r} is unknown; use json_schema, regex, grammar or json"
            )
        if kind != "json" and not isinstance(source, str):
            raise TypeError(f"the {kind} constraint needs a string, got {type(source).__name__}")
        if kind in ("regex", "grammar") and not source:
            raise ValueError(f"the {kind} constraint is empty; pass a non-empty {kind}")
        self.kind, self.source, self.any_whitespace = kind, source, any_whitespace
        self._compiled: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_json_schema(
        cls, schema: Mapping[str, Any] | str | type, *, any_whitespace: bool = False
    ) -> GrammarConstraint:
        """From a dict, a JSON string, or a pydantic model class."""
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        if isinstance(schema, Mapping):
            return cls("json_schema", json.dumps(dict(schema)), any_whitespace=any_whitespace)
        if isinstance(schema, str):
            try:
                json.loads(schema)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"the JSON schema is not valid JSON ({error}); pass a dict"
                ) from error
            return cls("json_schema", schema, any_whitespace=any_whitespace)
        raise TypeError(
            f"json_schema takes a dict, a JSON string or a pydantic model class, got "
            f"{type(schema).__name__}"
        )

    def __repr__(self) -> str:
        return f"GrammarConstraint({self.kind!r}, {self.source[:60]!r})"

    def compiled(self, backend: Vocabulary) -> Any:
        """The compiled grammar for ``backend``'s tokenizer (compiled on first use)."""
        compiler = engine.compiler(backend)
        with self._lock:
            compiled = self._compiled.get(id(compiler))
            if compiled is None:
                try:
                    compiled = engine.compile(compiler, self.kind, self.source, self.any_whitespace)
                except RuntimeError as error:
                    raise ValueError(
                        f"could not compile the {self.kind} constraint: {error}"
                    ) from error
                self._compiled[id(compiler)] = compiled
        return compiled

    def matcher(self, backend: Vocabulary, stop_token_ids: Collection[int]) -> Matcher:
        return engine.matcher(self.compiled(backend), stop_token_ids)
