"""Scalable power sampling (Ji et al., arXiv 2601.21590), token level and block level.

One step, for every active sequence at once:

1. Propose candidates: the top-K next tokens (``block_size`` 1, Algorithm 1), or L blocks of B
   tokens drawn from the base model, deduplicated, top-K by total log-likelihood (Algorithm 2).
   One batched backend call.
2. Roll out: M continuations of up to H tokens (at most the tokens left) after every candidate
   that did not end the sequence. One batched backend call for all K·M rollouts.
3. Score: log ζ̂ from the rollouts, p̂ and the jackknife p̂_JK over the candidates
   (:func:`power_sampling.power_math.score_candidates`). A candidate that ended the sequence, or
   a step with no tokens left after it, has ζ = 1: the block low-temperature rule.
4. Draw one candidate from p̂_JK with the sampler's generator and commit it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import StopCondition
from ..generation import StepTrace
from ..power_math import score_candidates
from .base import Commit, Sampler, SequenceState


@dataclass(frozen=True)
class Candidate:
    token_ids: tuple[int, ...]
    logprob: float
    finished: bool


class ScalablePowerSampler(Sampler):
    """Algorithms 1 and 2 of the paper over any backend."""

    def step(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[Commit]:
        cfg = self.config
        if cfg.block_size == 1:
            candidates = self._top_tokens(active, stop)
        else:
            candidates = self._top_blocks(active, stop, rng)

        # Roll out every candidate that leaves a future, all sequences in one call.
        requests, budgets, owners = [], [], []
        for i, (state, cands) in enumerate(zip(active, candidates, strict=True)):
            if len(cands) < 2:
                continue  # a single candidate is chosen with certainty: no rollouts needed
            for j, cand in enumerate(cands):
                horizon = min(cfg.rollout_length, state.remaining - len(cand.token_ids))
                if not cand.finished and horizon > 0:
                    requests.append((state, state.prefix + cand.token_ids))
                    budgets.append(horizon)
                    owners.append((i, j))
        rollouts = self.sample(
            requests, cfg.num_rollouts, budgets, rng=rng, stop=stop, kind="rollout"
        )
        lam = [np.zeros((len(c), cfg.num_rollouts)) for c in candidates]
        has_future = [np.zeros(len(c), dtype=bool) for c in candidates]
        for (i, j), row in zip(owners, rollouts, strict=True):
            lam[i][j] = [r.logprob for r in row]
            has_future[i][j] = True

        commits = []
        for i, (state, cands) in enumerate(zip(active, candidates, strict=True)):
            scores = score_candidates(
                [c.logprob for c in cands],
                lam[i],
                cfg.alpha,
                has_future=has_future[i],
                jackknife=cfg.jackknife,
            )
            chosen = int(rng.choice(len(cands), p=scores.probs)) if len(cands) > 1 else 0
            if state.trace is not None:
                state.trace.append(
                    StepTrace(
                        position=len(state.tokens),
                        candidates=[c.token_ids for c in cands],
                        candidate_logprobs=[c.logprob for c in cands],
                        log_zeta=scores.log_zeta.tolist(),
                        p_hat=scores.p_hat.tolist(),
                        p_jk=scores.p_jk.tolist(),
                        chosen=chosen,
                        num_rollouts=int(has_future[i].sum()) * cfg.num_rollouts,
                    )
                )
            pick = cands[chosen]
            commits.append((state, state.commit(pick.token_ids, pick.finished)))
        return commits

    def _top_tokens(
        self, active: list[SequenceState], stop: StopCondition
    ) -> list[list[Candidate]]:
        """Algorithm 1: the K most likely next tokens are the candidates."""
        out = self.backend.top_k([s.prefix for s in active], self.config.top_k, keep_cache=True)
        for state in active:
            state.stats.backend_calls += 1
            state.stats.forward_tokens += round(out.forward_tokens / len(active))
        return [
            [
                Candidate((t,), lp, t in stop.token_ids)
                for t, lp in zip(entry.token_ids, entry.logprobs, strict=True)
            ]
            for entry in out.entries
        ]

    def _top_blocks(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[list[Candidate]]:
        """Algorithm 2: draw L blocks, drop duplicates, keep the K most likely."""
        cfg = self.config
        drawn = self.sample(
            [(s, s.prefix) for s in active],
            cfg.num_candidates,
            [min(cfg.block_size, s.remaining) for s in active],
            rng=rng,
            stop=stop,
            keep_cache=True,
        )
        out = []
        for row in drawn:
            distinct = {c.token_ids: Candidate(c.token_ids, c.logprob, c.finished) for c in row}
            ranked = sorted(distinct.values(), key=lambda c: -c.logprob)
            out.append(ranked[: cfg.top_k])
        return out
