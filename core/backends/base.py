"""The backend protocol: the two primitives every sampler is written against.

A backend is a causal LM seen through token ids only. It offers

* ``top_k``: the k most likely next tokens of each prefix with their base log-probs, and
* ``sample``: ``n`` continuations of each prefix, up to a token budget, with their summed base
  log-probs (temperature 1, no truncation) and a finished flag.

Both are batched over prefixes, so a sampler makes one call per decision step, never one per
candidate or per rollout. The shape fits vLLM (``SamplingParams(n=..., logprobs=...)``) and an
OpenAI-compatible completions server (top-k ≤ 20 log-probs, ``n`` continuations) as well as the
in-process transformers backend.

``keep_cache`` is a hint: the caller will soon ask for prefixes that extend the returned
sequences (the chosen candidate block, or a candidate token), so a backend with a KV cache keeps
those rows instead of prefilling them again. Backends without a cache ignore it.

``constraint`` (optional, one :class:`~power_sampling.constraints.Matcher` or None per prefix,
positioned at the prefix's end) restricts every drawn or ranked token to the allowed ones. Log-probs
stay the base model's (unnormalised under the mask), and each continuation reports
``log_mass``, the summed log of the base probability mass the constraint allowed at each of its
steps: the importance correction power sampling needs (see :mod:`power_sampling.constraints`).
Without a constraint nothing changes (``log_mass`` is 0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..constraints import Matcher

TokenIds = tuple[int, ...]


@dataclass(frozen=True)
class StopCondition:
    """Where a continuation ends, besides the length budget.

    ``token_ids``: end-of-sequence / end-of-turn ids; the end token is part of the continuation.
    ``strings``: stop strings, checked on decoded text by backends that have a tokenizer; the
    continuation ends with the token that completes the string.
    """

    token_ids: frozenset[int] = frozenset()
    strings: tuple[str, ...] = ()

    def __or__(self, other: StopCondition) -> StopCondition:
        return StopCondition(
            self.token_ids | other.token_ids,
            tuple(dict.fromkeys(self.strings + other.strings)),
        )


@dataclass(frozen=True)
class Continuation:
    """One sampled continuation of a prefix.

    ``logprob`` is the sum of the base model's log-probs (temperature 1) over ``token_ids``.
    ``token_logprobs`` are those per-token base log-probs; ``proposal_logprobs`` are the per-token
    log-probs under the distribution the tokens were actually drawn from (after temperature),
    which the MCMC acceptance ratio needs (under a constraint: the masked, renormalised
    distribution). ``finished`` is True when the continuation ended at an end token or stop
    string (included in ``token_ids``), False when it ran out of budget. ``log_mass`` is
    Σ_t log Σ_{v allowed} p(v | prefix_t) over the drawn tokens: 0 without a constraint, -inf when
    the continuation stopped at a dead end (no allowed token had probability), in which case it is
    not ``finished``.
    """

    token_ids: TokenIds
    logprob: float
    finished: bool
    token_logprobs: tuple[float, ...] = ()
    proposal_logprobs: tuple[float, ...] = ()
    log_mass: float = 0.0


@dataclass(frozen=True)
class TopK:
    """The most likely next tokens of one prefix, in descending order of base log-prob."""

    token_ids: TokenIds
    logprobs: tuple[float, ...]


@dataclass(frozen=True)
class SampleOutput:
    """``continuations[i]`` holds the ``n`` continuations of ``prefixes[i]``.

    ``forward_tokens`` counts the token positions the model actually ran (prefill plus decode),
    so callers can see what the KV cache saved. ``sequential_steps`` counts the model runs that
    had to happen one after another (prefill calls plus decode steps, however many rows each
    had): the call's critical path, which sets its latency where a batch step costs about the
    same as a single row (a GPU). 0 means the backend does not report it.
    """

    continuations: list[list[Continuation]]
    forward_tokens: int = 0
    sequential_steps: int = 0


@dataclass(frozen=True)
class TopKOutput:
    """``entries[i]`` holds the top tokens of ``prefixes[i]``; the counts as in SampleOutput."""

    entries: list[TopK]
    forward_tokens: int = 0
    sequential_steps: int = 0


@runtime_checkable
class Backend(Protocol):
    """A causal LM over token ids. See the module docstring for the contract."""

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model scores."""
        ...

    @property
    def stop(self) -> StopCondition:
        """The model's own end-of-sequence and end-of-turn ids."""
        ...

    def top_k(
        self,
        prefixes: Sequence[Sequence[int]],
        k: int,
        *,
        keep_cache: bool = False,
        constraint: Sequence[Matcher | None] | None = None,
    ) -> TopKOutput:
        """The ``k`` most likely next tokens of every prefix with their base log-probs (only
        allowed tokens under ``constraint``)."""
        ...

    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        n: int,
        max_new_tokens: int | Sequence[int],
        *,
        seed: int | Sequence[int],
        temperature: float = 1.0,
        stop: StopCondition | None = None,
        keep_cache: bool = False,
        constraint: Sequence[Matcher | None] | None = None,
    ) -> SampleOutput:
        """``n`` continuations of up to ``max_new_tokens`` tokens for every prefix.

        ``max_new_tokens`` is one budget for all prefixes or one per prefix.
        Tokens are drawn at ``temperature`` (1.0 = the base model; 0 = greedy, the most likely
        token, lowest id among equals, with proposal log-prob 0) without top-k/top-p
        truncation. ``seed`` is one per prefix, or one for the call from which the prefixes'
        seeds are derived (:func:`prefix_seeds`); a prefix's continuations depend on its own
        seed only, never on the other prefixes of the call, so calls of several requests can be
        merged without changing what any of them draws. ``stop`` replaces the model's own
        end condition when given (callers usually pass ``backend.stop | extra``).
        ``constraint``: per prefix, a matcher at its end (forked per continuation, never advanced
        itself); tokens are drawn from the allowed ones, renormalised.
        """
        ...


