"""Exceptions as one line of text, for the command line and the HTTP server's error bodies."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError

__all__ = ["FieldError", "error_message", "field_path"]


class FieldError(ValueError):
    """A bad value in one field of a request; ``field`` names it as a client writes it
    (``messages[2].content``), and the message, which starts with it unless ``named`` is False,
    says what is wrong and the fix."""

    def __init__(self, field: str, message: str, *, named: bool = True) -> None:
        super().__init__(f"{field}: {message}" if named else message)
        self.field = field


def field_path(location: Sequence[object]) -> str:
    """A field's location as a client writes it: ``("messages", 2, "content")`` is
    ``messages[2].content``."""
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def error_message(exc: BaseException) -> str:
    """One line for an exception; pydantic's validation report reduced to the validator's text."""
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors():
            msg = str(error.get("msg", "")).removeprefix("Value error, ")
            loc = field_path(error.get("loc", ()))
            parts.append(msg if not loc or loc in msg else f"{loc}: {msg}")
        return "; ".join(parts)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
