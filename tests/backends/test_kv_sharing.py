"""Rows that continue one prefix share its KV cache: the cache grows with the prompt once, not
once per row. Counted exactly, as the distinct tensor storage the rows' caches hold."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from power_sampling import PowerSampler  # noqa: E402
from power_sampling.backends import TransformersBackend  # noqa: E402
from power_sampling.backends.transformers.kv_shared import MAX_SEGMENTS  # noqa: E402
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


@pytest.mark.parametrize("rows", [1, 6])
def test_whole_row_buffers_sample_exactly_what_assembled_rows_do(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding into a growing buffer (the default for small layers, grown here several times:
    a 20-token prompt, 150 new tokens) draws the same tokens with the same log-probs as
    assembling the whole rows afresh at every step (WHOLE_ROWS_BYTES = 0)."""
    from power_sampling.backends.base import StopCondition
    from power_sampling.backends.random_models import random_backend
    from power_sampling.backends.transformers import kv_shared

    prompts = [[3 + i % 50 for i in range(20)], [7 + i % 30 for i in range(9)]]
    never = StopCondition()  # every row runs its whole budget

    def draw() -> tuple[list[Any], int]:
        backend = random_backend("random:tiny", device="cpu")
        first = backend.sample(prompts, rows, 150, seed=3, keep_cache=True, stop=never)
        # Continue from the kept rows: their layers are selected, then grow their own buffers.
        extend = [prompts[0] + list(first.continuations[0][0].token_ids)]
        second = backend.sample(extend, rows, 40, seed=4, temperature=0.7, stop=never)
        return first.continuations + second.continuations, first.forward_tokens

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 1-layer model's steps are too small to share out
    try:
        buffered, forward = draw()
        monkeypatch.setattr(kv_shared, "WHOLE_ROWS_BYTES", 0)
        assembled, forward_assembled = draw()
    finally:
        torch.set_num_threads(threads)
    assert forward == forward_assembled
    pairs = zip(
        (c for row in buffered for c in row), (c for row in assembled for c in row), strict=True
    )
    for mine, theirs in pairs:
        assert len(mine.token_ids) in (150, 40)
        assert mine.token_ids == theirs.token_ids
        assert mine.token_logprobs == pytest.approx(theirs.token_logprobs, abs=1e-5)
        assert mine.proposal_logprobs == pytest.approx(theirs.proposal_logprobs, abs=1e-5)


def test_a_whole_row_buffer_grows_keeping_its_rows() -> None:
    """SharedLayer's buffer holds the shared columns then the own ones; growth past its capacity
    copies them; past WHOLE_ROWS_BYTES it is dropped and the rows are assembled per step, same
    values. Compacted (as kept rows are), the own columns no longer hold the buffer."""
    from power_sampling.backends.transformers import kv_shared

    gen = torch.Generator().manual_seed(0)
    prefix = torch.randn(1, 2, 5, 4, generator=gen)
    layer = kv_shared.SharedLayer.of(prefix, prefix * 2, torch.zeros(3, dtype=torch.long))
    steps = [torch.randn(3, 2, 1 + i % 3, 4, generator=gen) for i in range(100)]
    buffers = set()
    saved = kv_shared.WHOLE_ROWS_BYTES
    try:
        for i, new in enumerate(steps):
            if i == 50:  # from here on, too large to keep whole (dropped at its next growth)
                kv_shared.WHOLE_ROWS_BYTES = 0
            keys, values = layer.update(new, new * 2)
            expected = torch.cat([prefix.expand(3, -1, -1, -1), *steps[: i + 1]], dim=2)
            assert torch.equal(keys, expected)
            assert torch.equal(values, expected * 2)
            assert layer.get_seq_length() == expected.shape[2]
            if layer._buffer is not None:
                buffers.add(layer._buffer[0].data_ptr())
    finally:
        kv_shared.WHOLE_ROWS_BYTES = saved
    assert len(buffers) >= 2  # it grew at least once while allowed
    assert layer._buffer is None
    assert torch.equal(layer.full()[0], expected)
    layer.update(steps[0], steps[0] * 2)  # a buffer again
    assert layer._buffer is not None
    own = layer.compact().own_keys
    assert layer._buffer is None
    assert own.untyped_storage().nbytes() == own.numel() * own.element_size()
    assert torch.equal(own[:, :, -1:], steps[0][:, :, -1:])


def test_a_long_chain_of_shared_blocks_gives_the_model_log_probs() -> None:
    """Eight blocks of power sampling: every call shares its rows' caches again, and beyond
    three segments the last two merge; the chosen tokens' log-probs still equal a plain
    forward pass over the whole sequence."""
    model, tokenizer = tiny_chat_model(seed=1)
    backend = TransformersBackend.from_transformers(model, tokenizer, stop_token_ids=[])
    sampler = PowerSampler(
        backend,
        block_size=3,
        rollout_length=3,
        num_candidates=4,
        top_k=2,
        num_rollouts=2,
        max_new_tokens=24,
    )
    prompt = [3 + i % 50 for i in range(40)]
    out = sampler.generate(prompt, seed=0)
    assert len(out.token_ids) == 24
    layers: list[Any] = list(backend._kept.batches[-1].rows.cache.layers)
    assert all(len(layer.segments) <= MAX_SEGMENTS for layer in layers)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + list(out.token_ids)])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    expected = logp[torch.arange(len(out.token_ids)), torch.tensor(out.token_ids)].sum()
    assert abs(out.logprob - float(expected)) < 1e-3


def test_the_layers_of_a_cache_share_one_buffer_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """WHOLE_ROWS_BYTES bounds a cache's buffers together: a layer that would get a buffer alone
    gets none when the budget is split over two layers (a deep model's small calls stay within
    the memory bound of the shared cache)."""
    from power_sampling.backends.transformers import kv_shared

    prefix = torch.ones(1, 2, 5, 4)
    per_column = 2 * 3 * 2 * 4 * 4  # keys and values of 3 rows, 2 heads, head dim 4, float32
    monkeypatch.setattr(kv_shared, "WHOLE_ROWS_BYTES", 8 * per_column)  # 6 columns are needed

    def layer() -> Any:
        return kv_shared.SharedLayer.of(prefix, prefix, torch.zeros(3, dtype=torch.long))

    alone, pair = layer(), [layer(), layer()]
    kv_shared.budget(pair)
    new = torch.zeros(3, 2, 1, 4)
    for each in [alone, *pair]:
        keys, _ = each.update(new, new)
        assert keys.shape[2] == 6
    assert alone._buffer is not None
    assert all(each._buffer is None for each in pair)
