"""JSON schemas, regexes and grammars through the xgrammar engine (the ``constraints`` extra).

A grammar is compiled once per tokenizer and constraint (xgrammar also caches compilations by
their source), so the first use of a regex or schema costs a compilation and later requests only
create matchers. Why xgrammar rather than llguidance: its masks are precomputed per grammar,
which makes them cheaper per token on JSON schemas (docs: "Constrained outputs").

This module knows nothing of :class:`~power_sampling.constraints.base.Constraint`: it compiles
sources and wraps xgrammar's matchers in the ``Matcher`` protocol.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any

import numpy as np

_compilers: dict[tuple[int, int], tuple[Any, Any]] = {}
_lock = threading.Lock()


def xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as error:
        raise ImportError(
            "JSON-schema, regex and grammar constraints need xgrammar; install it with "
            "pip install 'power-sampling[constraints]'"
        ) from error
    return xgrammar


def compiler(backend: Any) -> Any:
    """One xgrammar compiler per (tokenizer, vocabulary size), kept for the process."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise TypeError(
            f"{type(backend).__name__} has no tokenizer, so text constraints (JSON schema, regex, "
            "grammar) cannot be built for it; use a TextBackend such as TransformersBackend, or "
            "a TokenAutomaton over token ids"
        )
    xgr = xgrammar()
    key = (id(tokenizer), backend.vocab_size)
    with _lock:
        entry = _compilers.get(key)
        if entry is None or entry[0] is not tokenizer:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=backend.vocab_size)
            entry = (tokenizer, xgr.GrammarCompiler(info))
            _compilers[key] = entry
    return entry[1]


def compile(compiler: Any, kind: str, source: str, any_whitespace: bool) -> Any:
    """``source`` of ``kind`` (json_schema, regex, grammar or json) compiled by ``compiler``."""
    if kind == "json_schema":
        return compiler.compile_json_schema(source, any_whitespace=any_whitespace)
    if kind == "regex":
        return compiler.compile_regex(source)
    if kind == "grammar":
        return compiler.compile_grammar(source)
    return compiler.compile_builtin_json_grammar()


def matcher(compiled: Any, stop_token_ids: Collection[int]) -> Any:
    """A matcher at the start of ``compiled``, allowing ``stop_token_ids`` once it is complete."""
    stops = sorted(int(t) for t in stop_token_ids)
    return _GrammarMatcher(xgrammar().GrammarMatcher(compiled, override_stop_tokens=stops or None))


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

    def forced_text(self) -> str:
        """The text every continuation starts with (empty when the next text is a choice)."""
        return "" if self._engine.is_terminated() else str(self._engine.find_jump_forward_string())

    def fork(self) -> _GrammarMatcher:
        return _GrammarMatcher(self._engine.fork())
