"""DSPy: :func:`power_lm` (a ``dspy.LM`` sampling with power sampling) and its adapter."""

from .adapter import SchemaJSONAdapter
from .lm import AsyncPowerEngine, PowerEngine, PowerLM, model_string, power_lm

__all__ = [
    "AsyncPowerEngine",
    "PowerEngine",
    "PowerLM",
    "SchemaJSONAdapter",
    "model_string",
    "power_lm",
]
