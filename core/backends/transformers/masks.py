"""Constraint masks inside the transformers backend's batched decode.

One matcher per continuation. Each decode step fills one bitmask row per batch row on the host
(the grammar engine's work, one mask computation per row), uploads the packed int32 words
(1/32 of the vocabulary per row) and unpacks them on the device; after the draw, the tokens come
back to the host once to advance the matchers. That single copy per step is the only host round
trip a grammar engine needs; unconstrained decodes never build this object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...constraints import Matcher, new_bitmask
from .draws import scaled_log_softmax


class RowMasks:
    """The matchers of one decode's continuations and the masks they give each step."""

    def __init__(
        self,
        matchers: Sequence[Matcher | None],
        limits: Sequence[int],
        stop_ids: frozenset[int],
        vocab_size: int,
        device: torch.device,
    ) -> None:
        self.matchers = [None if m is None else m.fork() for m in matchers]
        self.limits = list(limits)
        self.stop_ids = stop_ids
        self.vocab_size = vocab_size
        self.device = device
        self.bitmask = new_bitmask(len(self.matchers), vocab_size)
        self.dead: dict[int, int] = {}
        """Continuation -> its length when no allowed token was left (a dead end)."""
        self.ended: set[int] = set()
        self.drawn = [0] * len(self.matchers)
        position = torch.arange(vocab_size, device=device)
        self._word = position // 32
        self._bit = (position % 32).to(torch.int32)

    def allowed(self, live: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``[rows, vocab]`` boolean mask of the batch rows ``live`` name, and which rows
        are constrained (unconstrained, ended and dead rows allow everything)."""
        words = self.bitmask[: len(live)]
        constrained = np.zeros(len(live), dtype=bool)
        for j, r in enumerate(live):
            matcher = self.matchers[r]
            if matcher is None or r in self.ended or r in self.dead:
                words[j] = -1
                continue
            matcher.fill_bitmask(words, j)
            if not words[j].any():
                self.dead[r] = self.drawn[r]
                words[j] = -1
                continue
            constrained[j] = True
        packed = torch.from_numpy(words).to(self.device)
        allowed = ((packed[:, self._word] >> self._bit) & 1).bool()
        return allowed, torch.from_numpy(constrained).to(self.device)

    def advance(self, live: Sequence[int], tokens: Sequence[int]) -> None:
        """Move every constrained row's matcher past its drawn token."""
        for r, token in zip(live, tokens, strict=True):
            matcher = self.matchers[r]
            if r in self.ended or r in self.dead:
                continue
            self.drawn[r] += 1
            if matcher is not None and not matcher.accept(token):
                raise AssertionError(f"drawn token {token} is not allowed by the constraint")
            if token in self.stop_ids or self.drawn[r] >= self.limits[r]:
                self.ended.add(r)


def masked_logprobs(
    logits: torch.Tensor, allowed: torch.Tensor, constrained: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Base log-probs, the log-probs to draw from (allowed tokens renormalised, at
    ``temperature``), and the log allowed mass per row (0 on unconstrained rows)."""
    logp = torch.log_softmax(logits, -1)
    masked = logp.masked_fill(~allowed, -torch.inf)
    log_mass = torch.logsumexp(masked, -1)
    if temperature == 1.0:
        logq = masked - log_mass[:, None]
    else:
        logq = scaled_log_softmax(logits.masked_fill(~allowed, -torch.inf), temperature)
    return logp, logq, torch.where(constrained, log_mass, torch.zeros_like(log_mass))