@runtime_checkable
class TextBackend(Backend, Protocol):
    """A backend that also owns a tokenizer, so prompts can be text or chat messages."""

    @property
    def name(self) -> str:
        """A short model name for logs, metadata and cache keys."""
        ...

    @property
    def max_context(self) -> int | None:
        """The model's context length in tokens, if known."""
        ...

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds what the tokenizer adds to a prompt
        (e.g. BOS)."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` with special tokens removed."""
        ...

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template, generation prompt
        added."""
        ...


@runtime_checkable
class ScoringBackend(Backend, Protocol):
    """A backend that also scores given sequences (one teacher-forced pass, no drawing): what a
    server's prompt log-probs need (:mod:`power_sampling.serving.model_api`)."""

    def score(self, sequences: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
        """The base log-probs (temperature 1) of every token of each sequence after its first."""
        ...


class BaseBackend(ABC):
    """A :class:`Backend` whose calls are checked once, here, before a subclass does the work.

    ``top_k`` and ``sample`` reject empty prefixes, ids outside the vocabulary and a constraint
    list that does not give one matcher (or None) per prefix; ``sample`` also turns
    ``max_new_tokens`` into one budget per prefix and ``stop=None`` into the model's own
    :attr:`stop`. :meth:`_check_top_k` and :meth:`_check_sample` hold a subclass's own checks.
    Subclasses implement ``_top_k`` and ``_sample``, which receive every prefix as a tuple of
    ints. A wrapper that delegates to another backend (:class:`~.ignore_eos.IgnoreEOS`) is not
    one: the backend it wraps checks the call.
    """

    if TYPE_CHECKING:  # a subclass's, as an attribute or a property

        @property
        def vocab_size(self) -> int: ...

        @property
        def stop(self) -> StopCondition: ...

    def top_k(
        self,
        prefixes: Sequence[Sequence[int]],
        k: int,
        *,
        keep_cache: bool = False,
        constraint: Sequence[Matcher | None] | None = None,
    ) -> TopKOutput:
        """See :meth:`Backend.top_k`."""
        validate_prefixes(prefixes, self.vocab_size)
        check_constraint(constraint, len(prefixes))
        self._check_top_k(k)
        return self._top_k(_token_ids(prefixes), k, keep_cache=keep_cache, constraint=constraint)

    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        n: int,
        max_new_tokens: int | Sequence[int],
        *,
        seed: int | Sequence[int],
        temperature: float = 1.0,
        stop: StopCondition | None = None,
        keep_cache: bool = False,
        constraint: Sequence[Matcher | None] | None = None,
    ) -> SampleOutput:
        """See :meth:`Backend.sample`."""
        validate_prefixes(prefixes, self.vocab_size)
        check_constraint(constraint, len(prefixes))
        limits = budgets(max_new_tokens, len(prefixes))
        seeds = prefix_seeds(seed, len(prefixes))
        stop = self.stop if stop is None else stop
        if not (isinstance(temperature, int | float) and 0.0 <= temperature < float("inf")):
            raise ValueError(
                f"temperature={temperature!r} is invalid: use a finite number >= 0 "
                "(1 = the base model, 0 = greedy)"
            )
        self._check_sample(n, max_new_tokens, limits, temperature, stop)
        return self._sample(
            _token_ids(prefixes),
            n,
            limits,
            seeds=seeds,
            temperature=temperature,
            stop=stop,
            keep_cache=keep_cache,
            constraint=constraint,
        )

    def _check_top_k(self, k: int) -> None:
        """A subclass's own checks of a ``top_k`` call; none by default."""
        return None

    def _check_sample(
        self,
        n: int,
        max_new_tokens: int | Sequence[int],
        limits: list[int],
        temperature: float,
        stop: StopCondition,
    ) -> None:
        """A subclass's own checks of a ``sample`` call (``limits``: one budget per prefix);
        none by default."""
        return None

    @abstractmethod
    def _top_k(
        self,
        prefixes: list[TokenIds],
        k: int,
        *,
        keep_cache: bool,
        constraint: Sequence[Matcher | None] | None,
    ) -> TopKOutput:
        """``top_k`` after the checks."""

    @abstractmethod
    def _sample(
        self,
        prefixes: list[TokenIds],
        n: int,
        limits: list[int],
        *,
        seeds: list[int],
        temperature: float,
        stop: StopCondition,
        keep_cache: bool,
        constraint: Sequence[Matcher | None] | None,
    ) -> SampleOutput:
        """``sample`` after the checks, with one budget and one seed per prefix and the stop
        condition."""


