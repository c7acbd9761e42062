"""vLLM's engines in this process (needs vLLM): the offline ``vllm.LLM`` with this package's
exact constraint processor, and the async ``AsyncLLM`` with continuous batching."""

from .async_engine import AsyncVLLMBackend
from .backend import VLLMBackend

__all__ = ["AsyncVLLMBackend", "VLLMBackend"]
