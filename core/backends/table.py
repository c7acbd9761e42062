"""TableLM: a language model given by a Python function, for exact tests and teaching.

``TableLM(next_token_probs, eos_token_id)`` wraps any callable ``prefix -> probabilities over the
vocabulary``. Small vocabularies and short lengths make every completion enumerable, so samplers
can be compared with the exact power distribution (see :mod:`power_sampling.exact`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..power_math import logsumexp
from .base import (
    BaseBackend,
    Continuation,
    SampleOutput,
    StopCondition,
    TokenIds,
    TopK,
    TopKOutput,
    validate_prefixes,
)

if TYPE_CHECKING:
    from ..constraints import Matcher

NextTokenProbs = Callable[[tuple[int, ...]], Sequence[float]]


class TableLM(BaseBackend):
    """A backend whose next-token distribution is ``next_token_probs(prefix)``.

    ``prefix`` is the tuple of all token ids so far (prompt included). The returned probabilities
    must be non-negative and sum to 1; the vocabulary size is their length (or ``vocab_size``).
    """

    def __init__(
        self,
        next_token_probs: NextTokenProbs,
        eos_token_id: int | None,
        *,
        vocab_size: int | None = None,
        name: str = "table",
    ) -> None:
        self._fn = next_token_probs
        self._vocab_size = vocab_size
        self._cache: dict[tuple[int, ...], np.ndarray] = {}
        self.name = name
        self._stop = StopCondition(
            frozenset() if eos_token_id is None else frozenset({int(eos_token_id)})
        )

    @property
    def vocab_size(self) -> int:
        if self._vocab_size is None:
            self._vocab_size = len(self._fn((0,)))
        return self._vocab_size

    @property
    def stop(self) -> StopCondition:
        return self._stop

    def probs(self, prefix: Sequence[int]) -> np.ndarray:
        """The validated next-token distribution after ``prefix`` (float64, read-only)."""
        key = tuple(int(t) for t in prefix)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        p = np.array(self._fn(key), dtype=np.float64)
        if p.ndim != 1 or len(p) != self.vocab_size:
            raise ValueError(
                f"next_token_probs{key} returned shape {p.shape}; "
                f"return one probability per token id (vocab_size={self.vocab_size})"
            )
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError(
                f"next_token_probs{key} returned negative or non-finite values {p.tolist()}; "
                "return probabilities >= 0"
            )
        if abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(
                f"next_token_probs{key} sums to {p.sum():.6g}, not 1; normalise the probabilities"
            )
        p.flags.writeable = False
        self._cache[key] = p
        return p

    def logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.probs(prefix))

    def allowed(self, matcher: Matcher | None) -> np.ndarray | None:
        """The boolean mask of tokens ``matcher`` allows next (None: no constraint)."""
        if matcher is None:
            return None
        from ..constraints import allowed_tokens

        return allowed_tokens(matcher, self.vocab_size)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
        """See :meth:`~.base.ScoringBackend.score`."""
        validate_prefixes(sequences, self.vocab_size)
        return [
            tuple(float(self.logprobs(seq[:j])[seq[j]]) for j in range(1, len(seq)))
            for seq in (tuple(int(t) for t in s) for s in sequences)
        ]

    def _top_k(
        self,
        prefixes: list[TokenIds],
        k: int,
        *,
        keep_cache: bool,
        constraint: Sequence[Matcher | None] | None,
    ) -> TopKOutput:
        entries = []
        for i, prefix in enumerate(prefixes):
            logp = self.logprobs(prefix)
            mask = self.allowed(constraint[i]) if constraint else None
            if mask is not None:
                logp = np.where(mask, logp, -np.inf)
            ranked = np.argsort(-logp, kind="stable")[:k]
            best = [int(t) for t in ranked if np.isfinite(logp[t])]
            entries.append(TopK(tuple(best), tuple(float(logp[t]) for t in best)))
        return TopKOutput(entries, forward_tokens=len(prefixes))

    def _check_sample(
        self,
        n: int,
        max_new_tokens: int | Sequence[int],
        limits: list[int],
        temperature: float,
        stop: StopCondition,
    ) -> None:
        if stop.strings:
            raise ValueError(
                "TableLM has no tokenizer, so it cannot match stop strings; "
                "pass stop token ids instead"
            )

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
        out = []
        steps = 0
        for i, (prefix, budget) in enumerate(zip(prefixes, limits, strict=True)):
            rows = []
            start = constraint[i] if constraint else None
            for child in range(n):
                rng = np.random.default_rng((seeds[i], child))  # this row's own stream
                matcher = None if start is None else start.fork()
                seq = list(prefix)
                tokens: list[int] = []
                base: list[float] = []
                proposal: list[float] = []
                finished, log_mass = False, 0.0
                while len(tokens) < budget and not finished:
                    logp = self.logprobs(seq)
                    mask = self.allowed(matcher)
                    masked = logp if mask is None else np.where(mask, logp, -np.inf)
                    mass = 0.0 if mask is None else float(logsumexp(masked))
                    if mass == -np.inf:  # dead end: no allowed token has probability
                        log_mass = -np.inf
                        break
                    logq = _tempered(masked - mass, temperature)
                    token = _draw(logq, rng)
                    if matcher is not None:
                        matcher.accept(token)
                    tokens.append(token)
                    seq.append(token)
                    base.append(float(logp[token]))
                    proposal.append(float(logq[token]))
                    log_mass += mass
                    finished = token in stop.token_ids
                steps += len(tokens)
                rows.append(
                    Continuation(
                        tuple(tokens),
                        float(sum(base)),
                        finished,
                        tuple(base),
                        tuple(proposal),
                        log_mass,
                    )
                )
            out.append(rows)
        return SampleOutput(out, forward_tokens=steps)


def _draw(logq: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw of one token from log-probs."""
    cdf = np.cumsum(np.exp(logq))
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


def _tempered(logp: np.ndarray, temperature: float) -> np.ndarray:
    """log-probs of the distribution p^(1/T), renormalised; at T = 0 all the mass on the most
    likely token (the lowest id among equals): greedy."""
    if temperature == 1.0:
        return logp
    if temperature == 0.0:
        greedy = np.full_like(logp, -np.inf)
        greedy[int(np.argmax(logp))] = 0.0
        return greedy
    scaled = np.where(np.isfinite(logp), logp / temperature, -np.inf)
    peak = scaled.max()
    return scaled - (peak + np.log(np.exp(scaled - peak).sum()))
