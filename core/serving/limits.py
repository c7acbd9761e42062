"""What one request may cost the server, checked before any work.

A request's settings decide its work up front, so the server can refuse an expensive one with a
400 that names the limit and its flag instead of running it for hours. Work is counted in
forward tokens (tokens the model computes), an upper bound per method from its settings
(:func:`forward_tokens`); the real count is lower when sequences end early.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import PowerSamplingConfig
from ..request import content_text

__all__ = ["LimitExceeded", "RequestLimits", "forward_tokens", "tokens_at_least"]

NORMALISED_SHRINK = 4
"""The most a tokenizer's Unicode normalisation can shrink UTF-8 text (NFKC maps a 4-byte
mathematical letter to one ASCII byte)."""


def tokens_at_least(prompt: Any, max_token_bytes: int) -> int:
    """A lower bound on the tokens of ``prompt`` (a text or chat messages), from its size alone:
    no token spells more than ``max_token_bytes`` bytes of (normalised) text, so the prompt's
    text takes at least its bytes / (``NORMALISED_SHRINK`` · ``max_token_bytes``) tokens,
    whatever the chat template adds. 0 for token ids (their count is exact) and anything else.
    """
    if isinstance(prompt, str):
        size = len(prompt.encode("utf-8"))
    elif isinstance(prompt, list | tuple) and all(isinstance(m, Mapping) for m in prompt):
        try:
            size = sum(len(content_text(m.get("content"), "").encode("utf-8")) for m in prompt)
        except ValueError:
            return 0  # a part the renderer will refuse with its own message
    else:
        return 0
    return size // (NORMALISED_SHRINK * max(max_token_bytes, 1))


class LimitExceeded(ValueError):
    """A request asks for more than the server's limits allow."""


def forward_tokens(config: PowerSamplingConfig) -> int:
    """An upper bound on the forward tokens one output of ``config`` costs.

    T = ``max_new_tokens``. Plain decoding computes T tokens, best-of-N N·T. Power sampling
    at token level (``block_size`` 1) scores K candidates with M rollouts of H tokens at each of
    the T steps: T·(1 + K·M·H); at block level each of the ⌈T/B⌉ steps draws L candidate blocks
    of B tokens and rolls out K of them: ⌈T/B⌉·(L·B + K·M·H). MCMC regenerates, at each of its
    ``mcmc_steps`` moves per block, a suffix of at most the sequence so far: at most
    ⌈T/B⌉·(B + S·T). Power-SMC decodes N particles: N·T.
    """
    t = config.max_new_tokens
    method = config.method
    if method in ("standard", "low_temperature"):
        return t
    if method == "best_of_n":
        return config.best_of * t
    if method == "smc":
        return config.num_particles * t
    block = max(1, min(config.block_size, t))
    steps = math.ceil(t / block)
    if method == "mcmc":
        return steps * (block + config.mcmc_steps * t)
    rollouts = config.top_k * config.num_rollouts * min(config.rollout_length, t)
    if block == 1:
        return t * (1 + rollouts)
    return steps * (config.num_candidates * block + rollouts)


@dataclass(frozen=True)
class RequestLimits:
    """The server's per-request limits (``power-sampling serve`` flags in brackets)."""

    max_tokens: int = 8192
    """Largest ``max_tokens`` (``max_new_tokens``) of one choice [``--max-tokens-limit``]."""

    max_choices: int = 16
    """Largest number of outputs of one request, ``n`` times its prompts [``--max-choices``]."""

    max_forward_tokens: int = 100_000_000
    """Largest :func:`forward_tokens` summed over a request's outputs
    [``--max-request-forward-tokens``]."""

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_choices", "max_forward_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use 1 or more")

    def check(self, config: PowerSamplingConfig, choices: int) -> None:
        """Raise :class:`LimitExceeded` naming the limit and its flag if a request of
        ``choices`` outputs under ``config`` is over any limit."""
        if config.max_new_tokens > self.max_tokens:
            raise LimitExceeded(
                f"max_tokens={config.max_new_tokens} is over this server's limit of "
                f"{self.max_tokens} (power-sampling serve --max-tokens-limit)"
            )
        if choices > self.max_choices:
            raise LimitExceeded(
                f"the request asks for {choices} outputs (n times its prompts), over this "
                f"server's limit of {self.max_choices} (power-sampling serve --max-choices)"
            )
        cost = forward_tokens(config) * choices
        if cost > self.max_forward_tokens:
            raise LimitExceeded(
                f"the request's settings cost up to {cost:.3g} forward tokens "
                f"({config.method}, max_tokens={config.max_new_tokens}), over this server's "
                f"limit of {self.max_forward_tokens:.3g} (power-sampling serve "
                "--max-request-forward-tokens); lower max_tokens or the method's budget "
                "(top_k, num_rollouts, rollout_length, num_candidates, mcmc_steps, best_of)"
            )
