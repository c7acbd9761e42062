"""power-sampling: sample from a language model's power distribution p(x)^α without training.

Implements *Scalable Power Sampling* (Ji, Tutunov, Zimmer, Bou Ammar, arXiv 2601.21590) and the
baselines it is measured against. Importing this package loads no model framework: torch and
transformers load with the transformers backend, LangChain and DSPy with their integrations.

Layout, from the bottom up (a room imports only the rooms above it in this list):

- ``config``, ``text``, ``power_math``, ``errors``: settings, stop strings, the power math and
  one-line error messages; pure Python and numpy, no model, no I/O.
- ``constraints/``: constrained outputs (JSON schemas, regexes, grammars, token automata).
- ``generation``, ``request``: what a request asks for and what it returns.
- ``backends/``: the backend protocol over token ids and its implementations (tables, scripts,
  transformers, vLLM), and the model names they load from.
- ``exact``, ``samplers/``: exact enumeration on small models; one sampler per method and
  :class:`PowerSampler`, the entry point that runs them.
- ``testing/``: tiny in-process models for tests, this project's and downstream users'.
- ``chat/``: chat messages to requests for every entry point, and the tool-call text protocol.
- ``engine/``: where requests run: one scheduler per loaded model, the loaded-model registry.
- ``measure/``, ``evals/``: research tools (cost bench, memory, fidelity) and benchmarks.
- ``serving/``, ``integrations/``: the OpenAI-compatible HTTP server; LangChain and DSPy.
- ``cli/``: the ``power-sampling`` command, one module per subcommand.

``tests/core/test_layout.py`` holds the package to this order.
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
