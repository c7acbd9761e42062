"""What every test folder shares: collection rules and the tiny random chat model.

The vLLM venv (``.venv-vllm``, built by ``make test-vllm``) pins an older transformers and has
none of the other extras, so pytest run there collects ``tests/vllm_backend`` only. Elsewhere
the vLLM tests skip themselves when vLLM is not importable. The other folders mirror the
package's rooms; ``tables.py`` and ``serve_helpers.py`` are helpers they share.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

_ROOMS = [p.name for p in Path(__file__).parent.iterdir() if p.is_dir() and p.name[0] != "_"]
# Test modules use each other's exact helpers (tables, targets) by module name, across rooms.
sys.path[:0] = [str(Path(__file__).parent / room) for room in _ROOMS]
collect_ignore = (
    [room for room in _ROOMS if room != "vllm_backend"]
    if Path(sys.prefix).name == ".venv-vllm"
    else []
)


@pytest.fixture(scope="session")
def tiny_backend() -> Any:
    """A ``TransformersBackend`` over :func:`power_sampling.testing.tiny_chat_model` (seed 0)."""
    pytest.importorskip("transformers")
    from power_sampling.backends.transformers import TransformersBackend
    from power_sampling.testing import tiny_chat_model

    return TransformersBackend.from_transformers(*tiny_chat_model(seed=0))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model saved as a local model folder (what ``--model PATH`` loads)."""
    pytest.importorskip("transformers")
    from power_sampling.testing import tiny_chat_model

    folder = tmp_path_factory.mktemp("tiny-chat-model")
    model, tokenizer = tiny_chat_model(seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
