"""power-sampling: sample from a language model's power distribution p(x)^α without training.

Implements *Scalable Power Sampling* (Ji, Tutunov, Zimmer, Bou Ammar, arXiv 2601.21590) and the
baselines it is measured against. Importing this package loads no model framework: torch and
transformers load with the transformers backend, LangChain and DSPy with their integrations.
"""

from .backends.base import Backend, StopCondition, TextBackend
from .backends.table import TableLM
from .config import METHODS, PRESETS, PowerSamplingConfig
from .generation import Chunk, Generation, GenerationStats, StepTrace
from .samplers.power_sampler import PowerSampler

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "PRESETS",
    "Backend",
    "Chunk",
    "Generation",
    "GenerationStats",
    "PowerSampler",
    "PowerSamplingConfig",
    "StepTrace",
    "StopCondition",
    "TableLM",
    "TextBackend",
    "__version__",
]
