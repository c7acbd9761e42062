"""DSPy's lm15 requests to sampler requests, and generations back to lm15 responses.

- ``Request.system`` and ``Request.messages`` become chat messages, rendered by the one chat
  renderer (:mod:`power_sampling.chat.render`); ``max_tokens`` -> ``max_new_tokens``, ``stop``
  -> stop strings, ``seed`` -> the sampler seed.
- ``temperature``, ``top_p``, ``top_k``, the penalties and ``logprobs`` mean what the table in
  :mod:`power_sampling.fields` says, as for every entry point: for example ``temperature=0`` is
  greedy on ``method="standard"`` and refused on ``power`` (whose sharpening is alpha); a
  refused value is DSPy's ``InvalidRequestError`` naming the field and the fix. The call's value
  wins over ``power_lm(temperature=...)``.
- Per-call sampler settings travel in ``metadata={"alpha": 2, ...}`` (config field names).
- ``response_format`` (what ``dspy.JSONAdapter`` sends: a JSON schema of the output fields, or
  ``json_object`` when a field is an open mapping) constrains the reply to JSON valid under it;
  the adapter's own prompt describes the format, so no system message is added for it.

DSPy's cache key holds the model string, the messages and the call's kwargs (metadata included),
not engine state, so the model string carries the settings: ``power/<model>@a4-k8-m8-<digest>``,
where the digest covers the model reference and every config field. Responses carry the model
string of the settings that actually ran, so history names them too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dspy import lm15

from ...chat.render import ChatOptions, render
from ...config import PowerSamplingConfig
from ...fields import TABLE_FIELDS
from ...generation import Generation
from ...request import Request, content_text, resolve_settings
from ...samplers.power_sampler import PowerSampler

_TABLE = ("temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty", "logprobs")
"""lm15's sampling fields, applied by the shared table (:mod:`power_sampling.fields`)."""


def model_string(name: str, config: PowerSamplingConfig, model_ref: str | None = None) -> str:
    """``power/<name>@<summary>-<digest>``: the digest covers ``model_ref`` and every config field,
    so DSPy's cache never serves an answer made with other settings or another model."""
    c = config
    summary = f"a{c.alpha:g}-k{c.top_k}-m{c.num_rollouts}" if c.method == "power" else c.method
    blob = json.dumps({"model": model_ref or name, "config": c.model_dump()}, sort_keys=True)
    return f"power/{name}@{summary}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def call_settings(request: lm15.Request, base: PowerSamplingConfig) -> PowerSamplingConfig:
    """The settings of one call: ``base`` with the call's metadata, seed and sampling fields;
    unsupported options raise DSPy's errors with the fix."""
    cfg = request.config
    if request.tools or cfg.tool_choice is not None:
        raise _unsupported("native tool calling", "use DSPy's text tools (dspy.ReAct) instead")
    extensions = dict(cfg.extensions or {})
    metadata = dict(extensions.pop("metadata", None) or {})
    fields = {name: getattr(cfg, name) for name in _TABLE}
    if cfg.logprobs is not None:  # lm15's logprobs is a count of alternatives: 0 asks for them
        fields["logprobs"] = True if cfg.logprobs == 0 else cfg.logprobs
    fields |= {k: extensions.pop(k) for k in list(extensions) if k in TABLE_FIELDS}
    if extensions:
        raise _unsupported(f"request options {sorted(extensions)}", "remove them")
    try:
        config = resolve_settings(base, metadata)
    except ValueError as exc:
        raise lm15.InvalidRequestError(f"invalid sampler setting in metadata: {exc}") from exc
    try:
        return resolve_settings(
            config, {"seed": cfg.seed, "max_new_tokens": cfg.max_tokens, **fields}
        )
    except ValueError as exc:
        raise lm15.InvalidRequestError(str(exc)) from exc


def sampler_request(
    request: lm15.Request, config: PowerSamplingConfig, sampler: PowerSampler
) -> Request:
    """The call's chat rendered for ``sampler`` under ``config``, its reply constrained to the
    ``response_format``; a prompt that leaves no room in the context is DSPy's context error
    (on which e.g. ``dspy.ReAct`` truncates and retries)."""
    messages = chat_messages(request)
    options = ChatOptions.of(response_format=request.config.response_format)
    try:
        options.constraint()  # cached: the renderer gets this one
    except ValueError as exc:
        raise lm15.InvalidRequestError(str(exc)) from exc
    stop = tuple(request.config.stop)
    chat = render(sampler, Request(messages, config, stop), options, describe_format=False)
    try:
        sampler.check_fits(chat.request.prompt)
    except ValueError as exc:
        raise lm15.ContextLengthError(str(exc)) from exc
    return chat.request


def chat_messages(request: lm15.Request) -> list[dict[str, str]]:
    """``Request.system`` + ``Request.messages`` as ``{"role", "content"}`` dicts (text only)."""
    messages = []
    if request.system is not None:
        messages.append({"role": "system", "content": _text(request.system, "the system")})
    for message in request.messages:
        if message.role == "tool":
            raise _unsupported("tool messages", "use DSPy's text tools (dspy.ReAct) instead")
        role = "system" if message.role == "developer" else message.role
        messages.append(
            {"role": role, "content": _text(message.parts, f"a {message.role} message")}
        )
    return messages


def _text(parts: Any, where: str) -> str:
    try:
        return content_text(parts, where, skip=("thinking",))
    except ValueError as exc:
        raise lm15.UnsupportedFeatureError(
            f"power sampling runs a local text model: {exc}", feature="non-text content"
        ) from exc


def _unsupported(what: str, fix: str) -> lm15.UnsupportedFeatureError:
    return lm15.UnsupportedFeatureError(
        f"power sampling runs a local text model and does not support {what}; {fix}",
        feature=what,
    )


def response(generation: Generation, config: PowerSamplingConfig, model: str) -> lm15.Response:
    """A generation as DSPy's response; ``model`` is the model string of ``config``, the
    settings that ran."""
    stats = generation.stats
    return lm15.Response(
        id=None,
        model=model,
        message=lm15.Message.assistant([lm15.TextPart(generation.text or "")]),
        finish_reason=generation.finish_reason,
        usage=lm15.Usage(input_tokens=stats.prompt_tokens, output_tokens=stats.completion_tokens),
        provider_data={"power_sampling": {**stats.to_dict(), "settings": config.model_dump()}},
    )


def delta_event(text: str) -> lm15.StreamDeltaEvent:
    return lm15.StreamDeltaEvent(delta=lm15.TextDelta(text=text))


def end_event(response: lm15.Response) -> lm15.StreamEndEvent:
    return lm15.StreamEndEvent(finish_reason=response.finish_reason, usage=response.usage)
