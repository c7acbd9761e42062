"""vLLM's engine in this process (needs vLLM), with this package's exact constraint processor."""

from .backend import VLLMBackend

__all__ = ["VLLMBackend"]
