"""An OpenAI-compatible HTTP server over any backend (``power-sampling serve``).

- :func:`create_app` (:mod:`.app`): the FastAPI app, ``/v1/models``, ``/v1/chat/completions``,
  ``/v1/completions``, with power-sampling settings per request in ``power_sampling``.
- :class:`LocalEngine` (:mod:`.engine`): requests run on one backend in this process, batched by
  its scheduler; :class:`~.replicas.RayEngine` (:mod:`.replicas`): spread over Ray actors.
- :mod:`.schemas` (request bodies), :mod:`.translate` (requests to sampler requests and back),
  :mod:`.responses` (response bodies and stream events), :mod:`.background` (a server in a
  thread).

Needs the ``[serve]`` extra (FastAPI, uvicorn); replicas need ``[ray]``.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError("the server needs: pip install 'power-sampling[serve]'") from exc

from .app import create_app
from .background import BackgroundServer, free_port
from .engine import LocalEngine

__all__ = ["BackgroundServer", "LocalEngine", "create_app", "free_port"]