def _token_ids(prefixes: Sequence[Sequence[int]]) -> list[TokenIds]:
    return [tuple(int(t) for t in p) for p in prefixes]


def budgets(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    """One token budget per prefix, from a shared int or a per-prefix sequence."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * count
    out = [int(b) for b in max_new_tokens]
    if len(out) != count:
        raise ValueError(f"got {len(out)} token budgets for {count} prefixes; pass one per prefix")
    return out


def prefix_seeds(seed: int | Sequence[int], count: int) -> list[int]:
    """One seed per prefix: ``seed`` itself when it is a sequence, else derived from the call's
    seed. Derived seeds are spread over 62 bits, so that per-continuation seeds built on them
    (vLLM gives the ``n`` children of a request ``seed + i``) of different prefixes never meet."""
    if isinstance(seed, int | np.integer):
        state = np.random.SeedSequence(int(seed) % 2**128).generate_state(max(count, 1), np.uint64)
        return [int(s) >> 2 for s in state[:count]]
    out = [int(s) for s in seed]
    if len(out) != count:
        raise ValueError(f"got {len(out)} seeds for {count} prefixes; pass one per prefix")
    return out


def validate_prefixes(prefixes: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Reject empty prefixes and ids outside the vocabulary with a message that names the fix."""
    for prefix in prefixes:
        if len(prefix) == 0:
            raise ValueError(
                "empty prompt: the model needs at least one token to condition on; "
                "pass a non-empty prompt (e.g. a BOS token)"
            )
        for token in prefix:
            if not 0 <= int(token) < vocab_size:
                raise ValueError(
                    f"token id {token} is outside the vocabulary [0, {vocab_size}); "
                    "encode the prompt with this model's tokenizer"
                )


def check_constraint(constraint: Sequence[object] | None, count: int) -> None:
    """Reject a constraint list that does not give one matcher (or None) per prefix."""
    if constraint is not None and len(constraint) != count:
        raise ValueError(
            f"got {len(constraint)} constraint matchers for {count} prefixes; pass one per prefix"
        )
