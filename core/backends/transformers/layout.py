"""A model's attention layout, as the transformers backend needs it: which cache layers it has,
and the attention masks of its sliding-window layers.

The backend pads rows and leaves masked holes in them (see :mod:`.kv_rows`), which only
key/value attention caches allow: a padded or held-out column is masked away. A recurrent or
convolution state (Mamba, linear attention, LFM2's short convolutions) would instead be advanced
by every padding column, so such models are refused when the backend is built
(:func:`check_layers`).

Transformers counts a sliding window in cache columns; with holes in a row, a window of columns
holds fewer than ``sliding_window`` real tokens. :class:`WindowMasks` builds the masks in
positions instead (real tokens counted, as the backend's position ids are), for eager and SDPA
attention.
"""

from __future__ import annotations

from typing import Any

import torch

ATTENTION_LAYERS = frozenset({"full_attention", "sliding_attention"})
"""Cache layer types made of keys and values only, which rows can pad and share."""
MASKED_ATTENTION = frozenset({"eager", "sdpa"})
"""Attention implementations that take a 4D mask, as sliding windows counted in positions need."""


def layer_types(model: Any) -> list[str]:
    """The cache layer type of each decoder layer, as transformers derives it from the config."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    config = model.config.get_text_config(decoder=True)
    types, _ = get_layer_types_and_kwargs(config)
    return list(types)


def check_layers(model: Any, cache_arg: str | None) -> None:
    """Refuse a model whose cache is not keys and values alone, naming it and the way round."""
    config = model.config.get_text_config(decoder=True)
    name = f"{type(model).__name__} (model_type {config.model_type!r})"
    if cache_arg is None:
        raise ValueError(
            f"TransformersBackend cannot run {name}: its forward takes no KV cache (neither "
            "`cache` nor `past_key_values`); use the vLLM backend (VLLMBackend) for it"
        )
    other = sorted(set(layer_types(model)) - ATTENTION_LAYERS)
    if other:
        raise ValueError(
            f"TransformersBackend cannot run {name}: its layers keep {', '.join(other)} state "
            "(recurrent or convolution state, not keys and values), which the backend's padded "
            "and shared cache rows would corrupt; run it with the vLLM backend (VLLMBackend), "
            "or pick an attention-only model"
        )


class WindowMasks:
    """4D attention masks for a model with sliding-window layers, the window counted in real
    tokens: what transformers would build for each row alone, without the padding."""

    def __init__(self, model: Any, types: list[str]) -> None:
        config = model.config.get_text_config(decoder=True)
        implementation = config._attn_implementation
        if implementation not in MASKED_ATTENTION:
            raise ValueError(
                f"TransformersBackend cannot run {type(model).__name__} with "
                f"attn_implementation={implementation!r}: its sliding-window layers need a 4D "
                "attention mask; load it with attn_implementation='sdpa' or 'eager'"
            )
        self.window = int(config.sliding_window)
        self.types = sorted(set(types))
        self.eager = implementation == "eager"
        self.dtype = model.get_input_embeddings().weight.dtype

    def __call__(self, mask: torch.Tensor, queries: int) -> torch.Tensor | dict[str, torch.Tensor]:
        """The masks of the last ``queries`` columns of rows with ``mask`` (1 on real columns):
        one tensor when every layer is of one type, else one per layer type."""
        position = mask.cumsum(1) - 1
        key = position[:, None, :]
        query = position[:, -queries:, None]
        columns = torch.arange(mask.shape[1], device=mask.device)
        # A padding query attends to its own column, so no row of the mask is empty (NaN).
        own = columns[None, None, :] == columns[-queries:, None]
        causal = (mask.bool()[:, None, :] & (key <= query)) | own
        masks = {
            "full_attention": causal,
            "sliding_attention": (causal & (key > query - self.window)) | own,
        }
        out = {kind: self._format(masks[kind][:, None]) for kind in self.types}
        return out[self.types[0]] if len(out) == 1 else out

    def _format(self, allowed: torch.Tensor) -> torch.Tensor:
        """SDPA takes the boolean mask; eager attention adds 0 or the dtype's minimum."""
        if not self.eager:
            return allowed
        zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(self.dtype).min)
