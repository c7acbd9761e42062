"""Rows that continue one prefix share its KV cache: the cache grows with the prompt once, not
once per row. Counted exactly, as the distinct tensor storage the rows' caches hold."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from power_sampling.backends import TransformersBackend  # noqa: E402
from power_sampling.testing import tiny_chat_model  # noqa: E402


def _cache_bytes(backend: TransformersBackend) -> int:
    """Bytes of distinct storage held by the kept rows' caches."""
    seen: dict[int, int] = {}
    for kept in backend._kept.batches:
        layers: list[Any] = list(kept.rows.cache.layers)
        for layer in layers:
            tensors = [layer.keys, layer.values]
            tensors += [getattr(layer, n, None) for n in ("prefix_keys", "prefix_values")]
            for t in tensors:
                if t is not None and t.numel():
                    storage = t.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("rows", [1, 16])
def test_sixteen_samples_of_a_long_prompt_hold_one_copy_of_its_cache(rows: int) -> None:
    model, tokenizer = tiny_chat_model(seed=0)
    backend = TransformersBackend.from_transformers(model, tokenizer, stop_token_ids=[])
    config = model.config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * heads * dim * 4  # keys + values, float32
    prompt, new = [3 + i % 200 for i in range(600)], 4
    backend.sample([prompt], rows, new, seed=0, keep_cache=True)
    held = _cache_bytes(backend)
    # One prompt's columns, plus each row's own tokens (the last one is run too).
    assert held <= per_token * (len(prompt) + rows * (new + 1)), (held, per_token)
    assert held >= per_token * len(prompt)
