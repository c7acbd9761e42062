"""Randomly initialised models from configs written in code: ``random:<architecture>``.

Speed depends on a model's shape, not on its weights, so a model built from a config in code
measures the cost of a 7B model on any CUDA machine with nothing to download (no weights, no
tokenizer). The backend is token-ids only: prompts are token ids (``power-sampling bench`` makes
its own). Weights come from transformers' initialisation under a fixed seed, so the same name
gives the same model; its text is meaningless and its end tokens arrive at random (use
:class:`~power_sampling.backends.IgnoreEOS` to run every method to full length).

Architectures (:data:`ARCHITECTURES`): ``tiny`` (a 1-layer Qwen2 whose step costs little more
than the framework's overhead per call, so a CPU measures the critical path), ``qwen2.5-0.5b``,
``qwen2.5-1.5b`` and ``qwen2.5-7b`` (the shapes of those Qwen2.5 models). Defaults: CUDA when
available, else the CPU; bfloat16 on a GPU that supports it, else float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .transformers.backend import TransformersBackend

PREFIX = "random:"

_QWEN25 = dict(
    hidden_act="silu",
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    bos_token_id=151643,
    eos_token_id=151643,
    vocab_size=151936,
)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=0,
        tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        _QWEN25,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        _QWEN25,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        _QWEN25,
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}
"""Qwen2 configs by name; the Qwen2.5 shapes follow the published model configs."""


def is_random(name: object) -> bool:
    """Whether ``name`` asks for a randomly initialised model (``random:<architecture>``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def random_backend(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    seed: int = 0,
    **backend_kwargs: Any,
) -> TransformersBackend:
    """A token-ids :class:`TransformersBackend` over a randomly initialised ``random:<arch>``.

    Raises ValueError for an unknown architecture, naming the known ones.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from .transformers.backend import TransformersBackend

    arch = name.removeprefix(PREFIX)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown random model {name!r}; use one of "
            f"{', '.join(PREFIX + a for a in ARCHITECTURES)}"
        )
    place = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        cuda = place.type == "cuda"
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype={dtype!r} is invalid: use e.g. float32 or bfloat16")
    config = Qwen2Config(**ARCHITECTURES[arch])
    devices = [place] if place.type == "cuda" else []
    # Built on the target device in the target dtype (a 7B model never exists in float32 on
    # the host); the seed fixes the weights without touching the caller's random state.
    with torch.random.fork_rng(devices=devices), torch.device(place):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id
    )
    return TransformersBackend.from_transformers(model, name=name, **backend_kwargs)
