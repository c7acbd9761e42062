"""The model itself over HTTP: plain decoding with vLLM's completions fields, for remote samplers.

A text completion under plain decoding (method ``standard`` or ``low_temperature``: the
server's ``--method`` or the request's ``power_sampling.method``) that asks for log-probs or
sets one of vLLM's fields below is served here rather than by a sampler: one ``sample`` call
draws every prompt's ``n`` completions, and the answer has vLLM's shape. That is what
:class:`~power_sampling.backends.openai.OpenAIBackend` speaks, so power sampling can run in one
process against a model this server holds (``power-sampling serve --method standard``). Under
any other method these fields are a 400 that says so.

The fields, as in vLLM:

* ``logprobs`` k (at most :data:`MAX_LOGPROBS`): each drawn token's log-prob and the k most
  likely tokens at its position; ``prompt_logprobs`` k: the same for each prompt token after
  the first (``None`` first), from the backend's ``score`` (a
  :class:`~power_sampling.backends.base.ScoringBackend`);
* ``return_token_ids`` (``prompt_token_ids`` and ``token_ids`` in each choice),
  ``return_tokens_as_token_ids`` (tokens named ``token_id:N``);
* ``stop_token_ids``, ``ignore_eos`` (the model's own end tokens no longer stop),
  ``include_stop_str_in_output``, ``add_special_tokens`` (text prompts; default true);
* ``top_k`` 0 or -1, ``min_p`` 0, ``repetition_penalty`` 1 and ``skip_special_tokens`` true:
  no truncation, penalty or special-token text, the only values served.

Log-probs follow the server's ``--logprobs-mode``, as vLLM's: ``raw_logprobs`` (the default)
are the base model's at every temperature, ``processed_logprobs`` those of the distribution each
token was drawn from (p^(1/T) renormalised), so that a remote MCMC or Power-SMC gets exact
proposal log-probs. At temperatures 0 and 1, and for prompt log-probs, both are the base
model's. Top log-probs at another temperature in ``processed_logprobs`` rank the whole
vocabulary at each position (their normaliser needs every token).

A call runs as one job of the engine's scheduler, admitted and queued like a request, and its
model calls are merged with those of every other request: remote callers that send one request
per prefix at once are batched together. It is held to the server's ``--max-tokens-limit`` and
``--max-request-forward-tokens`` (its rows times their prompt and budget); ``n`` is a number of
rows, not of sampler runs, so ``--max-choices`` does not apply. It is not streamed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.base import (
    Backend,
    Continuation,
    ScoringBackend,
    StopCondition,
    TextBackend,
    validate_prefixes,
)
from ..config import TEMPERATURE_METHODS, PowerSamplingConfig
from ..errors import FieldError
from ..power_math import logsumexp
from ..request import resolve_settings
from .limits import RequestLimits
from .schemas import CompletionRequest
from .translate import settings_of

__all__ = ["LOGPROBS_MODES", "MAX_LOGPROBS", "ModelCall", "prepare", "run", "wanted"]

LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
MAX_LOGPROBS = 20
"""Most top log-probs per position (vLLM's ``--max-logprobs`` default)."""
MAX_PROMPTS = 1024
"""Most prompts in one call (vLLM's ``VLLM_MAX_COMPLETION_PROMPTS`` default)."""

VLLM_FIELDS = (
    "prompt_logprobs",
    "return_token_ids",
    "return_tokens_as_token_ids",
    "stop_token_ids",
    "ignore_eos",
    "include_stop_str_in_output",
    "add_special_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "min_p",
    "repetition_penalty",
)
# Fields whose only served value changes nothing: (value served, what the others would need)
_NO_OPS = {
    "min_p": ((0, 0.0), "min-p truncation is not implemented; leave it unset or 0"),
    "repetition_penalty": ((1, 1.0), "a penalty changes the distribution sampled; leave it 1"),
    "skip_special_tokens": ((True,), "special tokens are always left out of the text"),
}


def wanted(body: CompletionRequest) -> bool:
    """Whether ``body`` is for the model API: it asks for log-probs or sets a vLLM field."""
    logprobs = body.logprobs not in (None, False, 0)
    return logprobs or any(getattr(body, name) is not None for name in VLLM_FIELDS)


@dataclass(frozen=True)
class ModelCall:
    """A checked model-API request (picklable: it travels to replicas)."""

    prompts: tuple[str | tuple[int, ...], ...]
    n: int
    max_tokens: int
    max_tokens_given: bool
    temperature: float
    seed: int | None
    logprobs: int | None
    prompt_logprobs: int | None
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool
    include_stop: bool
    add_special_tokens: bool
    token_ids: bool
    tokens_as_ids: bool
    logprobs_mode: str
    max_forward_tokens: int


def model_call(
    body: CompletionRequest,
    defaults: PowerSamplingConfig,
    limits: RequestLimits,
    logprobs_mode: str,
) -> ModelCall:
    """``body`` checked into a :class:`ModelCall`; every mistake a ``ValueError`` naming the
    field and the fix, before any work."""
    asked = [n for n in ("logprobs", *VLLM_FIELDS) if getattr(body, n) not in (None, False, 0)]
    settings = settings_of(body)
    top_k, logprobs = settings.pop("top_k", None), settings.pop("logprobs", None)
    config = resolve_settings(defaults, settings)
    if config.method not in TEMPERATURE_METHODS:
        field = asked[0] if asked else "logprobs"
        raise FieldError(
            field,
            f"{field} is served under plain decoding only (the model's own tokens and "
            f"log-probs), not method={config.method!r}: send power_sampling "
            '{"method": "standard"}, or start the server with --method standard',
            named=False,
        )
    if body.stream:
        raise FieldError(
            "stream",
            "a completion with log-probs or vLLM's fields is not "
            "streamed by this server; leave stream unset",
            named=False,
        )
    if body.unsupported() is not None:
        raise FieldError(
            str(body.unsupported()),
            f"{body.unsupported()} is not supported by this server: leave it out",
            named=False,
        )
    if top_k not in (None, 0, -1):
        _refuse("top_k", top_k, "top-k truncation is not implemented; leave it unset, 0 or -1")
    for name, (served, fix) in _NO_OPS.items():
        if (value := getattr(body, name)) is not None and value not in served:
            _refuse(name, value, fix)
    for name, value in (("logprobs", logprobs), ("prompt_logprobs", body.prompt_logprobs)):
        if value is not None and not isinstance(value, bool) and value > MAX_LOGPROBS:
            raise FieldError(
                name,
                f"{name}={value} is more than this server returns (max allowed: "
                f"{MAX_LOGPROBS}); ask for fewer",
                named=False,
            )
    if logprobs is not None and (
        isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0
    ):
        _refuse("logprobs", logprobs, f"use an integer from 0 to {MAX_LOGPROBS}")
    prompts = tuple(p if isinstance(p, str) else tuple(p) for p in body.prompts)
    if not prompts:
        raise FieldError(
            "prompt", "prompt is empty: give a string, token ids, or a list of them", named=False
        )
    if len(prompts) > MAX_PROMPTS:
        raise FieldError(
            "prompt",
            f"the request has {len(prompts)} prompts, over this server's limit of "
            f"{MAX_PROMPTS}; split it",
            named=False,
        )
    n = body.n or 1
    if config.max_new_tokens > limits.max_tokens:
        limits.check(config, 1)  # the limit's own message
    temperature = config.temperature
    if temperature is None:
        temperature = 1.0 if config.method == "standard" else 1.0 / config.alpha
    return ModelCall(
        prompts=prompts,
        n=n,
        max_tokens=config.max_new_tokens,
        max_tokens_given=body.max_tokens is not None,
        temperature=float(temperature),
        seed=config.seed,
        logprobs=logprobs,
        prompt_logprobs=body.prompt_logprobs,
        stop=body.stops,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        ignore_eos=bool(body.ignore_eos),
        include_stop=bool(body.include_stop_str_in_output),
        add_special_tokens=body.add_special_tokens is not False,
        token_ids=bool(body.return_token_ids),
        tokens_as_ids=bool(body.return_tokens_as_token_ids),
        logprobs_mode=logprobs_mode,
        max_forward_tokens=limits.max_forward_tokens,
    )


@dataclass(frozen=True)
class Prepared:
    """A call on its model: each prompt's token ids and token budget."""

    call: ModelCall
    prompts: list[tuple[int, ...]]
    limits: list[int]

    @property
    def slots(self) -> int:
        """KV slots the call holds at most (each row as long as its prompt and output)."""
        rows = sum(
            self.call.n * (len(p) + m) for p, m in zip(self.prompts, self.limits, strict=True)
        )
        return rows + (
            sum(len(p) for p in self.prompts) if self.call.prompt_logprobs is not None else 0
        )


def prepare(call: ModelCall, backend: Backend) -> Prepared:
    """Tokenise ``call``'s prompts and fit each budget to the context; a prompt that does not
    fit, or a field this backend cannot serve, raises ``ValueError`` before any model call."""
    if call.prompt_logprobs is not None and not isinstance(backend, ScoringBackend):
        raise FieldError(
            "prompt_logprobs",
            f"this server's backend ({type(backend).__name__}) "
            "cannot score prompts; leave prompt_logprobs unset",
            named=False,
        )
    text = backend if isinstance(backend, TextBackend) else None
    if text is None and (call.stop or any(isinstance(p, str) for p in call.prompts)):
        raise FieldError(
            "prompt",
            "this server's model has no tokenizer: send token ids and stop_token_ids, not text",
            named=False,
        )
    prompts = []
    for prompt in call.prompts:
        if isinstance(prompt, str):
            assert text is not None
            prompt = tuple(text.encode(prompt, add_special_tokens=call.add_special_tokens))
        prompts.append(prompt)
    try:
        validate_prefixes(prompts, backend.vocab_size)
    except ValueError as error:
        raise FieldError("prompt", str(error), named=False) from None
    context = getattr(backend, "max_context", None)
    limits = []
    for prompt in prompts:
        room = call.max_tokens if context is None else context - len(prompt)
        if room < 1 or (call.max_tokens_given and room < call.max_tokens):
            raise FieldError(
                "max_tokens",
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {len(prompt) + call.max_tokens} tokens ({len(prompt)} in the "
                f"prompt, {call.max_tokens} for the completion): shorten the prompt or lower "
                "max_tokens",
                named=False,
            )
        limits.append(min(call.max_tokens, room))
    prepared = Prepared(call, prompts, limits)
    if prepared.slots > call.max_forward_tokens:
        raise FieldError(
            "max_tokens",
            f"the request costs up to {prepared.slots} forward tokens, over this server's limit "
            f"of {call.max_forward_tokens} (power-sampling serve --max-request-forward-tokens)",
            named=False,
        )
    return prepared


def run(prepared: Prepared, backend: Backend) -> dict[str, Any]:
    """The call's model calls on ``backend`` (a lane of the scheduler): the response's
    ``choices`` and ``usage``."""
    call, prompts = prepared.call, prepared.prompts
    ends = frozenset() if call.ignore_eos else backend.stop.token_ids
    stop = StopCondition(ends | frozenset(call.stop_token_ids), call.stop)
    seeds = [call.seed if call.seed is not None else random.getrandbits(63) for _ in prompts]
    drawn = backend.sample(
        prompts, call.n, prepared.limits, seed=seeds, temperature=call.temperature, stop=stop
    ).continuations
    names = _Names(backend, call.tokens_as_ids)
    tops = _top_logprobs(call, backend, prompts, drawn) if call.logprobs else {}
    scored = (
        _prompt_logprobs(call, backend, prompts, names)
        if call.prompt_logprobs is not None
        else None
    )
    choices = []
    for p, (prompt, rows) in enumerate(zip(prompts, drawn, strict=True)):
        for j, c in enumerate(rows):
            choice: dict[str, Any] = {"index": p * call.n + j, **_ending(c, stop, names, call)}
            if call.logprobs is not None:
                choice["logprobs"] = _logprobs(call, prompt, c, tops, names)
            else:
                choice["logprobs"] = None
            if call.token_ids:
                choice["prompt_token_ids"] = list(prompt)
                choice["token_ids"] = list(c.token_ids)
            if scored is not None:
                choice["prompt_logprobs"] = scored[p]
            choices.append(choice)
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(len(c.token_ids) for rows in drawn for c in rows)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    return {"choices": choices, "usage": usage}


class _Names:
    """Token strings: ``token_id:N``, or the token's text."""

    def __init__(self, backend: Backend, as_ids: bool) -> None:
        self.text = backend if isinstance(backend, TextBackend) and not as_ids else None
        self.decoder = backend if isinstance(backend, TextBackend) else None

    def token(self, token: int) -> str:
        return f"token_id:{token}" if self.text is None else self.text.decode([token])

    def decode(self, tokens: Sequence[int]) -> str:
        return "" if self.decoder is None else self.decoder.decode(tokens)


def _ending(c: Continuation, stop: StopCondition, names: _Names, call: ModelCall) -> dict[str, Any]:
    """The choice's text, finish reason and stop reason (the stop token or string)."""
    text = names.decode(c.token_ids)
    reason: int | str | None = None
    if c.finished and c.token_ids and c.token_ids[-1] in stop.token_ids:
        reason = c.token_ids[-1]
    elif c.finished and stop.strings:
        found = [(text.find(s), s) for s in stop.strings if s in text]
        if found:
            at, reason = min(found)
            text = text if call.include_stop else text[:at]
    return {
        "text": text,
        "finish_reason": "stop" if c.finished else "length",
        "stop_reason": reason,
    }


def _sampled_logprobs(call: ModelCall, c: Continuation) -> tuple[float, ...]:
    """What the server reports for each drawn token, per its log-prob mode."""
    if call.logprobs_mode == "processed_logprobs" and call.temperature not in (0.0, 1.0):
        return c.proposal_logprobs
    return c.token_logprobs


def _tempered(call: ModelCall) -> bool:
    return call.logprobs_mode == "processed_logprobs" and call.temperature not in (0.0, 1.0)


def _top_logprobs(
    call: ModelCall, backend: Backend, prompts: list[tuple[int, ...]], drawn: list[list[Any]]
) -> dict[tuple[int, ...], list[tuple[int, float]]]:
    """The top ``call.logprobs`` tokens and log-probs at every drawn position, by prefix."""
    prefixes = list(
        dict.fromkeys(
            prompt + c.token_ids[:j]
            for prompt, rows in zip(prompts, drawn, strict=True)
            for c in rows
            for j in range(len(c.token_ids))
        )
    )
    if not prefixes:
        return {}
    k = backend.vocab_size if _tempered(call) else call.logprobs or 0
    entries = backend.top_k(prefixes, k).entries
    out = {}
    for prefix, entry in zip(prefixes, entries, strict=True):
        pairs = list(zip(entry.token_ids, entry.logprobs, strict=True))
        if _tempered(call):
            scaled = [v / call.temperature for _, v in pairs]
            norm = float(logsumexp(scaled))
            pairs = [(t, s - norm) for (t, _), s in zip(pairs, scaled, strict=True)]
        out[prefix] = pairs[: call.logprobs]
    return out


def _logprobs(
    call: ModelCall,
    prompt: tuple[int, ...],
    c: Continuation,
    tops: dict[tuple[int, ...], list[tuple[int, float]]],
    names: _Names,
) -> dict[str, Any]:
    """OpenAI's completions ``logprobs`` object of one choice."""
    values = _sampled_logprobs(call, c)
    tokens = [names.token(t) for t in c.token_ids]
    top = []
    for j, (token, value) in enumerate(zip(c.token_ids, values, strict=True)):
        best = {names.token(t): v for t, v in tops.get(prompt + c.token_ids[:j], [])}
        best[names.token(token)] = value
        top.append(best)
    offsets = [0]
    for name in tokens[:-1]:
        offsets.append(offsets[-1] + len(name))
    return {
        "tokens": tokens,
        "token_logprobs": list(values),
        "top_logprobs": top,
        "text_offset": offsets if tokens else [],
    }


def _prompt_logprobs(
    call: ModelCall, backend: Backend, prompts: list[tuple[int, ...]], names: _Names
) -> list[list[dict[str, dict[str, Any]] | None]]:
    """vLLM's ``prompt_logprobs`` of each prompt: None, then per token its base log-prob
    (and the ``call.prompt_logprobs`` most likely tokens) keyed by token id."""
    scores = backend.score(prompts)  # type: ignore[attr-defined]
    k = call.prompt_logprobs or 0
    prefixes = [p[:j] for p in prompts for j in range(1, len(p))] if k else []
    ranked = iter(backend.top_k(prefixes, k).entries if prefixes else [])
    out: list[list[dict[str, dict[str, Any]] | None]] = []
    for prompt, values in zip(prompts, scores, strict=True):
        steps: list[dict[str, dict[str, Any]] | None] = [None]
        for token, value in zip(prompt[1:], values, strict=True):
            best = next(ranked) if k else None
            pairs = zip(best.token_ids, best.logprobs, strict=True) if best else ()
            step = {str(t): _entry(v, r, names.token(t)) for r, (t, v) in enumerate(pairs, 1)}
            rank = step[str(token)]["rank"] if str(token) in step else None
            step[str(token)] = _entry(float(value), rank, names.token(token))
            steps.append(step)
        out.append(steps)
    return out


def _entry(logprob: float, rank: int | None, decoded: str) -> dict[str, Any]:
    return {"logprob": logprob, "rank": rank, "decoded_token": decoded}


def _refuse(name: str, value: Any, fix: str) -> None:
    raise FieldError(name, f"{name}={value!r} is invalid: {fix}", named=False)


def check_mode(mode: str) -> str:
    """``mode`` if it is a log-prob mode this server serves."""
    if mode not in LOGPROBS_MODES:
        raise ValueError(
            f"logprobs_mode={mode!r} is invalid: use one of {', '.join(LOGPROBS_MODES)}"
        )
    return mode
