"""The power-sampling estimator, in log space, on plain arrays (no model in sight).

Notation (algorithm.md §2-3): K candidates v with base log-probs log p(v | prefix); for each, M
rollouts f_r with total base log-likelihoods Λ_r = Σ log p over the rollout's tokens.

    log ζ̂(v)      = logsumexp_r( log w_r + (α-1) Λ_r )          w_r = 1/M for Monte Carlo
    p̂(v)          = softmax_v( α log p(v) + log ζ̂(v) )
    p̂_(-s)(v)     = the same with rollout s left out of every candidate (w_r = 1/(M-1))
    p̂_JK(v)       = M p̂(v) - (M-1)/M Σ_s p̂_(-s)(v)

ζ(v) = E_f[p(f)^(α-1)] is the "future quality" of v. With exact weights w_r = p(f_r) over every
future f_r, log ζ̂ is exact; that is how tests compare this module with brute-force enumeration.
Under a constraint, rollouts drawn from the masked model carry importance weights: μ_r, the
summed log allowed mass over the rollout, is added to each term (α-1) Λ_r (the derivation is in
:mod:`power_sampling.constraints.base`); μ_r = -inf (a dead end) removes the rollout's term.
A candidate with no future (it ended the sequence) has ζ = 1. All arithmetic is float64 and log
space: (α-1) Λ is hundreds of nats for a 192-token rollout. Inputs are never mutated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]


def logsumexp(x: ArrayLike, axis: int = -1) -> Array:
    """log Σ exp(x) along ``axis``; all -inf gives -inf (not NaN)."""
    a = np.asarray(x, dtype=np.float64)
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - peak), axis=axis, keepdims=True)) + peak
    return np.squeeze(out, axis=axis)


def softmax(logits: ArrayLike) -> Array:
    """Normalised probabilities of 1-D log-weights (stable for any finite scale). All -inf
    (every entry impossible) gives the uniform distribution rather than NaN."""
    a = np.asarray(logits, dtype=np.float64)
    total = logsumexp(a)
    if np.isneginf(total):
        return np.full(a.shape, 1.0 / a.size)
    return np.exp(a - total)


def log_zeta(
    rollout_logprobs: ArrayLike,
    alpha: float,
    log_weights: ArrayLike | None = None,
    log_mass: ArrayLike | None = None,
) -> Array:
    """log ζ̂ per candidate from rollout log-likelihoods.

    ``rollout_logprobs``: Λ, shape [K, M]. ``log_weights``: log w, shape [K, M]; default
    -log M (Monte Carlo). Entries with weight -inf are padding (ragged exact enumeration) and
    contribute nothing whatever their Λ. ``log_mass``: μ, shape [K, M], the constrained
    rollouts' importance corrections (default 0: no constraint).
    """
    lam = np.asarray(rollout_logprobs, dtype=np.float64)
    weights = (
        np.full_like(lam, -np.log(lam.shape[-1]))
        if log_weights is None
        else np.broadcast_to(np.asarray(log_weights, dtype=np.float64), lam.shape)
    )
    # A rollout of probability zero (Λ = -inf) adds p(f)^α = 0 to ζ = Σ_f p(f)^α for every
    # α > 0; (α-1)·Λ would be NaN at α = 1 and +inf below it, so it is dropped explicitly.
    dropped = np.isneginf(weights) | np.isneginf(lam)
    terms = weights + (alpha - 1.0) * np.where(dropped, 0.0, lam)
    if log_mass is not None:
        terms = terms + np.broadcast_to(np.asarray(log_mass, dtype=np.float64), lam.shape)
    return logsumexp(np.where(dropped, -np.inf, terms), axis=-1)


@dataclass(frozen=True)
class CandidateScores:
    """What the estimator computed for one decision over K candidates."""

    log_zeta: Array
    """log ζ̂ per candidate (0 for a candidate without future)."""
    p_hat: Array
    """The plain ratio estimate p̂ of the power distribution over the candidates."""
    p_jk: Array
    """The jackknife estimate, clipped at 0 and renormalised (equals p̂ when M = 1 or when
    clipping leaves nothing)."""
    probs: Array
    """The distribution sampled from: ``p_jk`` with the jackknife on, else ``p_hat``."""
    p_jk_raw: Array | None = None
    """The jackknife before clipping (sums to 1, entries may be negative); None without it."""
    p_loo: Array | None = None
    """The leave-one-out estimates p̂_(-s), shape [M, K]; None when M < 2."""

    def settled(self, tolerance: float) -> bool:
        """Whether more rollouts are unlikely to change the decision: one candidate holds at
        least 1 - ``tolerance`` of ``probs`` and still does with any single rollout left out
        (so no one lucky rollout makes it look certain)."""
        top = int(np.argmax(self.probs))
        if self.probs[top] < 1 - tolerance:
            return False
        return self.p_loo is None or bool((self.p_loo[:, top] >= 1 - tolerance).all())


def power_distribution(log_p: ArrayLike, log_zeta_: ArrayLike, alpha: float) -> Array:
    """softmax(α log p + log ζ) over the candidates. If every candidate has ζ = 0 (all their
    constrained rollouts hit dead ends), the estimate carries no information and
    softmax(α log p) is returned."""
    weights = alpha * np.asarray(log_p, dtype=np.float64) + np.asarray(log_zeta_)
    if not np.isfinite(weights).any():
        return softmax(alpha * np.asarray(log_p, dtype=np.float64))
    return softmax(weights)


def score_candidates(
    log_p: ArrayLike,
    rollout_logprobs: ArrayLike,
    alpha: float,
    *,
    has_future: ArrayLike | None = None,
    jackknife: bool = True,
    log_mass: ArrayLike | None = None,
) -> CandidateScores:
    """Estimate the power distribution over K candidates from M rollouts each.

    ``log_p``: [K] base log-probs of the candidates (tokens or whole blocks).
    ``rollout_logprobs``: [K, M] rollout log-likelihoods Λ; rows where ``has_future`` is False
    (the candidate ended the sequence) are ignored and get log ζ = 0. ``log_mass``: [K, M]
    importance corrections μ of constrained rollouts (default none).
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    lam = np.asarray(rollout_logprobs, dtype=np.float64).reshape(len(log_p), -1)
    future = (
        np.ones(len(log_p), dtype=bool)
        if has_future is None
        else np.asarray(has_future, dtype=bool)
    )
    _check_model_output(log_p, "candidate log-probs")
    _check_model_output(lam[future], "rollout log-likelihoods")
    m = lam.shape[1]
    mu = None if log_mass is None else np.asarray(log_mass, dtype=np.float64).reshape(lam.shape)
    if mu is not None:
        mu = np.where(future[:, None], mu, 0.0)
    if not future.any() or m == 0:
        p = power_distribution(log_p, np.zeros_like(log_p), alpha)
        return CandidateScores(np.zeros_like(log_p), p, p, p)

    lz = np.where(future, log_zeta(np.where(future[:, None], lam, 0.0), alpha, log_mass=mu), 0.0)
    p_hat = power_distribution(log_p, lz, alpha)
    if m == 1:
        return CandidateScores(lz, p_hat, p_hat, p_hat)

    # Leave rollout s out of every candidate at once: weights 1/(M-1) on the others.
    leave_out = np.where(np.eye(m, dtype=bool), -np.inf, -np.log(m - 1))  # [M(s), M(r)]
    lz_loo = log_zeta(
        np.broadcast_to(np.where(future[:, None], lam, 0.0)[None], (m, len(log_p), m)),
        alpha,
        leave_out[:, None, :],
        None if mu is None else np.broadcast_to(mu[None], (m, len(log_p), m)),
    )  # [M(s), K]
    lz_loo = np.where(future[None], lz_loo, 0.0)
    p_loo = np.stack([power_distribution(log_p, row, alpha) for row in lz_loo])
    if not jackknife:
        return CandidateScores(lz, p_hat, p_hat, p_hat, p_loo=p_loo)
    raw = m * p_hat - (m - 1) / m * p_loo.sum(axis=0)
    # Single jackknife entries can be negative: clip and renormalise (algorithm.md §7).
    clipped = np.clip(raw, 0.0, None)
    total = clipped.sum()
    p_jk = clipped / total if total > 0 else p_hat
    return CandidateScores(lz, p_hat, p_jk, p_jk, raw, p_loo)


