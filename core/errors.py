"""Exceptions as one line of text, for the command line and the HTTP server's error bodies."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["error_message"]


def error_message(exc: BaseException) -> str:
    """One line for an exception; pydantic's validation report reduced to the validator's text."""
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors():
            msg = str(error.get("msg", "")).removeprefix("Value error, ")
            loc = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(msg if not loc or loc in msg else f"{loc}: {msg}")
        return "; ".join(parts)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
