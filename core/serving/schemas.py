"""The HTTP bodies the server reads: OpenAI's chat and text completion requests.

The sampling fields (``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, the penalties,
``logit_bias``, ``logprobs``, ``top_logprobs``, ``n``) mean what the table in
:mod:`power_sampling.fields` says, as in every other entry point: honoured, or a 400 whose
``param`` is the field. Other fields that change nothing sampled (``user``, ...) are accepted,
as vLLM's server does; ``echo`` and ``suffix`` are a 400. vLLM's own completions fields
(``prompt_logprobs``, ``return_token_ids``, ``stop_token_ids``, ...) are served by the model API
(:mod:`.model_api`) under plain decoding, and a 400 under the other methods. Power-sampling
settings come in ``power_sampling`` (the ``openai`` client's
``extra_body={"power_sampling": {...}}``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False
    """Send a last chunk with empty ``choices`` and the ``usage`` (and ``power_sampling``)."""


class _Common(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    power_sampling: dict[str, Any] | None = None
    """Any :class:`~power_sampling.PowerSamplingConfig` field, on top of the server's defaults."""
    temperature: Any = None
    top_p: Any = None
    top_k: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    logprobs: Any = None

    def unsupported(self) -> str | None:
        """The name of a field set to something the server does not do, if any."""
        return None

    def sampling_fields(self) -> dict[str, Any]:
        """The fields of :mod:`power_sampling.fields`' table that this body sets (``seed``,
        ``stop`` and ``n`` have their own paths)."""
        names = ["temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty"]
        names += ["logit_bias", "logprobs", "top_logprobs"]
        return {k: getattr(self, k) for k in names if getattr(self, k, None) is not None}

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: Any = None


class CompletionRequest(_Common):
    """``POST /v1/completions``: ``prompt`` is a string, token ids, or a list of either."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    suffix: str | None = None
    # vLLM's fields, served by the model API (:mod:`.model_api`) under plain decoding
    prompt_logprobs: int | None = Field(None, ge=0)
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = None
    include_stop_str_in_output: bool | None = None
    add_special_tokens: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        return super().unsupported()

    @property
    def prompts(self) -> list[str | list[int]]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (vLLM's): a text's token ids."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    """``POST /detokenize`` (vLLM's): token ids' text."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[int]
