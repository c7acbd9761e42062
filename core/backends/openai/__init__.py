"""A model served over HTTP by an OpenAI-compatible engine (vLLM); needs httpx."""

from .backend import OpenAIBackend

__all__ = ["OpenAIBackend"]
