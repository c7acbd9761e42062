"""The model API's model calls (:mod:`.model_api`): one ``sample`` call for every prompt's
``n`` completions, then ``top_k`` for top log-probs and ``score`` for prompt log-probs, and the
answer's ``choices`` and ``usage`` in vLLM's shape."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from ..backends.base import Backend, Continuation, StopCondition, TextBackend
from ..power_math import logsumexp
from .model_api import ModelCall, Prepared

__all__ = ["run"]


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
    return c.proposal_logprobs if call.tempered else c.token_logprobs


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
    k = backend.vocab_size if call.tempered else call.logprobs or 0
    entries = backend.top_k(prefixes, k).entries
    out = {}
    for prefix, entry in zip(prefixes, entries, strict=True):
        pairs = list(zip(entry.token_ids, entry.logprobs, strict=True))
        if call.tempered:
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
