"""Who may use the server, and what a request must look like before its body is read.

:class:`AccessGuard` is an ASGI middleware in front of the app. In order, for every HTTP request:

1. ``Host`` must be one of :attr:`AccessPolicy.allowed_hosts` when any are set (400): a page on
   another site cannot reach a server on localhost through DNS rebinding.
2. Every path but :attr:`AccessPolicy.open_paths` (``/health``) needs ``Authorization: Bearer
   KEY`` with one of :attr:`AccessPolicy.api_keys` when any are set (401, OpenAI's error shape).
   ``/v1/models`` is protected too, as in vLLM's server: the model's name is the operator's.
3. A ``POST`` must say ``Content-Type: application/json`` (415): browsers send ``text/plain``
   bodies across origins without asking, JSON only after a CORS preflight, which is refused
   unless :attr:`AccessPolicy.cors_origins` allows the page's origin.
4. A body over :attr:`AccessPolicy.max_body_bytes` is refused with 413: by its
   ``Content-Length`` before anything is read, or, sent in chunks, as soon as the count passes
   the limit (:class:`PayloadTooLarge`, which the app maps to 413).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from .responses import error_body

__all__ = ["API_KEY_ENV_VAR", "AccessGuard", "AccessPolicy", "PayloadTooLarge", "is_loopback"]

API_KEY_ENV_VAR = "POWER_SAMPLING_API_KEY"
"""Environment variable with the server's API keys (several separated by commas)."""

_LOOPBACK = ("127.", "::1", "localhost")


class PayloadTooLarge(ValueError):
    """The request body is larger than the server accepts."""


@dataclass(frozen=True)
class AccessPolicy:
    """The server's access rules; the defaults let anyone in, which is only safe on loopback."""

    api_keys: tuple[str, ...] = ()
    """Accepted bearer tokens. Empty: no authentication."""

    allowed_hosts: tuple[str, ...] = ()
    """Accepted ``Host`` header names (without the port). Empty: any."""

    cors_origins: tuple[str, ...] = ()
    """Origins whose pages may call the server from a browser (``*`` for any). Empty: none."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body accepted, in bytes."""

    open_paths: frozenset[str] = field(default_factory=lambda: frozenset({"/health"}))
    """Paths served without a key (liveness probes)."""

    def __post_init__(self) -> None:
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("an API key is empty or has surrounding spaces; pass the key alone")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes={self.max_body_bytes}: use 1 or more")

    @staticmethod
    def keys_from(values: Iterable[str]) -> tuple[str, ...]:
        """Keys from flags or the environment variable, each value possibly comma-separated."""
        return tuple(k.strip() for v in values for k in v.split(",") if k.strip())

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries one of the keys (constant time per key)."""
        if not self.api_keys:
            return True
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode()
        matched = False
        for key in self.api_keys:  # no early exit: the time does not tell which key was near
            matched |= secrets.compare_digest(given, key.encode())
        return matched and scheme.lower() == "bearer"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to listen on) is reachable from this machine only."""
    return host.startswith(_LOOPBACK)


class AccessGuard:
    """ASGI middleware enforcing an :class:`AccessPolicy` (see the module docstring)."""

    def __init__(self, app: Any, policy: AccessPolicy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive), send)

    def _refusal(
        self, scope: MutableMapping[str, Any], headers: dict[str, str]
    ) -> JSONResponse | None:
        policy = self.policy
        host = headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
        if policy.allowed_hosts and host not in policy.allowed_hosts:
            return _refuse(400, f"host {host!r} is not served here", "invalid_host")
        if scope["path"] not in policy.open_paths and not policy.authorized(
            headers.get("authorization")
        ):
            return _refuse(
                401,
                "a valid API key is needed: send the header 'Authorization: Bearer KEY'",
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            )
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                return _refuse(
                    415,
                    f"the body must be JSON: send 'Content-Type: application/json' "
                    f"(got {kind or 'none'!r})",
                    "unsupported_media_type",
                )
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > policy.max_body_bytes:
                return _refuse(413, self._too_large(), "payload_too_large")
        return None

    def _too_large(self) -> str:
        return (
            f"the request body is over the server's limit of {self.policy.max_body_bytes} bytes "
            "(power-sampling serve --max-body-bytes)"
        )

    def _bounded(self, receive: Any) -> Any:
        seen = 0

        async def bounded() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.policy.max_body_bytes:
                    raise PayloadTooLarge(self._too_large())
            return message

        return bounded


def _refuse(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(message, "invalid_request_error", None, code),
        status_code=status,
        headers=headers,
    )
