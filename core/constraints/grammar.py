"""JSON schemas, regexes and grammars through the xgrammar engine (the ``constraints`` extra).

xgrammar was measured against llguidance on the embedded model's 49,152-token vocabulary (see
the README's "Constrained outputs" section): its masks cost a few microseconds per token on a
JSON schema (precomputed per grammar) against some 0.15 ms for llguidance, and 0.4 ms against
1.1 ms on a regex with a long character class; forks cost a few microseconds in both.

A grammar is compiled once per tokenizer and constraint (xgrammar also caches compilations by
their source), so the first use of a regex or schema costs a compilation and later requests
only create matchers (microseconds).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .base import Constraint, Matcher

if TYPE_CHECKING:
    from ..backends.base import Backend

Kind = Literal["json_schema", "regex", "grammar", "json"]

_compilers: dict[tuple[int, int], tuple[Any, Any]] = {}
_lock = threading.Lock()


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as error:
        raise ImportError(
            "JSON-schema, regex and grammar constraints need xgrammar; install it with "
            "pip install 'power-sampling[constraints]'"
        ) from error
    return xgrammar


def _compiler(backend: Backend) -> Any:
    """One xgrammar compiler per (tokenizer, vocabulary size), kept for the process."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise TypeError(
            f"{type(backend).__name__} has no tokenizer, so text constraints (JSON schema, regex, "
            "grammar) cannot be built for it; use a TextBackend such as TransformersBackend, or "
            "a TokenAutomaton over token ids"
        )
    xgr = _xgrammar()
    key = (id(tokenizer), backend.vocab_size)
    with _lock:
        entry = _compilers.get(key)
        if entry is None or entry[0] is not tokenizer:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=backend.vocab_size)
            entry = (tokenizer, xgr.GrammarCompiler(info))
            _compilers[key] = entry
    return entry[1]


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

    def compiled(self, backend: Backend) -> Any:
        """The compiled grammar for ``backend``'s tokenizer (compiled on first use)."""
        compiler = _compiler(backend)
        with self._lock:
            grammar = self._compiled.get(id(compiler))
            if grammar is None:
                try:
                    grammar = self._compile(compiler)
                except RuntimeError as error:
                    raise ValueError(
                        f"could not compile the {self.kind} constraint: {error}"
                    ) from error
                self._compiled[id(compiler)] = grammar
        return grammar

    def _compile(self, compiler: Any) -> Any:
        if self.kind == "json_schema":
            return compiler.compile_json_schema(self.source, any_whitespace=self.any_whitespace)
        if self.kind == "regex":
            return compiler.compile_regex(self.source)
        if self.kind == "grammar":
            return compiler.compile_grammar(self.source)
        return compiler.compile_builtin_json_grammar()

    def matcher(self, backend: Backend, stop_token_ids: Collection[int]) -> Matcher:
        stops = sorted(int(t) for t in stop_token_ids)
        engine = _xgrammar().GrammarMatcher(
            self.compiled(backend), override_stop_tokens=stops or None
        )
        return _GrammarMatcher(engine)


class _GrammarMatcher:
    """An xgrammar ``GrammarMatcher`` seen through the :class:`Matcher` protocol."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        if self._engine.is_terminated():
            bitmask[row] = 0
            return
        self._engine.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        return bool(self._engine.accept_token(int(token)))

    def fork(self) -> Matcher:
        return _GrammarMatcher(self._engine.fork())
