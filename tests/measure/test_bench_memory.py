"""The bench's peak memory against prompt length, on an in-process model whose KV cache is large
enough per token (16 KiB) to stand out of the process's memory noise."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from power_sampling import PowerSampler  # noqa: E402
from power_sampling.backends import TransformersBackend  # noqa: E402
from power_sampling.cli.bench import parse_lengths  # noqa: E402
from power_sampling.cli.common import UsageError  # noqa: E402
from power_sampling.measure.memory import (  # noqa: E402
    kv_bytes_per_token,
    memory_by_prompt_length,
    memory_markdown,
    peak_growth,
    slope,
)

FAST = dict(
    block_size=4,
    rollout_length=4,
    num_candidates=4,
    top_k=2,
    num_rollouts=2,
    max_new_tokens=8,
)
LAYERS, HEADS, HEAD_DIM = 4, 8, 64


def wide_kv_backend() -> TransformersBackend:
    """A random 4-layer Llama with 8 key/value heads of 64 dims: 16 KiB of KV per token."""
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=HEADS * HEAD_DIM,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=2048,
        eos_token_id=0,
        bos_token_id=None,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config).float().eval()
    return TransformersBackend.from_transformers(model)


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    return wide_kv_backend()


def test_kv_bytes_per_token_comes_from_the_model_config(backend: TransformersBackend) -> None:
    assert kv_bytes_per_token(backend) == 2 * LAYERS * HEADS * HEAD_DIM * 4
    assert kv_bytes_per_token(object()) is None


def test_peak_growth_sees_a_temporary_allocation() -> None:
    size = 64 * 2**20

    def allocate() -> int:
        block = torch.ones(size // 4)  # written, so resident
        return int(block.numel())

    result, grown = peak_growth(allocate)
    assert result == size // 4
    assert grown >= 0.9 * size  # freed before the reading: only a peak measure sees it


def test_slope_is_least_squares() -> None:
    assert slope([1, 2, 3], [2, 4, 6]) == pytest.approx(2.0)
    assert slope([5, 5], [1, 2]) is None


def test_memory_grows_with_the_prompt_by_at_least_its_kv_cache(
    backend: TransformersBackend,
) -> None:
    per_token = kv_bytes_per_token(backend)
    assert per_token is not None
    sampler = PowerSampler(backend, **FAST)
    lengths = [32, 512]
    report = memory_by_prompt_length(
        sampler, lengths, methods=("standard", "power"), ignore_eos=True
    )
    assert report["kv_bytes_per_token"] == per_token
    for method in ("standard", "power"):
        rows = report["methods"][method]
        assert [r["prompt_tokens"] for r in rows] == lengths
        assert all(r["completion_tokens"] == FAST["max_new_tokens"] for r in rows)
        # The prompt's cache is resident while the generation runs: at least one copy of it.
        assert rows[1]["peak_memory_mb"] * 2**20 >= 0.9 * per_token * lengths[1]
        assert rows[1]["peak_memory_mb"] > rows[0]["peak_memory_mb"]
        assert report["bytes_per_prompt_token"][method] > 0
    table = memory_markdown(report)
    assert "| 512 |" in table and "KiB per prompt token" in table


@pytest.mark.parametrize("spec", ["0,256", "256,x", "", "-5"])
def test_bad_prompt_lengths_name_the_flag_and_the_fix(spec: str) -> None:
    with pytest.raises(UsageError, match=r"--prompt-lengths .* use comma-separated token counts"):
        parse_lengths(spec)
    assert parse_lengths("256,1024") == [256, 1024]
