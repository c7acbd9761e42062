"""vLLM's completions as continuations: base and proposal log-probs in either ``logprobs_mode``.

vLLM returns one kind of log-prob per engine (``logprobs_mode``): ``raw_logprobs`` are the base
model's whatever the temperature, ``processed_logprobs`` are those of the distribution the token
was drawn from (after temperature; no other processing is asked for). At temperature 1 both are
the base log-probs. At another temperature

* a ``processed_logprobs`` engine gives the exact proposal log-probs, and the base ones come
  from scoring the drawn sequences with ``prompt_logprobs=0`` (vLLM computes prompt log-probs
  from the raw logits in every mode), one extra prefill per distinct sequence;
* a ``raw_logprobs`` engine gives the base log-probs only: its continuations carry no
  ``proposal_logprobs``, and the MCMC sampler, which needs them, refuses to run
  (``returns_proposal_logprobs`` is False). Nothing is approximated.

Under a constraint the drawn log-probs are the masked ones in a ``processed_logprobs`` engine
(base = drawn + mass at temperature 1, rescored otherwise) and the base ones in a
``raw_logprobs`` engine (proposal = base - mass at temperature 1, none otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..base import Continuation, StopCondition

if TYPE_CHECKING:
    from .constraints import Call

Seq = tuple[int, ...]
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")


class Drawn(NamedTuple):
    """One vLLM completion: tokens, their drawn log-probs, the finished flag, and under a
    constraint the log allowed mass of each step and whether it hit a dead end."""

    tokens: Seq
    logprobs: list[float]
    finished: bool
    masses: list[float]
    dead: bool = False


def from_completion(completion: Any, stop: StopCondition) -> Drawn:
    """A vLLM completion as drawn. vLLM checks the length budget before stop tokens, so a stop
    token drawn last reads "length": the flag comes from the tokens themselves too."""
    tokens = tuple(int(t) for t in completion.token_ids)
    logprobs = [float(step[t].logprob) for t, step in zip(tokens, completion.logprobs, strict=True)]
    finished = completion.finish_reason == "stop" or bool(tokens and tokens[-1] in stop.token_ids)
    return Drawn(tokens, logprobs, finished, [0.0] * len(tokens))


def cut(drawn: Drawn, call: Call | None) -> Drawn:
    """With the constraint's masses; a continuation that reached a dead end ends there,
    unfinished (the processor let it draw freely after it)."""
    if call is None:
        return drawn
    masses, dead = call.walk(drawn.tokens)
    if not dead:
        return drawn._replace(masses=masses)
    keep = len(masses)
    return Drawn(drawn.tokens[:keep], drawn.logprobs[:keep], False, masses, True)


def continuation(
    mode: str, prefix: Seq, drawn: Drawn, temperature: float, scores: dict[Seq, list[float]]
) -> Continuation:
    """Base and proposal log-probs of one drawn continuation in an engine of ``logprobs_mode``
    ``mode``. Under a constraint vLLM draws from the masked logits: ``processed_logprobs`` are
    the masked, renormalised ones (base = proposal + log allowed mass at temperature 1),
    ``raw_logprobs`` the base ones. ``scores``: the rescored base log-probs of whole sequences."""
    tokens, logprobs, masses = drawn.tokens, drawn.logprobs, drawn.masses
    proposal: Sequence[float] = ()
    if mode == "raw_logprobs":
        base = logprobs
        if temperature == 1.0:
            proposal = [lp - m for lp, m in zip(logprobs, masses, strict=True)]
    elif temperature == 1.0:
        base, proposal = [lq + m for lq, m in zip(logprobs, masses, strict=True)], logprobs
    else:  # the drawn log-probs are the proposal's; the base ones come from rescoring
        base = scores[prefix + tokens][-len(tokens) :] if tokens else []
        proposal = logprobs
    if temperature == 0.0:  # vLLM's greedy path: the drawn distribution is one-hot
        proposal = [0.0] * len(tokens)
    log_mass = -math.inf if drawn.dead else float(sum(masses))
    return Continuation(tokens, sum(base), drawn.finished, tuple(base), tuple(proposal), log_mass)
