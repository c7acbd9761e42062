"""MCMC power sampling (Karan & Du, arXiv 2510.14901), the baseline scalable power sampling beats.

Target π(x) ∝ p(x)^α, grown in blocks of B tokens. For every block, for all active sequences:

1. Extend the sequence by up to B tokens drawn from the proposal q = base model at temperature 1/α.
2. ``mcmc_steps`` Metropolis-Hastings steps, each: pick a cut point m uniformly among the
   generated tokens, regenerate everything from m up to the block's length with q, and accept with
   probability min(1, p(x')^α q(x | x') / (p(x)^α q(x' | x))), where the q terms are the proposal
   log-probs of the two suffixes (per-token values are kept, so the current suffix's q is known
   without scoring it again).
3. Stop once the horizon (the length the blocks have grown to) reaches the length cap.

Proposals regenerate up to the horizon. This is Karan & Du's rule (regenerate to the current
length) whenever the sequence has not ended; when it has, it lets the chain leave a short ended
sequence again, so that the MH chain targets π over completions capped at the horizon exactly.
For the same reason the ratio has the cut's own probability, 1/length, on both sides (it cancels
in the original's fixed-length case).

A chain that ends is not committed at once, unlike Karan & Du's stop at the end token: after a
block, the chain's state is a draw from π capped at the current horizon, under which ending
within it is more likely than under π capped at the length cap (about twice as likely at α = 1,
block size 1, 3 tokens). Stopping there made every block shorter than the answer biased towards
early endings. The horizon of an ended chain keeps growing by a block per step, with its MH steps,
until it reaches the length cap, so the result targets π over completions capped at
``max_new_tokens`` whatever the block size. The price: an answer that ends early costs the
remaining blocks' MH steps.

Under a constraint the proposal is the masked model at temperature 1/α: the backend reports its
masked, renormalised log-probs, so the same ratio targets π_G(x) ∝ p(x)^α 1[x valid] exactly;
a proposal that hits a dead end is rejected.

Earlier tokens can change until the end, so the sequence is committed in one piece when done.
Each MH step is one backend call over all sequences, not one per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Backend, Continuation, StopCondition
from ..config import PowerSamplingConfig
from .base import Commit, Sampler, SequenceState, dead_end


@dataclass
class _Chain:
    """The current state of one sequence's Markov chain, with per-token log-probs."""

    tokens: list[int] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    proposal: list[float] = field(default_factory=list)
    finished: bool = False
    length: int = 0
    """The length the current block grows the sequence to (the proposals' horizon)."""

    def replace_from(self, cut: int, suffix: Continuation) -> None:
        if len(suffix.proposal_logprobs) != len(suffix.token_ids):
            raise ValueError(
                "the backend returned no proposal log-probs for its continuations; MCMC's "
                "acceptance ratio needs them (Continuation.proposal_logprobs)"
            )
        self.tokens[cut:] = suffix.token_ids
        self.base[cut:] = suffix.token_logprobs
        self.proposal[cut:] = suffix.proposal_logprobs
        self.finished = suffix.finished


class MCMCSampler(Sampler):
    """Faithful Metropolis-Hastings power sampling over any backend."""

    def __init__(self, backend: Backend, config: PowerSamplingConfig) -> None:
        if not getattr(backend, "returns_proposal_logprobs", True):
            fix = getattr(backend, "proposal_logprobs_fix", None) or (
                "(a vLLM engine built with logprobs_mode='raw_logprobs'); build the engine with "
                "logprobs_mode='processed_logprobs' (VLLMBackend.from_pretrained does)"
            )
            raise ValueError(
                f"{type(backend).__name__} cannot return the proposal log-probs at temperature "
                f"1/alpha that MCMC's acceptance ratio needs {fix}, or use method='power'"
            )
        super().__init__(backend, config)
        self._chains: dict[SequenceState, _Chain] = {}

    def step(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[Commit]:
        cfg = self.config
        temperature = 1.0 / cfg.alpha
        chains = [self._chain(state) for state in active]

        # 1. Grow every chain by one block from the proposal.
        growing = [(s, c) for s, c in zip(active, chains, strict=True) if not c.finished]
        grown = self.sample(
            [(s, s.prompt + tuple(c.tokens)) for s, c in growing],
            1,
            [min(cfg.block_size, s.max_new_tokens - len(c.tokens)) for s, c in growing],
            rng=rng,
            stop=stop,
            temperature=temperature,
        )
        for (state, chain), row in zip(growing, grown, strict=True):
            if not row[0].token_ids and not row[0].finished:
                raise dead_end(state)
            chain.replace_from(len(chain.tokens), row[0])
        for state, chain in zip(active, chains, strict=True):  # ended chains' horizons grow too
            chain.length = min(chain.length + cfg.block_size, state.max_new_tokens)

        # 2. Metropolis-Hastings over the whole generated sequence, all chains per call.
        for _ in range(cfg.mcmc_steps):
            cuts = [int(rng.integers(0, len(c.tokens))) for c in chains]
            proposals = self.sample(
                [
                    (s, s.prompt + tuple(c.tokens[:m]))
                    for s, c, m in zip(active, chains, cuts, strict=True)
                ],
                1,
                [c.length - m for c, m in zip(chains, cuts, strict=True)],
                rng=rng,
                stop=stop,
                temperature=temperature,
            )
            for chain, cut, row in zip(chains, cuts, proposals, strict=True):
                new = row[0]
                if new.log_mass == -np.inf:
                    continue  # a dead end has no valid completion: rejected
                # The cut is uniform over the current length, so the reverse move's choice of
                # cut has probability 1/len(x'): a factor len(x)/len(x') when lengths differ.
                log_ratio = (
                    cfg.alpha * (new.logprob - sum(chain.base[cut:]))
                    + (sum(chain.proposal[cut:]) - sum(new.proposal_logprobs))
                    + np.log(len(chain.tokens) / (cut + len(new.token_ids)))
                )
                if np.log(rng.random()) < log_ratio:
                    chain.replace_from(cut, new)

        # 3. Commit chains whose horizon reached the length cap, in one piece. A chain that
        # ended earlier is not committed then: its state is a draw from the target capped at
        # the current horizon, where ending early is more likely than under the final target.
        commits = []
        for state, chain in zip(active, chains, strict=True):
            if chain.length >= state.max_new_tokens:
                del self._chains[state]
                commits.append((state, state.commit(chain.tokens, chain.finished, sum(chain.base))))
        return commits

    def _chain(self, state: SequenceState) -> _Chain:
        return self._chains.setdefault(state, _Chain())
