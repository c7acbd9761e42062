"""DSPy: :func:`power_lm` (a ``dspy.LM`` sampling with power sampling) and its adapter."""

try:
    import dspy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "power_sampling.integrations.dspy needs DSPy: pip install 'power-sampling[dspy]'"
    ) from exc

from .adapter import SchemaJSONAdapter
from .engine import AsyncPowerEngine, PowerEngine
from .lm import PowerLM, power_lm
from .translate import model_string

__all__ = [
    "AsyncPowerEngine",
    "PowerEngine",
    "PowerLM",
    "SchemaJSONAdapter",
    "model_string",
    "power_lm",
]
