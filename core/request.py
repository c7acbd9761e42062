"""One request, resolved once: the prompt, the settings that run, and where it stops.

Every entry point (``PowerSampler.generate``, the LangChain and DSPy adapters, the HTTP server)
turns what its caller passed into a :class:`Request` with :func:`resolve_settings`, and from
then on nothing re-merges settings: the request's ``config`` is what the sampler runs and what
the :class:`~power_sampling.Generation` reports. The OpenAI-style fields (``temperature``,
``top_p``, ``logit_bias``, ...) mean what the table in :mod:`power_sampling.fields` says, for
every entry point alike.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import PowerSamplingConfig
from .constraints import Constraint
from .fields import REQUEST_FIELDS, TABLE_FIELDS, field_changes

Message = Mapping[str, Any]
Prompt = str | Sequence[Message] | Sequence[int]

ALIASES: dict[str, str] = {"max_tokens": "max_new_tokens"}
"""Names other APIs use for a config field (OpenAI, LangChain and DSPy say ``max_tokens``)."""

_FIELDS = tuple(PowerSamplingConfig.model_fields)


@dataclass(frozen=True)
class Request:
    """A generation request with everything resolved.

    ``config`` holds every setting, ``seed`` and ``max_new_tokens`` included (their one channel);
    ``stop`` are stop strings (cut from the text) and ``stop_token_ids`` extra end tokens, both
    besides the model's own end tokens; ``trace`` asks for per-step diagnostics; ``constraint``
    restricts the output to the valid ones.
    """

    prompt: Prompt
    config: PowerSamplingConfig
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    trace: bool = False
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        check_prompt(self.prompt)
        check_stop(self.stop, self.stop_token_ids)
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise TypeError(
                "constraint must be a power_sampling.constraints.Constraint, got "
                f"{type(self.constraint).__name__}; e.g. Constraint.json_schema(schema)"
            )

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can run in one batch: they share every setting."""
        constraint = None if self.constraint is None else id(self.constraint)
        return (self.config, self.stop, self.stop_token_ids, self.trace, constraint)


def resolve_settings(base: PowerSamplingConfig, settings: Mapping[str, Any]) -> PowerSamplingConfig:
    """``base`` with ``settings`` (config field names or their :data:`ALIASES`, and the
    OpenAI-style fields of :mod:`power_sampling.fields`) applied.

    Settings left at None keep the base value. An unknown name raises ``ValueError`` naming the
    closest field; a bad value raises the config's own ``ValueError`` (field, value, fix), a
    refused OpenAI-style field a :class:`~power_sampling.errors.FieldError` naming it.
    """
    changes: dict[str, Any] = {}
    table: dict[str, Any] = {}
    for key, value in settings.items():
        name = ALIASES.get(key, key)
        if name not in _FIELDS and name not in REQUEST_FIELDS:
            raise ValueError(unknown_setting_message(key))
        if value is not None:
            (table if name in TABLE_FIELDS else changes)[name] = value
    changes.update(field_changes(table, changes.get("method", base.method)))
    return base.replace(**changes) if changes else base


def unknown_setting_message(key: str, extra: Sequence[str] = ()) -> str:
    """``key`` is not a setting: the message names the closest valid name and lists each valid
    name once, the closest matches first."""
    names = list(dict.fromkeys([*_FIELDS, *ALIASES, *REQUEST_FIELDS, *extra]))
    close = difflib.get_close_matches(key, names, n=len(names), cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = [*close, *sorted(set(names) - set(close))]
    return f"unknown setting {key!r}: {hint}valid settings are {', '.join(listed)}"


def check_prompt(prompt: object) -> None:
    """Reject prompts that are none of text, chat messages or token ids, before any work."""
    if isinstance(prompt, str):
        return
    if isinstance(prompt, bytes | bytearray):
        raise TypeError(
            "prompt is bytes: decode it to a string first (e.g. prompt.decode('utf-8')), "
            "or pass a list of token ids"
        )
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        for message in prompt:
            _check_text_only(message)
        return
    ints = isinstance(prompt, Sequence) and all(
        isinstance(t, int | np.integer) and not isinstance(t, bool) for t in prompt
    )
    if not ints:
        raise TypeError(
            "prompt must be a string, a list of chat messages ({'role': ..., 'content': ...}) "
            f"or a list of token ids; got {type(prompt).__name__}"
        )


def _check_text_only(message: Mapping[str, Any]) -> None:
    content = message.get("content")
    if isinstance(content, list):
        content_text(content, f"a {message.get('role', 'chat')} message")


def content_text(content: Any, where: str, *, skip: Collection[str] = ()) -> str:
    """The text of a message's content: a string, None, or a list of parts (mappings such as
    OpenAI's ``{"type": "text", "text": ...}``, or objects with ``type`` and ``text``).

    Parts other than text (images, audio, files) are refused with a ``ValueError`` naming
    ``where``, never dropped; parts of a kind in ``skip`` are left out.
    """
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, Sequence):
        raise ValueError(f"{where} must be a string or a list of text parts")
    texts = []
    for part in content:
        if isinstance(part, Mapping):
            kind, text = part.get("type"), part.get("text", "")
        else:
            kind, text = getattr(part, "type", type(part).__name__), getattr(part, "text", "")
        if kind == "text":
            texts.append(str(text))
        elif kind not in skip:
            raise ValueError(
                f"{where} has a {kind!r} content part: the model reads text only; send the text "
                "parts alone"
            )
    return "".join(texts)


def check_stop(stop: Sequence[object], stop_token_ids: Sequence[object]) -> None:
    """Stop strings are non-empty strings and stop token ids are integers."""
    for s in stop:
        if not isinstance(s, str) or not s:
            raise ValueError(
                f"stop={list(stop)!r} is invalid: stop strings must be non-empty strings "
                "(end tokens by id go in stop_token_ids)"
            )
    for t in stop_token_ids:
        if not isinstance(t, int | np.integer) or isinstance(t, bool) or t < 0:
            raise ValueError(
                f"stop_token_ids={list(stop_token_ids)!r} is invalid: use non-negative token ids"
            )