def kept_mass(
    log_p: ArrayLike,
    log_zeta_: ArrayLike,
    alpha: float,
    *,
    has_future: ArrayLike | None = None,
    dropped_future: float = -np.inf,
    dropped_ended: float = -np.inf,
) -> float:
    """Share of the candidate pool's estimated power mass that the kept candidates hold.

    The power mass of a candidate c is p(c)^α · ζ(c). The kept candidates use their estimate
    ζ̂ (``log_zeta_``); the dropped ones had no rollouts, so each is given the mean ζ̂ of the
    kept candidates that have a future (ζ = 1 for dropped candidates that ended the sequence):

        kept = Σ_kept p^α ζ̂        share = kept / (kept + ζ̄ · D_future + D_ended)

    ``dropped_future`` / ``dropped_ended``: log Σ p^α over the dropped candidates with and
    without a future (-inf when there are none). 1.0 means nothing of weight was dropped.
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    lz = np.asarray(log_zeta_, dtype=np.float64)
    future = np.ones(len(log_p), dtype=bool) if has_future is None else np.asarray(has_future, bool)
    kept = logsumexp(alpha * log_p + lz)
    zeta_bar = float(logsumexp(lz[future]) - np.log(future.sum())) if future.any() else 0.0
    total = logsumexp(np.array([kept, zeta_bar + dropped_future, dropped_ended]))
    return float(np.exp(kept - total)) if np.isfinite(total) else 1.0


def dropped_token_mass(kept_log_p: ArrayLike, alpha: float, vocab_size: int) -> float:
    """An upper bound on log Σ p(v)^α over the tokens outside the top K (token level).

    Only the kept tokens' probabilities are known; the rest share r = 1 - Σ_kept p, each at
    most the smallest kept p_K. For α ≥ 1, Σ p^α ≤ p_K^(α-1) · r; for α < 1 (concave), at most
    n^(1-α) · r^α over the n unkept tokens.
    """
    kept = np.exp(np.asarray(kept_log_p, dtype=np.float64))
    rest = max(0.0, 1.0 - float(kept.sum()))
    unkept = vocab_size - len(kept)
    if rest <= 1e-12 or unkept <= 0 or len(kept) == 0:
        return -np.inf
    if alpha >= 1:
        return float((alpha - 1) * np.log(kept.min()) + np.log(rest))
    return float((1 - alpha) * np.log(unkept) + alpha * np.log(rest))


def _check_model_output(values: Array, what: str) -> None:
    """NaN or +inf log-probs come from a broken model output, never from sampling: refuse them
    rather than turn them into a sample. (-inf is a token or rollout of probability zero.)"""
    if np.isnan(values).any() or np.isposinf(values).any():
        raise ValueError(
            f"model output: the {what} contain NaN or +inf ({values.tolist()!r:.200}); the "
            "model's logits are broken (check its weights and dtype), so nothing is sampled"
        )
