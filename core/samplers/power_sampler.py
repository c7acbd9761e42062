"""``PowerSampler``: the public entry point over any backend.

Prompts may be text, chat messages or token ids. Every call becomes a
:class:`~power_sampling.request.Request`, and everything is built on one streaming iterator
(:meth:`PowerSampler.run`) that advances a batch of requests together and reports committed tokens
as decided.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..backends.base import Backend, StopCondition, TextBackend
from ..config import PowerSamplingConfig
from ..constraints import Constraint, ConstraintCursor
from ..generation import Chunk, Generation
from ..request import Prompt, Request, check_prompt, resolve_settings
from ..text import StopStringTracker
from . import SequenceState, make_sampler

logger = logging.getLogger(__name__)

__all__ = ["PowerSampler", "Prompt", "Request"]


class PowerSampler:
    """Sample from a model's power distribution p(x)^α (or a baseline, by ``config.method``).

    >>> sampler = PowerSampler(backend, PowerSamplingConfig(alpha=4, num_rollouts=8))
    >>> sampler.generate("Q: 2+3=? A:", max_new_tokens=32).text

    ``backend`` is a :class:`~power_sampling.backends.base.Backend`, or a model name / local path
    loaded with transformers (``None`` = the embedded default model). Keyword ``overrides``
    change single config fields (an unknown name is an error naming the closest field). The
    sampler holds no per-call state: calls from several threads are safe when the backend is
    (the transformers backend is).
    """

    def __init__(
        self,
        backend: Backend | str | None = None,
        config: PowerSamplingConfig | None = None,
        **overrides: Any,
    ) -> None:
        if backend is None or isinstance(backend, str):
            from ..backends.models import resolve_model

            backend = resolve_model(backend)
        if not isinstance(backend, Backend):
            raise TypeError(
                f"backend must implement power_sampling.backends.Backend, got {type(backend)!r}; "
                "pass a model name/path or e.g. TransformersBackend.from_transformers(model, tok)"
            )
        self.backend: Backend = backend
        self.config = resolve_settings(config or PowerSamplingConfig(), overrides)

    # -- public API --------------------------------------------------------------------------

    def request(
        self,
        prompt: Prompt,
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        *,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        trace: bool = False,
        constraint: Constraint | None = None,
        **settings: Any,
    ) -> Request:
        """``prompt`` and this call's options resolved into one :class:`Request`.

        ``max_new_tokens`` (alias ``max_tokens``), ``seed`` and ``settings`` (config fields)
        override the sampler's config for this request; ``stop`` strings (cut from the text) and
        ``stop_token_ids`` end it besides the model's own end tokens; ``trace`` records per-step
        diagnostics; ``constraint`` (a :class:`~power_sampling.constraints.Constraint`) restricts
        the output to the valid ones, each method with its own target
        (docs/constrained.md). Invalid values raise ``ValueError`` naming the field and the fix.
        """
        changes = {**settings, "max_new_tokens": max_new_tokens, "seed": seed}
        return Request(
            prompt,
            resolve_settings(self.config, changes),
            tuple(stop or ()),
            tuple(stop_token_ids or ()),
            trace,
            constraint,
        )

    def generate(self, prompt: Prompt, *args: Any, **options: Any) -> Generation:
        """Generate one completion of ``prompt``. The options are those of :meth:`request`
        (``max_new_tokens``, ``stop_token_ids``, ``stop``, ``seed``, ``trace``, ``constraint``
        and config fields)."""
        return self.run_batch([self.request(prompt, *args, **options)])[0]

    def generate_batch(
        self, prompts: Sequence[Prompt], *args: Any, **options: Any
    ) -> list[Generation]:
        """Generate a completion for every prompt, batched: each decision step makes one backend
        call for all prompts' candidates and one for all their rollouts. The options are those of
        :meth:`request`, shared by every prompt. With a seed the batch is reproducible as a
        batch: the same prompts give the same outputs, which differ from one-at-a-time calls."""
        first = self.request("", *args, **options)
        return self.run_batch([replace(first, prompt=p) for p in _prompt_list(prompts)])

    def stream(self, prompt: Prompt, *args: Any, **options: Any) -> Iterator[Chunk]:
        """Yield committed pieces as they are decided (never rollout text). The ``text`` deltas
        join to ``Generation.text``; the last chunk carries the whole ``Generation``. The options
        are those of :meth:`request`."""
        for _, chunk in self.run([self.request(prompt, *args, **options)]):
            yield chunk

    def run_batch(self, requests: Sequence[Request]) -> list[Generation]:
        """The finished generations of :meth:`run`, in order."""
        results: list[Generation | None] = [None] * len(requests)
        for index, chunk in self.run(requests):
            if chunk.generation is not None:
                results[index] = chunk.generation
        return [g for g in results if g is not None]

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a text prompt, chat messages (rendered with the model's chat template,
        generation prompt added) or token ids (returned as they are)."""
        check_prompt(prompt)
        if isinstance(prompt, str):
            return self._text_backend("a text prompt").encode(prompt, add_special_tokens=True)
        items: list[Any] = list(prompt)
        if items and all(isinstance(m, Mapping) for m in items):
            return self._text_backend("chat messages").apply_chat_template(items)
        return [int(t) for t in items]

    # -- the one iterator everything is built on --------------------------------------------

    def run(
        self, requests: Sequence[Request], cancelled: Callable[[int], bool] | None = None
    ) -> Iterator[tuple[int, Chunk]]:
        """Advance ``requests`` together, yielding ``(index, chunk)`` as tokens are committed;
        each request's last chunk carries its ``Generation``.

        The requests must share their settings (:attr:`Request.batch_key`); their prompts may
        differ. ``cancelled(index)`` is asked after every step: a cancelled request stops there,
        frees its place in the batch and yields nothing more.
        """
        if not requests:
            return
        if len({r.batch_key for r in requests}) > 1:
            raise ValueError(
                "requests run together must share their settings, stop and trace; "
                "group them by Request.batch_key"
            )
        first = requests[0]
        config = first.config
        _warn_heavy_on_cpu(self.backend, config)
        stop = self.backend.stop | StopCondition(
            frozenset(int(t) for t in first.stop_token_ids), first.stop
        )
        encoded = [self.encode_prompt(r.prompt) for r in requests]
        states = [
            SequenceState(
                tuple(ids),
                self.check_fits(ids, config.max_new_tokens),
                trace=[] if first.trace else None,
            )
            for ids in encoded
        ]
        if first.constraint is not None:
            for state in states:
                state.constraint = ConstraintCursor(
                    first.constraint.matcher(self.backend, stop.token_ids)
                )
        decode = self.backend.decode if isinstance(self.backend, TextBackend) else None
        trackers = [StopStringTracker(decode, stop.strings) for _ in states]
        rng = np.random.default_rng(config.seed)
        start = time.perf_counter()
        pending = set(range(len(states)))
        position = {state: i for i, state in enumerate(states)}

        for commits in make_sampler(self.backend, config).run(states, stop, rng):
            for state, tokens in commits:
                index = position[state]
                delta = trackers[index].push(tokens)
                if trackers[index].stopped:
                    state.finished = True
                if tokens or delta:
                    yield index, Chunk(tokens, delta)
            for index in sorted(pending):
                if cancelled is not None and cancelled(index):
                    states[index].finished = True  # out of the batch from the next step on
                    pending.discard(index)
                elif states[index].done:
                    pending.discard(index)
                    yield index, self._final_chunk(states[index], trackers[index], start, config)

    def _final_chunk(
        self,
        state: SequenceState,
        tracker: StopStringTracker,
        start: float,
        config: PowerSamplingConfig,
    ) -> Chunk:
        state.stats.prompt_tokens = len(state.prompt)
        state.stats.completion_tokens = len(state.tokens)
        state.stats.wall_time = time.perf_counter() - start
        rest = tracker.finish()
        generation = Generation(
            token_ids=list(state.tokens),
            finish_reason="stop" if state.finished else "length",
            stats=state.stats,
            logprob=state.logprob,
            text=tracker.text,
            trace=state.trace,
            prompt_token_ids=list(state.prompt),
            config=config,
        )
        return Chunk((), rest, generation)

    def check_fits(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int | None = None,
        *,
        strict: bool = False,
        what: str = "prompt",
    ) -> int:
        """The context check every entry point makes: the number of new tokens this prompt
        leaves room for, at most ``max_new_tokens`` (None: all the room there is, ``sys.maxsize``
        for a backend that states no context).

        A prompt that leaves no room raises ``ValueError``. A ``max_new_tokens`` that does not
        fit after the prompt is clipped to what fits, with a warning, or with ``strict`` raises
        ``ValueError`` as vLLM's server does (the HTTP server passes ``strict`` when the request
        gives ``max_tokens``). ``what`` names the prompt in the message (``messages``).
        """
        context = getattr(self.backend, "max_context", None)
        if context is None:
            return max_new_tokens if max_new_tokens is not None else sys.maxsize
        used, room = len(prompt_ids), context - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"This model's maximum context length is {context} tokens. However, the {what} "
                f"has {used} tokens, which leaves no room for the completion: shorten the {what} "
                "(or use a model with a longer context)"
            )
        if max_new_tokens is None or max_new_tokens <= room:
            return room if max_new_tokens is None else max_new_tokens
        if strict:
            raise ValueError(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {used + max_new_tokens} tokens ({used} in the {what}, "
                f"{max_new_tokens} in the completion): lower max_tokens to at most {room}, or "
                f"shorten the {what}"
            )
        logger.warning(
            "max_new_tokens=%d does not fit the %d-token context after a %d-token %s; "
            "generating at most %d tokens",
            max_new_tokens,
            context,
            used,
            what,
            room,
        )
        return room

    def _text_backend(self, what: str) -> TextBackend:
        if not isinstance(self.backend, TextBackend):
            raise TypeError(
                f"{type(self.backend).__name__} has no tokenizer, so it cannot take {what}; "
                "pass token ids, or use a backend with a tokenizer (e.g. TransformersBackend)"
            )
        return self.backend


_HEAVY_ROLLOUTS = 4096  # rollout tokens per step (K·M·H) beyond which a CPU takes minutes
_warned_heavy = False


def _warn_heavy_on_cpu(backend: Backend, config: PowerSamplingConfig) -> None:
    """Say once per process when large power-sampling budgets run on a CPU, and what to use."""
    global _warned_heavy
    device = getattr(backend, "device", None)
    per_step = config.top_k * config.num_rollouts * config.rollout_length
    if _warned_heavy or config.method != "power" or str(device) != "cpu":
        return
    if per_step >= _HEAVY_ROLLOUTS:
        _warned_heavy = True
        logger.warning(
            "power sampling with K=%d candidates x M=%d rollouts x H=%d tokens per step runs "
            "on the CPU: expect minutes per answer. preset='cpu' (or --preset cpu) uses small "
            "budgets that answer in seconds.",
            config.top_k,
            config.num_rollouts,
            config.rollout_length,
        )


def _prompt_list(prompts: Sequence[Prompt]) -> list[Prompt]:
    """A batch of prompts; a lone string or token-id list is a mistake worth naming."""
    if isinstance(prompts, str | bytes) or (
        isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int | np.integer)
    ):
        raise TypeError("generate_batch takes a list of prompts; for one prompt use generate")
    return list(prompts)
