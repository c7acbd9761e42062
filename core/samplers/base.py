"""What every sampler shares: the per-sequence state, the step loop, and cost accounting.

A sampler advances a batch of sequences (one per prompt) one decision step at a time; each step
makes batched backend calls covering every active sequence. ``run`` yields the tokens each
step commits, which is the single streaming iterator everything else is built on.

A sequence may carry a constraint (:class:`~power_sampling.constraints.ConstraintCursor`); every
backend call for it then passes a matcher per prefix, so candidates and rollouts are drawn
under the same masks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Backend, Continuation, StopCondition
from ..config import UPPER_BOUNDS, PowerSamplingConfig, check_integer
from ..constraints import ConstraintCursor, Matcher
from ..generation import GenerationStats, StepTrace


@dataclass(eq=False)
class SequenceState:
    """One prompt's generation in progress (compared and hashed by identity)."""

    prompt: tuple[int, ...]
    max_new_tokens: int
    tokens: list[int] = field(default_factory=list)
    finished: bool = False
    """True once the sequence ended at a stop token or string (not merely the length cap)."""
    logprob: float = 0.0
    """Base log-likelihood log p(tokens | prompt) of the committed tokens."""
    stats: GenerationStats = field(default_factory=GenerationStats)
    trace: list[StepTrace] | None = None
    constraint: ConstraintCursor | None = None
    """The output's constraint, advanced with the committed tokens (None: unconstrained)."""

    def __post_init__(self) -> None:
        # A per-call budget reaches the loop here: 2.5 would never be used up exactly.
        self.max_new_tokens = check_integer("max_new_tokens", self.max_new_tokens)
        most = UPPER_BOUNDS["max_new_tokens"][0]
        if not 0 <= self.max_new_tokens <= most:
            raise ValueError(
                f"max_new_tokens={self.max_new_tokens} is invalid: use an integer in 1..{most}"
            )

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.tokens)

    @property
    def done(self) -> bool:
        return self.finished or self.remaining <= 0

    @property
    def prefix(self) -> tuple[int, ...]:
        return self.prompt + tuple(self.tokens)

    def commit(self, tokens: Sequence[int], finished: bool, logprob: float) -> tuple[int, ...]:
        """Append decided tokens with their base log-likelihood and return them."""
        if len(tokens) > self.remaining:
            raise AssertionError("samplers never propose past the length cap")
        accepted = tuple(tokens)
        if self.constraint is not None:
            self.constraint.commit(accepted)
        self.tokens.extend(accepted)
        self.logprob += logprob
        self.finished = self.finished or finished
        return accepted


Commit = tuple[SequenceState, tuple[int, ...]]


class Sampler(ABC):
    """Base class: subclasses implement ``step`` over the active sequences."""

    def __init__(self, backend: Backend, config: PowerSamplingConfig) -> None:
        self.backend = backend
        self.config = config

    def run(
        self, states: Sequence[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> Iterator[list[Commit]]:
        """Advance every state to completion, yielding each step's committed tokens."""
        while active := [s for s in states if not s.done]:
            commits = self.step(active, stop, rng)
            for state in active:
                state.stats.steps += 1
            yield [(state, tokens) for state, tokens in commits if tokens]

    @abstractmethod
    def step(
        self, active: list[SequenceState], stop: StopCondition, rng: np.random.Generator
    ) -> list[Commit]:
        """One decision step for every active sequence."""

    # -- backend calls with cost accounting -------------------------------------------------

    def sample(
        self,
        requests: Sequence[tuple[SequenceState, Sequence[int]]],
        n: int,
        budgets: Sequence[int],
        *,
        rng: np.random.Generator,
        stop: StopCondition,
        temperature: float = 1.0,
        keep_cache: bool = False,
        kind: str = "candidate",
        matchers: Sequence[Matcher | None] | None = None,
    ) -> list[list[Continuation]]:
        """One batched ``backend.sample`` call for all requests, charged to their states.

        ``matchers`` (one per request) replaces the matchers taken from the states' constraints,
        for samplers that track their own (SMC's particles) or add masks of their own."""
        if not requests:
            return []
        if matchers is None:
            masks = constraint_kwargs(requests)
        else:
            masks = {"constraint": list(matchers)} if any(m is not None for m in matchers) else {}
        out = self.backend.sample(
            [prefix for _, prefix in requests],
            n,
            list(budgets),
            seed=new_seed(rng),
            temperature=temperature,
            stop=stop,
            keep_cache=keep_cache,
            **masks,
        )
        drawn = [sum(len(c.token_ids) for c in row) for row in out.continuations]
        # A backend that does not count its model runs: one prefill plus one step per token of
        # the longest continuation.
        steps = out.sequential_steps or 1 + max(
            (len(c.token_ids) for row in out.continuations for c in row), default=0
        )
        self._charge([state for state, _ in requests], drawn, out.forward_tokens, steps, kind)
        return out.continuations

    def _charge(
        self,
        states: Sequence[SequenceState],
        drawn: Sequence[int],
        forward: int,
        steps: int,
        kind: str,
    ) -> None:
        per_state: dict[SequenceState, int] = {}
        for state, count in zip(states, drawn, strict=True):
            per_state[state] = per_state.get(state, 0) + count
        total = max(sum(drawn), 1)
        for state, mine in per_state.items():
            state.stats.backend_calls += 1
            state.stats.forward_tokens += round(forward * mine / total)
            state.stats.sequential_steps += steps  # every prompt in the call waits for all of it
            if kind == "rollout":
                state.stats.rollout_tokens += mine
            else:
                state.stats.candidate_tokens += mine


def constraint_kwargs(
    requests: Sequence[tuple[SequenceState, Sequence[int]]],
) -> dict[str, list[Matcher | None]]:
    """``{"constraint": one matcher per request}`` when any sequence is constrained, else ``{}``
    (so backends without constraint support keep working for unconstrained requests)."""
    if all(state.constraint is None for state, _ in requests):
        return {}
    return {
        "constraint": [
            None if state.constraint is None else state.constraint.at(prefix[len(state.prompt) :])
            for state, prefix in requests
        ]
    }


def dead_end(state: SequenceState) -> ValueError:
    """The error for a constrained sequence that no allowed token can continue."""
    return ValueError(
        f"the constraint allows no token of positive probability after the "
        f"{len(state.tokens)} generated tokens {state.tokens[-8:]} (last 8 shown); use a "
        "constraint this model can complete (its end tokens must be reachable)"
    )


def new_seed(rng: np.random.Generator) -> int:
    """A fresh seed for one backend call, drawn from the sampler's own generator."""
    return int(rng.integers(0, 2**63 - 1))
