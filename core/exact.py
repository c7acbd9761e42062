"""Exact distributions by enumeration, for small vocabularies and short lengths.

These are the references the samplers are tested against: the power distribution
π(x) ∝ p(x)^α over whole completions, its next-token marginal p_pow (algorithm.md §2), and the
exact distributions of the baselines. Every completion is enumerated through the backend's
``top_k`` with k = vocabulary size, one batched call per position.

With a ``constraint`` only valid completions are enumerated (every token allowed after its
prefix), so ``power_distribution`` is π_G(x) ∝ p(x)^α · 1[x valid] and the baselines' are
those of sampling the masked model (see :mod:`power_sampling.constraints.base`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .backends.base import Backend, StopCondition
from .constraints import Constraint, Matcher
from .power_math import logsumexp

Completion = tuple[int, ...]


def enumerate_completions(
    backend: Backend,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    stop_token_ids: Sequence[int] | None = None,
    constraint: Constraint | None = None,
) -> dict[Completion, tuple[float, float]]:
    """Every completion with non-zero probability: ``{tokens: (log p, log q_T)}``.

    A completion ends at a stop token (included) or after ``max_new_tokens`` tokens. ``log p`` is
    its base log-probability and ``log q_T`` its log-probability when every token is drawn at
    ``temperature`` (from the allowed tokens, renormalised, under ``constraint``).
    """
    stop = backend.stop | StopCondition(frozenset(stop_token_ids or ()))
    prompt = tuple(int(t) for t in prompt_ids)
    root = None if constraint is None else constraint.matcher(backend, stop.token_ids)
    done: dict[Completion, tuple[float, float]] = {}
    frontier: dict[Completion, tuple[float, float, Matcher | None]] = {(): (0.0, 0.0, root)}
    for _ in range(max_new_tokens):
        if not frontier:
            break
        prefixes = list(frontier)
        requests = [prompt + p for p in prefixes]
        if root is None:  # backends without constraint support still enumerate unconstrained
            out = backend.top_k(requests, backend.vocab_size)
        else:
            masks = [frontier[p][2] for p in prefixes]
            out = backend.top_k(requests, backend.vocab_size, constraint=masks)
        nxt: dict[Completion, tuple[float, float, Matcher | None]] = {}
        for prefix, entry in zip(prefixes, out.entries, strict=True):
            logp = np.asarray(entry.logprobs, dtype=np.float64)
            if temperature == 0.0:  # greedy: the first entry is the most likely (lowest id)
                logq = np.where(np.arange(len(logp)) == 0, 0.0, -np.inf)
            else:
                logq = logp / temperature - logsumexp(logp / temperature)
            base_p, base_q, matcher = frontier[prefix]
            for token, lp, lq in zip(entry.token_ids, logp, logq, strict=True):
                if not np.isfinite(lp):
                    continue
                seq = (*prefix, token)
                scores = (base_p + float(lp), base_q + float(lq))
                if token in stop.token_ids:
                    done[seq] = scores
                    continue
                child = None if matcher is None else matcher.fork()
                if child is not None and not child.accept(token):
                    raise AssertionError(f"the backend returned disallowed token {token}")
                nxt[seq] = (*scores, child)
        frontier = nxt
    done.update({x: (lp, lq) for x, (lp, lq, _) in frontier.items()})
    return done


def _normalise(log_weights: dict[Completion, float]) -> dict[Completion, float]:
    keys = list(log_weights)
    values = np.array([log_weights[k] for k in keys])
    probs = np.exp(values - logsumexp(values))
    return dict(zip(keys, probs.tolist(), strict=True))


def power_distribution(
    backend: Backend,
    prompt_ids: Sequence[int],
    alpha: float,
    max_new_tokens: int,
    *,
    stop_token_ids: Sequence[int] | None = None,
    constraint: Constraint | None = None,
) -> dict[Completion, float]:
    """The exact power distribution π(x) ∝ p(x | prompt)^α over all completions (π_G, over the
    valid ones, under ``constraint``)."""
    table = enumerate_completions(
        backend, prompt_ids, max_new_tokens, stop_token_ids=stop_token_ids, constraint=constraint
    )
    return _normalise({x: alpha * lp for x, (lp, _) in table.items()})


def base_distribution(
    backend: Backend,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    stop_token_ids: Sequence[int] | None = None,
    constraint: Constraint | None = None,
) -> dict[Completion, float]:
    """The exact distribution of ancestral sampling at ``temperature`` (1 = the model, 1/α = low
    temperature), of the masked model under ``constraint``."""
    table = enumerate_completions(
        backend,
        prompt_ids,
        max_new_tokens,
        temperature=temperature,
        stop_token_ids=stop_token_ids,
        constraint=constraint,
    )
    return {x: float(np.exp(lq)) for x, (_, lq) in table.items()}


def best_of_n_distribution(
    backend: Backend,
    prompt_ids: Sequence[int],
    n: int,
    max_new_tokens: int,
    *,
    stop_token_ids: Sequence[int] | None = None,
    constraint: Constraint | None = None,
) -> dict[Completion, float]:
    """The exact distribution of the most likely of ``n`` standard samples.

    With F(s) the probability that one sample has log p ≤ s, the winner has log-likelihood s
    with probability F(s)^n - F(s⁻)^n; completions tied at s share it in proportion to their
    sampling probability. Under ``constraint`` the samples come from the masked model q and are
    ranked by their base log p.
    """
    table = enumerate_completions(
        backend, prompt_ids, max_new_tokens, stop_token_ids=stop_token_ids, constraint=constraint
    )
    groups: dict[float, list[Completion]] = defaultdict(list)
    for x, (lp, _) in table.items():
        groups[round(lp, 12)].append(x)
    out: dict[Completion, float] = {}
    below = 0.0
    for level in sorted(groups):
        members = groups[level]
        mass = [float(np.exp(table[x][1])) for x in members]
        upto = below + sum(mass)
        win = min(upto, 1.0) ** n - below**n
        for x, m in zip(members, mass, strict=True):
            out[x] = win * m / sum(mass)
        below = upto
    return out


def marginal(distribution: dict[Completion, float], length: int = 1) -> dict[Completion, float]:
    """The distribution of the first ``length`` tokens (shorter completions count as they are)."""
    out: dict[Completion, float] = defaultdict(float)
    for x, p in distribution.items():
        out[x[:length]] += p
    return dict(out)


def next_token_power_distribution(
    backend: Backend,
    prompt_ids: Sequence[int],
    alpha: float,
    max_new_tokens: int,
    *,
    stop_token_ids: Sequence[int] | None = None,
) -> dict[int, float]:
    """The exact p_pow(v | prompt) = Σ_f π(v, f): the next-token marginal of π (theorem §2)."""
    pi = power_distribution(
        backend, prompt_ids, alpha, max_new_tokens, stop_token_ids=stop_token_ids
    )
    return {x[0]: p for x, p in marginal(pi, 1).items()}


def total_variation(p: dict[Completion, float], q: dict[Completion, float]) -> float:
    """½ Σ |p(x) - q(x)| over the union of supports."""
    return 0.5 * sum(abs(p.get(x, 0.0) - q.get(x, 0.0)) for x in set(p) | set(q))
