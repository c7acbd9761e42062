"""Backends: a causal LM seen through token ids (see :mod:`.base` for the protocol).

``TableLM`` is always available; ``TransformersBackend``, ``VLLMBackend`` (vLLM's offline
engine), ``AsyncVLLMBackend`` (its async engine) and ``OpenAIBackend`` (a model served over
HTTP) are imported on first use so that ``import power_sampling`` loads neither torch, vLLM nor
an HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    Backend,
    Continuation,
    SampleOutput,
    ScoringBackend,
    StopCondition,
    TextBackend,
    TopK,
    TopKOutput,
)
from .ignore_eos import IgnoreEOS
from .table import TableLM

if TYPE_CHECKING:
    from .openai.backend import OpenAIBackend
    from .transformers.backend import TransformersBackend
    from .vllm.async_engine import AsyncVLLMBackend
    from .vllm.backend import VLLMBackend


def load_transformers_backend() -> type[TransformersBackend]:
    """The ``TransformersBackend`` class, or an ImportError naming the extra that brings it."""
    try:
        from .transformers.backend import TransformersBackend
    except ImportError as exc:
        if exc.name not in ("torch", "transformers", "gguf", "accelerate"):
            raise
        raise ImportError(
            f"running a model in-process needs {exc.name}, which is not installed: "
            "pip install 'power-sampling[hf]' (on a CPU-only machine install torch from the "
            "PyTorch CPU index first to avoid a multi-GB CUDA build)"
        ) from exc
    return TransformersBackend


def __getattr__(name: str) -> Any:
    if name == "TransformersBackend":
        return load_transformers_backend()
    if name == "VLLMBackend":
        from .vllm.backend import VLLMBackend

        return VLLMBackend
    if name == "AsyncVLLMBackend":
        from .vllm.async_engine import AsyncVLLMBackend

        return AsyncVLLMBackend
    if name == "OpenAIBackend":
        from .openai.backend import OpenAIBackend

        return OpenAIBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncVLLMBackend",
    "Backend",
    "Continuation",
    "IgnoreEOS",
    "OpenAIBackend",
    "SampleOutput",
    "ScoringBackend",
    "StopCondition",
    "TableLM",
    "TextBackend",
    "TopK",
    "TopKOutput",
    "TransformersBackend",
    "VLLMBackend",
]
