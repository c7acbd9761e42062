"""Loading a Hugging Face causal LM and its tokenizer for :class:`~.backend.TransformersBackend`."""

from __future__ import annotations

from typing import Any

import torch


def load_pretrained(
    name_or_path: str,
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    trust_remote_code: bool,
    revision: str | None,
    **model_kwargs: Any,
) -> tuple[Any, Any]:
    """The model and tokenizer of a hub id (where the hub is reachable) or a local folder.

    ``device`` defaults to CUDA when available, else the CPU; ``dtype`` to bfloat16 on a GPU that
    supports it, else float32. ``model_kwargs`` go to ``AutoModelForCausalLM``. A model that
    cannot be loaded is an OSError that names the local-folder way round a missing hub.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    if dtype is None:
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model_kwargs.setdefault("device_map", str(device or ("cuda" if cuda else "cpu")))
    common = {"trust_remote_code": trust_remote_code, "revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **common)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, **common, **model_kwargs
        )
    except (OSError, ValueError) as error:
        raise OSError(
            f"could not load the model {name_or_path!r}: {error}. Without access to the "
            "Hugging Face hub, pass the path of a local folder that holds the model."
        ) from error
    return model, tokenizer
