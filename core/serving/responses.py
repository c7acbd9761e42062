"""OpenAI's response bodies: whole chat and text completions, streamed chunks, errors.

Besides OpenAI's fields, every completion (and the usage chunk of a stream) carries a top-level
``power_sampling`` object: the settings that ran and the sampler's measured work (the same
summary the LangChain adapter puts in ``response_metadata``). The ``openai`` client exposes it
as ``response.model_extra["power_sampling"]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..generation import cost
from .translate import Choice, usage


class Reply:
    """The identity of one response (id, creation time, model) and its body builders."""

    def __init__(self, model: str, *, chat: bool, n: int) -> None:
        self.chat, self.model, self.n = chat, model, n
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def head(self, chunk: bool = False) -> dict[str, Any]:
        """The response's id, object, creation time and model."""
        kind = self.object + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, choices: Sequence[Choice]) -> dict[str, Any]:
        """The non-streamed response."""
        return {
            **self.head(False),
            "choices": [self._choice(c) for c in choices],
            "usage": usage(choices, self.n),
            "power_sampling": summary(choices),
        }

    def _choice(self, c: Choice) -> dict[str, Any]:
        out: dict[str, Any] = {"index": c.index, "finish_reason": c.finish_reason}
        if not self.chat:
            return {**out, "text": c.content or "", "logprobs": None}
        message: dict[str, Any] = {"role": "assistant", "content": c.content}
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        return {**out, "message": message, "logprobs": None}

    # -- streaming -------------------------------------------------------------------------------

    def chunk(self, index: int, delta: dict[str, Any] | str, finish: str | None = None) -> str:
        """One server-sent event: a content delta (chat: a ``delta`` object, text: the text)."""
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        return event({**self.head(True), "choices": [choice]})

    def opening(self, index: int) -> str:
        """Chat streams start each choice with its role."""
        return self.chunk(index, {"role": "assistant", "content": ""})

    def delta(self, index: int, text: str) -> str:
        return self.chunk(index, {"content": text} if self.chat else text)

    def ending(self, c: Choice) -> list[str]:
        """The rest of a finished choice: unsent content, tool calls, the finish reason."""
        out = [self.delta(c.index, c.tail)] if c.tail else []
        if c.tool_calls:
            calls = [{"index": i, **call} for i, call in enumerate(c.tool_calls)]
            out.append(self.chunk(c.index, {"tool_calls": calls}))
        out.append(self.chunk(c.index, {} if self.chat else "", c.finish_reason))
        return out

    def usage_chunk(self, choices: Sequence[Choice]) -> str:
        return event(
            {
                **self.head(True),
                "choices": [],
                "usage": usage(choices, self.n),
                "power_sampling": summary(choices),
            }
        )


def summary(choices: Sequence[Choice]) -> dict[str, Any]:
    """``power_sampling``: the settings that ran (seed: the request's, i.e. choice 0's) and the
    work of all choices."""
    ordered = sorted(choices, key=lambda c: c.index)
    out = cost([c.generation for c in ordered])
    first = ordered[0].generation.config
    out["seed"] = first.seed if first is not None else None
    return out


def event(body: dict[str, Any] | str) -> str:
    """A server-sent event ``data: ...`` line pair."""
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return f"data: {data}\n\n"


DONE = event("[DONE]")


def error_body(message: str, kind: str, param: str | None = None, code: Any = None) -> Any:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
