"""The text side of backends over a Hugging Face tokenizer: encode, decode and chat templates.

``TransformersBackend`` and ``VLLMBackend`` share it, so both

* decode without cleaning up spaces (prefix-stable text, which stop strings and streaming need);
* reject text that is not valid Unicode with an error naming it, not the tokenizer's TypeError;
* keep special-token strings typed into chat messages as plain text: a user's ``<|im_end|>``
  cannot end their turn and start another (a raw text prompt may still mean them);
* end continuations at the same tokens (:func:`stop_ids`);
* are a ``TextBackend`` exactly when they have a tokenizer, and check a call the same way
  (:class:`HFBackend`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

from .base import BaseBackend, StopCondition

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
"""Chat end-of-turn tokens that end a continuation whenever the vocabulary has them."""
TEXT_METHODS = ("encode", "decode", "apply_chat_template")


class HFText:
    """The text methods of a backend named ``name`` over a Hugging Face ``tokenizer``."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most UTF-8 bytes any token of the vocabulary is written with (added tokens
        included). No token spells more text than that (a byte-level or ``▁`` symbol stands for
        at most its own bytes), so b bytes of text take at least b / max_token_bytes tokens."""
        return max((len(token.encode("utf-8")) for token in self.tokenizer.get_vocab()), default=1)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings in it (``<|im_end|>``) become special
        tokens, as a raw prompt may mean them to (chat message contents never do)."""
        check_text(text, "the prompt")
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return [int(t) for t in ids]

    def decode(self, token_ids: Sequence[int]) -> str:
        ids = [int(t) for t in token_ids]
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {self.name} has no chat template; pass a text prompt or "
                "token ids, or set tokenizer.chat_template"
            )
        plain = [dict(m) for m in messages]
        for i, message in enumerate(plain):
            for text in _texts(message.get("content")):
                check_text(text, f"message {i}'s content")
        specials = self._special_strings()
        injected = any(
            t in text for m in plain for text in _texts(m.get("content")) for t in specials
        )
        if not injected:
            return self.encode(str(self._render(plain, tools)))
        # Message contents hold special-token strings: render with placeholders, then encode
        # the template's own text with its special tokens and each content as plain text.
        contents: list[str] = []

        def hold(text: str) -> str:
            contents.append(text)
            return f"\ue000{len(contents) - 1}\ue001"

        held = [{**m, "content": _map_texts(m.get("content"), hold)} for m in plain]
        ids: list[int] = []
        for j, piece in enumerate(re.split("\ue000(\\d+)\ue001", str(self._render(held, tools)))):
            if j % 2:
                ids += self.tokenizer.encode(
                    contents[int(piece)], add_special_tokens=False, split_special_tokens=True
                )
            elif piece:
                ids += self.tokenizer.encode(piece, add_special_tokens=False)
        return [int(t) for t in ids]

    def _special_strings(self) -> set[str]:
        """The strings the tokenizer turns into special tokens."""
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        found = {t.content for t in added.values() if getattr(t, "special", False)}
        return {t for t in found | set(self.tokenizer.all_special_tokens) if t}

    def _render(
        self, messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]] | None
    ) -> Any:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=[dict(t) for t in tools] if tools else None,
            add_generation_prompt=True,
            tokenize=False,
        )


class HFBackend(BaseBackend):
    """What the backends over a model with a Hugging Face tokenizer, or none, share.

    With a tokenizer, ``encode``, ``decode`` and ``apply_chat_template`` are the instance's own
    (its :attr:`text`'s), so it is a ``TextBackend``. Without one they are absent, so
    ``isinstance(backend, TextBackend)`` is False and samplers treat it as a token-id backend
    (they would decode otherwise); reading one raises an AttributeError that names the fix
    (:attr:`no_text`, with ``{name}`` the method), and a stop string is refused (naming
    :attr:`build_with_text`). ``top_k`` refuses ``k < 1``, and ``sample`` a negative count or
    budget and a negative temperature (0 is greedy).
    """

    no_text: ClassVar[str]
    build_with_text: ClassVar[str]
    text: HFText | None
    encode: Callable[..., list[int]]
    decode: Callable[[Sequence[int]], str]
    apply_chat_template: Callable[..., list[int]]

    def _set_text(self, tokenizer: Any, name: str) -> None:
        self.text = None if tokenizer is None else HFText(tokenizer, name)
        if self.text is not None:
            for method in TEXT_METHODS:
                setattr(self, method, getattr(self.text, method))

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the instance lacks: a text method without a tokenizer.
        if name in TEXT_METHODS:
            raise AttributeError(self.no_text.format(name=name))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _check_top_k(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"k={k} is invalid: ask for at least one token")

    def _check_sample(
        self,
        n: int,
        max_new_tokens: int | Sequence[int],
        limits: list[int],
        temperature: float,
        stop: StopCondition,
    ) -> None:
        if n < 0 or min(limits, default=0) < 0:
            raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must be >= 0")
        if not temperature >= 0:
            raise ValueError(f"temperature={temperature} is invalid: use a value >= 0 (0 = greedy)")
        if stop.strings and self.text is None:
            raise ValueError(
                "this backend has no tokenizer, so it cannot match stop strings; pass stop "
                f"token ids, or {self.build_with_text}"
            )


def stop_ids(
    eos: Iterable[int | Sequence[int] | None], tokenizer: Any, extra: Sequence[int], vocab_size: int
) -> frozenset[int]:
    """The ids that end a continuation: ``extra``, the configs' EOS ids ``eos`` (each an id, a
    list of ids or None), the tokenizer's EOS and the end-of-turn tokens in its vocabulary;
    only those inside the vocabulary."""
    ids = {int(t) for t in extra}
    for end in eos:
        ids.update([end] if isinstance(end, int) else end or [])
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        vocab = tokenizer.get_vocab()
        ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return frozenset(i for i in ids if 0 <= i < vocab_size)


def check_text(text: str, what: str) -> None:
    """A clear error for text that is not valid Unicode (a lone surrogate from a bad decode),
    which tokenizers reject with a TypeError that names neither the text nor the fix."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise ValueError(
            f"{what} holds a lone surrogate U+{ord(bad):04X} at character {error.start}, which "
            "is not valid Unicode text; decode the bytes with errors='replace' (or remove it)"
        ) from None


def _texts(content: Any) -> list[str]:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p if isinstance(p, str) else p.get("text", "")
            for p in content
            if isinstance(p, str) or (isinstance(p, dict) and isinstance(p.get("text"), str))
        ]
    return []


def _map_texts(content: Any, change: Callable[[str], str]) -> Any:
    """``content`` with ``change`` applied to each of its texts (see :func:`_texts`)."""
    if isinstance(content, str):
        return change(content)
    if isinstance(content, list):
        return [
            change(p)
            if isinstance(p, str)
            else {**p, "text": change(p["text"])}
            if isinstance(p, dict) and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
    return content
