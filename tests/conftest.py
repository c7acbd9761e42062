"""Test collection shared by every test folder.

The vLLM venv (``.venv-vllm``, built by ``make test-vllm``) pins an older transformers and has
none of the other extras, so pytest run there collects ``tests/vllm_backend`` only. Elsewhere
the vLLM tests skip themselves when vLLM is not importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

collect_ignore = ["unit", "integration", "gpu"] if Path(sys.prefix).name == ".venv-vllm" else []
