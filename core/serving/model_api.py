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

The model calls and the answer are in :mod:`.model_run`. A call runs as one job of the engine's
scheduler, admitted and queued like a request, and its
model calls are merged with those of every other request: remote callers that send one request
per prefix at once are batched together. It is held to the server's ``--max-tokens-limit`` and
``--max-request-forward-tokens`` (its rows times their prompt and budget); ``n`` is a number of
rows, not of sampler runs, so ``--max-choices`` does not apply. It is not streamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends.base import Backend, ScoringBackend, TextBackend, validate_prefixes
from ..config import TEMPERATURE_METHODS, PowerSamplingConfig
from ..errors import FieldError
from ..request import resolve_settings
from .limits import RequestLimits
from .schemas import CompletionRequest
from .translate import settings_of

__all__ = [
    "LOGPROBS_MODES",
    "MAX_LOGPROBS",
    "ModelCall",
    "Prepared",
    "model_call",
    "prepare",
    "wanted",
]

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

    @property
    def tempered(self) -> bool:
        """Whether the drawn log-probs reported are the tempered distribution's, not the base
        model's (``processed_logprobs`` at a temperature other than 0 and 1)."""
        return self.logprobs_mode == "processed_logprobs" and self.temperature not in (0.0, 1.0)


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
    if (unsupported := body.unsupported()) is not None:
        raise FieldError(
            unsupported,
            f"{unsupported} is not supported by this server: leave it out",
            named=False,
        )
    if top_k not in (None, 0, -1):
        _refuse("top_k", top_k, "top-k truncation is not implemented; leave it unset, 0 or -1")
    for name, (served, fix) in _NO_OPS.items():
        if (value := getattr(body, name)) is not None and value not in served:
            _refuse(name, value, fix)
    if logprobs is not None and (
        isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0
    ):
        _refuse("logprobs", logprobs, f"use an integer from 0 to {MAX_LOGPROBS}")
    for name, value in (("logprobs", logprobs), ("prompt_logprobs", body.prompt_logprobs)):
        if value is not None and not isinstance(value, bool) and value > MAX_LOGPROBS:
            raise FieldError(
                name,
                f"{name}={value} is more than this server returns (max allowed: "
                f"{MAX_LOGPROBS}); ask for fewer",
                named=False,
            )
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


def _refuse(name: str, value: Any, fix: str) -> None:
    raise FieldError(name, f"{name}={value!r} is invalid: {fix}", named=False)


def check_mode(mode: str) -> str:
    """``mode`` if it is a log-prob mode this server serves."""
    if mode not in LOGPROBS_MODES:
        raise ValueError(
            f"logprobs_mode={mode!r} is invalid: use one of {', '.join(LOGPROBS_MODES)}"
        )
    return mode
