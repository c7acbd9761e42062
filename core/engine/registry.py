"""Models loaded once per process and shared.

Every adapter instance, copy and configurable alternative that names the same model, device,
dtype and loading options gets the same backend object, so a 7B model is never loaded twice
and ``deepcopy``/``pickle`` of an adapter never copies weights. A live object an adapter was
given (``backend=``, ``sampler=``) pickles by reference (:func:`share`, :func:`shared`): the
reference resolves in this process and in its forks, where the object is; elsewhere it is an
error saying to build the adapter from the model's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from ..backends.base import Backend

__all__ = ["load_shared", "loaded_models", "share", "shared"]

logger = logging.getLogger(__name__)

_MODELS: dict[str, Backend] = {}
_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()
_PROCESS = uuid.uuid4().hex  # inherited by forks, which hold the same objects
_OBJECTS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def _key(
    model: str | None,
    device: str | None,
    dtype: str | None,
    kwargs: Mapping[str, Any],
    served: tuple[str | None, str | None] = (None, None),
) -> str:
    from ..backends.models import DEFAULT_MODEL

    name = DEFAULT_MODEL if model in (None, "default") else str(model)
    key = [name, device, dtype, dict(kwargs)]
    base_url, api_key = served
    if base_url is not None:  # a served model: its server, and its key only as a digest
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else None
        key += [base_url, digest]
    return json.dumps(key, sort_keys=True, default=repr)


def load_shared(
    model: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
) -> Backend:
    """The backend of ``model`` (a name or path; None = the embedded default) on ``device`` with
    ``dtype``, loaded on first use and shared afterwards. ``model_kwargs`` go to
    ``from_pretrained``. Concurrent first calls load it once. With ``base_url`` the model is
    the one an OpenAI-compatible server serves there (``api_key`` its key), reached over HTTP."""
    from ..backends.models import resolve_model

    kwargs = dict(model_kwargs or {})
    key = _key(model, device, dtype, kwargs, (base_url, api_key))
    if base_url is not None:
        kwargs.update(base_url=base_url, api_key=api_key)
    with _GUARD:
        if key in _MODELS:
            return _MODELS[key]
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:  # loading takes seconds to minutes: other models load meanwhile
        if key not in _MODELS:
            options = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
            logger.info("Loading %s", model or "the default model")
            start = time.perf_counter()
            with _no_progress_bars():
                _MODELS[key] = resolve_model(model, **options, **kwargs)
            logger.info(
                "Loaded %s in %.1f s", model or "the default model", time.perf_counter() - start
            )
        return _MODELS[key]


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Loading reports through logging only: transformers' bars would interleave with the
    text a caller is about to stream."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def loaded_models() -> list[str]:
    """Keys of the models loaded so far (for logs and tests)."""
    with _GUARD:
        return list(_MODELS)


def share(obj: Any) -> str:
    """A key to ``obj`` that :func:`shared` resolves in this process (and its forks) while the
    object lives: what pickling an adapter built from a live backend saves instead of it."""
    key = f"{_PROCESS}:{type(obj).__qualname__}:{id(obj):x}"
    try:
        with _GUARD:
            _OBJECTS[key] = obj
    except TypeError as exc:  # no weak references to it: it cannot be referred to safely
        raise TypeError(
            f"cannot pickle a reference to the {type(obj).__name__} object; build the adapter "
            "with model='<name or path>' instead, which pickles by name"
        ) from exc
    return key


def shared(key: str, what: str = "the backend") -> Any:
    """The object :func:`share` gave ``key`` to; a clear ``LookupError`` where it is not here."""
    with _GUARD:
        obj = _OBJECTS.get(key)
    if obj is None:
        raise LookupError(
            f"{what} this object was pickled with lives in another process (or is gone): a live "
            "backend pickles by reference, for this process and its forks only. Build it with "
            "model='<name or path>' to pickle it by name, and it loads the model where unpickled"
        )
    return obj
