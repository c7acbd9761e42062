"""``PowerSampler``: the public entry point over any backend.

Prompts may be text, chat messages or token ids. Everything is built on one streaming iterator
(``_run``) that advances a batch of prompts together and reports committed tokens as decided.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .backends.base import Backend, StopCondition, TextBackend
from .config import PowerSamplingConfig
from .constraints import Constraint, ConstraintCursor
from .generation import Chunk, Generation
from .samplers import SequenceState, make_sampler
from .text import StopStringTracker

logger = logging.getLogger(__name__)

Message = Mapping[str, Any]
Prompt = str | Sequence[Message] | Sequence[int]


class PowerSampler:
    """Sample from a model's power distribution p(x)^α (or a baseline, by ``config.method``).

    >>> sampler = PowerSampler(backend, PowerSamplingConfig(alpha=4, num_rollouts=8))
    >>> sampler.generate("Q: 2+3=? A:", max_new_tokens=32).text

    ``backend`` is a :class:`~power_sampling.backends.base.Backend`, or a model name / local path
    loaded with transformers (``None`` = the embedded default model). Keyword ``overrides``
    change single config fields. The sampler holds no per-call state: calls from several threads
    are safe when the backend is (the transformers backend is).
    """

    def __init__(
        self,
        backend: Backend | str | None = None,
        config: PowerSamplingConfig | None = None,
        **overrides: Any,
    ) -> None:
        if backend is None or isinstance(backend, str):
            from .models import resolve_model

            backend = resolve_model(backend)
        if not isinstance(backend, Backend):
            raise TypeError(
                f"backend must implement power_sampling.backends.Backend, got {type(backend)!r}; "
                "pass a model name/path or e.g. TransformersBackend.from_transformers(model, tok)"
            )
        self.backend: Backend = backend
        config = config or PowerSamplingConfig()
        self.config = config.replace(**overrides) if overrides else config

    # -- public API --------------------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt,
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        *,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        trace: bool = False,
        constraint: Constraint | None = None,
        **overrides: Any,
    ) -> Generation:
        """Generate one completion of ``prompt``. See :meth:`generate_batch` for the arguments."""
        return self.generate_batch(
            [prompt],
            max_new_tokens,
            stop_token_ids,
            stop=stop,
            seed=seed,
            trace=trace,
            constraint=constraint,
            **overrides,
        )[0]

    def generate_batch(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        *,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        trace: bool = False,
        constraint: Constraint | None = None,
        **overrides: Any,
    ) -> list[Generation]:
        """Generate a completion for every prompt, batched: each decision step makes one backend
        call for all prompts' candidates and one for all their rollouts.

        ``max_new_tokens`` overrides ``config.max_new_tokens``; ``stop_token_ids`` and ``stop``
        (strings, not included in the text) end generations besides the model's own end tokens;
        ``seed`` overrides ``config.seed`` for this call; ``trace`` records per-step diagnostics
        in ``Generation.trace``; ``constraint`` (a :class:`~power_sampling.constraints.Constraint`)
        restricts every output to the valid ones, each method with its own target (README,
        "Constrained outputs"); ``overrides`` change config fields for this call only.
        """
        results: list[Generation | None] = [None] * len(prompts)
        for index, chunk in self._run(
            prompts, max_new_tokens, stop_token_ids, stop, seed, trace, overrides, constraint
        ):
            if chunk.generation is not None:
                results[index] = chunk.generation
        return [g for g in results if g is not None]

    def stream(
        self,
        prompt: Prompt,
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        *,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        trace: bool = False,
        constraint: Constraint | None = None,
        **overrides: Any,
    ) -> Iterator[Chunk]:
        """Yield committed pieces as they are decided (never rollout text). The ``text`` deltas
        join to ``Generation.text``; the last chunk carries the whole ``Generation``."""
        for _, chunk in self._run(
            [prompt], max_new_tokens, stop_token_ids, stop, seed, trace, overrides, constraint
        ):
            yield chunk

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a text prompt, chat messages (rendered with the model's chat template,
        generation prompt added) or token ids (returned as they are)."""
        if isinstance(prompt, str):
            return self._text_backend("a text prompt").encode(prompt, add_special_tokens=True)
        items: list[Any] = list(prompt) if isinstance(prompt, Sequence) else [None]
        if items and all(isinstance(m, Mapping) for m in items):
            return self._text_backend("chat messages").apply_chat_template(items)
        if all(isinstance(t, int | np.integer) for t in items):
            return [int(t) for t in items]
        raise TypeError(
            "prompt must be a string, a list of chat messages ({'role': ..., 'content': ...}) "
            f"or a list of token ids; got {type(prompt).__name__}"
        )

    # -- the one iterator everything is built on --------------------------------------------

    def _run(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int | None,
        stop_token_ids: Sequence[int] | None,
        stop_strings: Sequence[str] | None,
        seed: int | None,
        trace: bool,
        overrides: Mapping[str, Any],
        constraint: Constraint | None = None,
    ) -> Iterator[tuple[int, Chunk]]:
        config = self.config.replace(**overrides) if overrides else self.config
        limit = config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if limit < 1:
            raise ValueError(f"max_new_tokens={limit} is invalid: use an integer >= 1")
        stop = self.backend.stop | StopCondition(
            frozenset(int(t) for t in stop_token_ids or ()), tuple(stop_strings or ())
        )
        if any(not s for s in stop.strings):
            raise ValueError("stop strings must be non-empty; remove the empty string")
        encoded = [self.encode_prompt(p) for p in prompts]
        states = [
            SequenceState(tuple(ids), self._fit_context(ids, limit), trace=[] if trace else None)
            for ids in encoded
        ]
        if constraint is not None:
            if not isinstance(constraint, Constraint):
                raise TypeError(
                    f"constraint must be a power_sampling.constraints.Constraint, got "
                    f"{type(constraint).__name__}; e.g. Constraint.json_schema(schema)"
                )
            for state in states:
                root = constraint.matcher(self.backend, stop.token_ids)
                state.constraint = ConstraintCursor(root)
        decode = self.backend.decode if isinstance(self.backend, TextBackend) else None
        trackers = [StopStringTracker(decode, stop.strings) for _ in states]
        rng = np.random.default_rng(config.seed if seed is None else seed)
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
            for index in sorted(i for i in pending if states[i].done):
                pending.discard(index)
                yield index, self._final_chunk(states[index], trackers[index], start)

    def _final_chunk(self, state: SequenceState, tracker: StopStringTracker, start: float) -> Chunk:
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
        )
        return Chunk((), rest, generation)

    def _fit_context(self, prompt_ids: Sequence[int], limit: int) -> int:
        """The token budget that fits the model's context, or a clear error."""
        context = getattr(self.backend, "max_context", None)
        if context is None:
            return limit
        if len(prompt_ids) >= context:
            raise ValueError(
                f"the prompt has {len(prompt_ids)} tokens but the model's context is {context}; "
                "shorten the prompt (or use a model with a longer context)"
            )
        if len(prompt_ids) + limit > context:
            logger.warning(
                "max_new_tokens=%d does not fit the %d-token context after a %d-token prompt; "
                "generating at most %d tokens",
                limit,
                context,
                len(prompt_ids),
                context - len(prompt_ids),
            )
            return context - len(prompt_ids)
        return limit

    def _text_backend(self, what: str) -> TextBackend:
        if not isinstance(self.backend, TextBackend):
            raise TypeError(
                f"{type(self.backend).__name__} has no tokenizer, so it cannot take {what}; "
                "pass token ids, or use a backend with a tokenizer (e.g. TransformersBackend)"
            )
        return self.backend
