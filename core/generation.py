"""What a sampler returns: the generation, its cost, and optional per-step diagnostics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .config import PowerSamplingConfig

FinishReason = Literal["stop", "length"]


@dataclass
class GenerationStats:
    """The cost of one generation.

    ``candidate_tokens`` and ``rollout_tokens`` count tokens the sampler drew (candidate blocks or
    MCMC proposals; look-ahead rollouts); ``forward_tokens`` counts positions the model actually
    ran, prefill included, as reported by the backend (for prompts generated together, a call's
    count is shared out by rows). ``sequential_steps`` counts the model runs the generation waited
    for one after another (prefill calls plus decode steps, however many rows each had): its
    critical path, which sets the latency where a batched step costs about what one row does
    (a GPU); every call counts in full for each prompt in it. ``wall_time`` is in seconds.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    backend_calls: int = 0
    candidate_tokens: int = 0
    rollout_tokens: int = 0
    forward_tokens: int = 0
    sequential_steps: int = 0
    wall_time: float = 0.0
    min_kept_mass: float = 1.0
    """Power sampling: the smallest ``StepTrace.kept_mass`` over the generation's steps (1.0 when
    no step left anything out). Well below 1 means the top-K truncation, not the power
    distribution, decided that step: raise ``top_k``."""
    ess_history: list[float] = field(default_factory=list)
    """SMC: the effective sample size 1/sum(w^2) of the normalised weights (with the look-ahead:
    of the selection weights) at each check, the last one at the end; out of ``num_particles``."""
    resamples: int = 0
    """SMC: how many times the particles were resampled."""
    unique_ancestors: list[int] = field(default_factory=list)
    """SMC: the number of distinct particles kept by each resampling (at most N): how much of
    the population survived it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepTrace:
    """Diagnostics of one power-sampling decision (see :mod:`power_sampling.power_math`)."""

    position: int
    """Completion tokens committed before this step."""
    candidates: list[tuple[int, ...]]
    candidate_logprobs: list[float]
    log_zeta: list[float]
    p_hat: list[float]
    p_jk: list[float]
    chosen: int
    num_rollouts: int
    kept_mass: float = 1.0
    """Share of the candidate pool's estimated power mass Σ p(c)^α ζ(c) that the kept top-K
    candidates hold (:func:`power_sampling.power_math.kept_mass`). The pool is the distinct drawn
    blocks (block level) or the whole vocabulary (token level). Candidates left out have no
    rollouts, so each gets the mean ζ̂ of the kept ones; at token level their p^α is bounded
    from above, so the share is a lower estimate. No extra model calls."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Generation:
    """A finished generation: completion token ids (never the prompt), text, and its cost."""

    token_ids: list[int]
    finish_reason: FinishReason
    stats: GenerationStats
    logprob: float = 0.0
    """Base log-likelihood log p(token_ids | prompt) under the model at temperature 1."""
    text: str | None = None
    """Decoded completion (stop string removed); None for a backend without a tokenizer."""
    trace: list[StepTrace] | None = None
    """Per-step diagnostics, when requested with ``trace=True``."""
    prompt_token_ids: list[int] = field(default_factory=list)
    config: PowerSamplingConfig | None = None
    """The settings that produced this generation (seed and token budget included)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "logprob": self.logprob,
            "stats": self.stats.to_dict(),
        }
        if self.trace is not None:
            out["trace"] = [step.to_dict() for step in self.trace]
        return out


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed generation: what was committed since the previous chunk.

    Joined in order, ``text`` gives ``Generation.text`` and ``token_ids`` gives
    ``Generation.token_ids``. The last chunk carries the finished ``generation``.
    """

    token_ids: tuple[int, ...]
    text: str = ""
    generation: Generation | None = None


_COST_STATS = ("steps", "backend_calls", "candidate_tokens", "rollout_tokens", "forward_tokens")
_BUDGET: tuple[str, ...] = ("top_k", "num_rollouts", "rollout_length", "block_size")
_BUDGET += ("num_candidates", "mcmc_steps", "best_of", "max_new_tokens")


def cost(gens: Sequence[Generation]) -> dict[str, Any]:
    """The settings that ran (of the last generation) and the work of all ``gens`` summed: what
    the adapters report as ``power_sampling`` next to an answer."""
    config = gens[-1].config or PowerSamplingConfig()
    return {
        "method": config.method,
        "alpha": config.alpha,
        "budget": {k: getattr(config, k) for k in _BUDGET},
        "seed": config.seed,
        "attempts": len(gens),
        **{k: sum(getattr(g.stats, k) for g in gens) for k in (*_COST_STATS, "wall_time")},
    }
