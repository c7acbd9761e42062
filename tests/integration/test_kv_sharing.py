"""Rows that continue one prefix share its KV cache: the cache grows with the prompt once, not
once per row. Counted exactly, as the distinct tensor storage the rows' caches hold."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from power_sampling.backends import TransformersBackend  # noqa: E402
from power_sampling.testing import tiny_chat_model  # noqa: E402


def _cache_bytes(backend: TransformersBackend, latest: bool = False) -> int:
    """Bytes of distinct storage held by the kept rows' caches (the latest kept batch's only,
    with ``latest``)."""
    seen: dict[int, int] = {}
    for kept in backend._kept.batches[-1:] if latest else backend._kept.batches:
        layers: list[Any] = list(kept.rows.cache.layers)
        for layer in layers:
            tensors = [layer.keys, layer.values]
            for segment in getattr(layer, "segments", []):
                tensors += [segment.keys, segment.values]
            for t in tensors:
                if t.numel():
                    storage = t.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _per_token(model: Any) -> int:
    """Bytes of keys and values per token over all layers (float32)."""
    config = model.config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * dim * 4


@pytest.mark.parametrize("rows", [1, 16])
def test_sixteen_samples_of_a_long_prompt_hold_one_copy_of_its_cache(rows: int) -> None:
    model, tokenizer = tiny_chat_model(seed=0)
    backend = TransformersBackend.from_transformers(model, tokenizer, stop_token_ids=[])
    per_token = _per_token(model)
    prompt, new = [3 + i % 200 for i in range(600)], 4
    backend.sample([prompt], rows, new, seed=0, keep_cache=True)
    held = _cache_bytes(backend)
    # One prompt's columns, plus each row's own tokens (the last one is run too).
    assert held <= per_token * (len(prompt) + rows * (new + 1)), (held, per_token)
    assert held >= per_token * len(prompt)


def test_kept_candidates_mixed_with_a_fresh_prompt_keep_sharing_the_prompt() -> None:
    """Rows continuing kept candidates and rows of a new prompt in one call (as when requests
    are batched): the kept rows' prompt stays one piece, not one copy per candidate."""
    model, tokenizer = tiny_chat_model(seed=0)
    backend = TransformersBackend.from_transformers(model, tokenizer, stop_token_ids=[])
    per_token = _per_token(model)
    prompt, fresh, new, rows = [3 + i % 200 for i in range(600)], [7] * 200, 4, 8
    first = backend.sample([prompt], 4, new, seed=0, keep_cache=True)
    candidates = [(*prompt, *c.token_ids) for c in first.continuations[0][:3]]
    backend.sample([*candidates, fresh], rows, new, seed=1, keep_cache=True)
    held = _cache_bytes(backend, latest=True)
    # The prompt once and the fresh prompt once (left-padded to the prompt's width), each
    # prefix's own tokens once, and each row's new tokens. Copying the prompt into each of the
    # three candidates' rows would hold 3 x 600 columns more than the prompt alone.
    bound = 2 * len(prompt) + len(candidates) * (new + 1) + rows * 4 * (new + 1)
    assert held <= per_token * bound, (held / per_token, bound)
    assert held >= per_token * (len(prompt) + len(fresh))
