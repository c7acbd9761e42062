"""The text side of backends over a Hugging Face tokenizer: encode, decode and chat templates.

``TransformersBackend`` and ``VLLMBackend`` share it, so both

* decode without cleaning up spaces (prefix-stable text, which stop strings and streaming need);
* reject text that is not valid Unicode with an error naming it, not the tokenizer's TypeError;
* keep special-token strings typed into chat messages as plain text: a user's ``<|im_end|>``
  cannot end their turn and start another (a raw text prompt may still mean them).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class HFText:
    """Text methods of a backend with a Hugging Face ``tokenizer`` and a ``name``."""

    tokenizer: Any
    name: str

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
