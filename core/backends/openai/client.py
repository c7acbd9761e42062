"""The HTTP side of :class:`~.backend.OpenAIBackend`: a pooled async client, many requests at once.

A backend call becomes several HTTP requests (one per prefix for ``sample``, since every prefix
has its own seed). They run concurrently on one ``httpx.AsyncClient`` (keep-alive connections,
pooled) driven by an event loop of the client's own, in a daemon thread, so the synchronous
backend protocol can be called from any thread, inside a running event loop too. The engine
behind the endpoint batches whatever arrives at once.

A request answered 429 (rate limited) or 503 (overloaded, or still starting) is retried with
exponential backoff (the server's ``Retry-After`` when it gives one), as are connection errors;
any other error status raises :class:`ServerError` at once with the server's own message.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Sequence
from typing import Any

RETRY_STATUSES = frozenset({429, 503})


class ServerError(RuntimeError):
    """The server refused a request: ``status`` and the server's ``message``."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url} answered {status}: {message}")
        self.status = status
        self.message = message


class Client:
    """POSTs and GETs JSON to ``base_url`` (ending in ``/v1``), many at once.

    ``api_key`` goes in the ``Authorization: Bearer`` header; ``timeout`` (seconds) bounds each
    request; ``max_retries`` retries of a request answered 429/503 or not connected, waiting
    ``backoff * 2**attempt`` seconds (at most 30) between tries; ``max_connections`` caps the
    pool.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_connections: int = 64,
    ) -> None:
        try:
            import httpx
        except ImportError as error:
            raise ImportError(
                "OpenAIBackend needs httpx: pip install 'power-sampling[remote]'"
            ) from error
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="power-sampling-http", daemon=True
        )
        self._thread.start()
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=16)

        async def build() -> Any:
            return httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits)

        self._http = self._run(build())
        atexit.register(self.close)

    def post_many(self, path: str, bodies: Sequence[dict[str, Any]]) -> list[Any]:
        """POST every body to ``path`` concurrently; the JSON answers, in order."""

        async def all_of() -> list[Any]:
            return list(await asyncio.gather(*(self._send("POST", path, b) for b in bodies)))

        return self._run(all_of()) if bodies else []

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.post_many(path, [body])[0]

    def get(self, path: str) -> Any:
        return self._run(self._send("GET", path, None))

    def close(self) -> None:
        """Close the connections and stop the client's loop (idempotent)."""
        if self._loop.is_closed() or not self._loop.is_running():
            return
        self._run(self._http.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _send(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        import httpx

        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._http.request(method, url, json=body)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as error:
                if last:
                    raise ConnectionError(
                        f"cannot reach {url}: {error}; is the server running, and is base_url "
                        "right (it ends in /v1)?"
                    ) from error
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(self._delay(attempt, response.headers.get("retry-after")))
                continue
            if response.status_code >= 400:
                raise ServerError(url, response.status_code, _message(response))
            return response.json()
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        try:
            asked = float(retry_after) if retry_after else 0.0
        except ValueError:  # an HTTP date: fall back to our own backoff
            asked = 0.0
        return min(max(asked, self.backoff * 2**attempt), 30.0)


def _message(response: Any) -> str:
    """The server's error message: OpenAI's ``{"error": {"message": ...}}``, else the body."""
    try:
        data = response.json()
    except ValueError:
        return str(response.text)[:500]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(data, dict) and data.get("detail"):
        return str(data["detail"])
    return str(data)[:500]
