"""A Hugging Face ``transformers`` causal LM in this process (needs the ``[hf]`` extra)."""

from .backend import TransformersBackend

__all__ = ["TransformersBackend"]
