"""Engines for the vLLM backend tests: real ``vllm.LLM`` engines on vLLM's CPU build, each paired
with a ``TransformersBackend`` over the same weights as the reference.

The engines run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and in eager mode, so
each starts in seconds; they are built once per session. vLLM's CPU attention needs a head size
of 32 or more, so the table model here is :func:`tiny_table_model` with ``head_dim=32``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# vLLM binds its CPU kernels to the cores it uses (one of two here); more OpenMP threads than
# bound cores make every kernel wait for the scheduler (10x slower on 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine

ENGINE = {"enforce_eager": True, "dtype": "float32", "seed": 0}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the bench tests last: the CLI builds its own engine and closes it, which tears down
    vLLM's process-wide parallel state that the session's engines still use."""
    items.sort(key=lambda item: item.path.name == "test_vllm_bench.py")


@dataclass
class Pair:
    """A vLLM backend and the transformers backend (and model) over the same weights."""

    vllm: Any
    reference: Any
    model: Any


@pytest.fixture(scope="session")
def embedded() -> Iterator[Pair]:
    """The embedded SmolLM2-135M-Instruct, loaded by vLLM from its de-quantized folder."""
    from power_sampling.backends import TransformersBackend, VLLMBackend
    from power_sampling.backends.models import default_model_dir, load_default_pretrained

    model, tokenizer = load_default_pretrained()
    backend = VLLMBackend.from_pretrained(str(default_model_dir()), max_model_len=1024, **ENGINE)
    yield Pair(backend, TransformersBackend.from_transformers(model, tokenizer), model)


def _table_engine(folder: Path, mode: str, constraints: bool = True) -> Any:
    """A token-id engine over the table model; ``constraints`` registers the constraint's
    logits processor (as ``VLLMBackend.from_pretrained`` does)."""
    from vllm import LLM

    from power_sampling.backends.vllm.constraints import PROCESSOR_NAME

    return LLM(
        str(folder),
        skip_tokenizer_init=True,
        logprobs_mode=mode,
        max_logprobs=8,
        max_model_len=16,
        logits_processors=[PROCESSOR_NAME] if constraints else None,
        **ENGINE,
    )


@pytest.fixture(scope="session")
def table_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from power_sampling.testing import tiny_table_model

    model = tiny_table_model(5, seed=0, head_dim=32)
    folder = tmp_path_factory.mktemp("table")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="session")
def table(table_folder: tuple[Path, Any]) -> Pair:
    """A five-token table model in a processed-log-probs engine (exact proposal log-probs)."""
    from power_sampling.backends import TransformersBackend, VLLMBackend

    folder, model = table_folder
    backend = VLLMBackend.from_vllm(_table_engine(folder, "processed_logprobs"))
    return Pair(backend, TransformersBackend.from_transformers(model), model)


@pytest.fixture(scope="session")
def raw_table(table_folder: tuple[Path, Any]) -> Pair:
    """The same table model in a raw-log-probs engine (vLLM's default mode)."""
    from power_sampling.backends import TransformersBackend, VLLMBackend

    folder, model = table_folder
    backend = VLLMBackend.from_vllm(_table_engine(folder, "raw_logprobs"))
    return Pair(backend, TransformersBackend.from_transformers(model), model)


@pytest.fixture(scope="session")
def bare_table(table_folder: tuple[Path, Any]) -> Any:
    """The table model in an engine built without the constraint's logits processor."""
    from power_sampling.backends import VLLMBackend

    return VLLMBackend.from_vllm(_table_engine(table_folder[0], "processed_logprobs", False))


@pytest.fixture(scope="session")
def async_embedded() -> Iterator[Any]:
    """The embedded model on vLLM's async engine (its engine core in a process of its own)."""
    from power_sampling.backends import AsyncVLLMBackend
    from power_sampling.backends.models import default_model_dir

    backend = AsyncVLLMBackend.from_pretrained(
        str(default_model_dir()), max_model_len=1024, **ENGINE
    )
    yield backend
    backend.close()
