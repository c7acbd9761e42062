"""The architecture matrix: every model family, built tiny and random in-process, through
TransformersBackend in float32 and bfloat16 with eager and SDPA attention.

A cell is exact when top-k log-probs, sampled continuations' per-token log-probs (base and
proposal), kept rows continued by a second call (extended by different numbers of tokens, next
to a fresh prompt, so the padded rows have holes and shared prefixes) and top-k of those rows all
agree with one plain forward pass of the whole sequence, within :data:`TOLERANCE`. Sequences run
well past the sliding windows (4 tokens). Models whose cache holds recurrent or convolution state
are refused when the backend is built, with an error naming the architecture and the vLLM
backend. docs/architectures.md holds the table of this matrix; the last test checks it, and
``python tests/backends/test_architectures.py`` rewrites it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from power_sampling.backends import TransformersBackend  # noqa: E402

EXACT, REFUSED, NO_IMPL = "exact", "refused", "n/a"
CELLS = [("float32", "eager"), ("float32", "sdpa"), ("bfloat16", "eager"), ("bfloat16", "sdpa")]
ULPS = {
    # Both runs accumulate float32 rounding over the layers in different orders (padding,
    # batch shapes, cache layout): measured up to 9 units in the last place of the logits.
    "float32": 16,
    # Each run rounds its logits to bfloat16: measured up to 2 units in the last place.
    "bfloat16": 4,
}
"""Tolerated log-prob error, in units in the last place of the largest logit (see
:func:`tolerance`)."""
DOC = Path(__file__).resolve().parents[2] / "docs" / "architectures.md"

_TINY = dict(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=None,  # nothing ends early: every row is kept and continued
    tie_word_embeddings=False,
)
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
_WINDOW = dict(sliding_window=4, head_dim=8)


@dataclass(frozen=True)
class Family:
    title: str
    config: str
    model: str
    kwargs: dict[str, Any]
    no_sdpa: bool = False
    """Transformers has no SDPA attention for it (it refuses attn_implementation='sdpa')."""
    refused: str = ""
    """The reason TransformersBackend refuses it, if it does: a phrase of its error."""
    note: str = field(default="", compare=False)


FAMILIES: dict[str, Family] = {
    f.title: f
    for f in [
        Family("Llama", "LlamaConfig", "LlamaForCausalLM", _TINY),
        Family("Qwen2", "Qwen2Config", "Qwen2ForCausalLM", _TINY),
        Family(
            "Qwen2 (sliding window)",
            "Qwen2Config",
            "Qwen2ForCausalLM",
            dict(_TINY, use_sliding_window=True, sliding_window=4, max_window_layers=1),
            note="full then sliding layer",
        ),
        Family("Qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(_TINY, head_dim=8)),
        Family(
            "Mistral",
            "MistralConfig",
            "MistralForCausalLM",
            dict(_TINY, **_WINDOW),
            note="sliding window 4 on every layer",
        ),
        Family(
            "Gemma 2",
            "Gemma2Config",
            "Gemma2ForCausalLM",
            dict(
                _TINY,
                **_WINDOW,
                query_pre_attn_scalar=8,
                attn_logit_softcapping=2.0,
                final_logit_softcapping=3.0,
            ),
            no_sdpa=True,
            note="sliding and full layers, attention and final soft-capping",
        ),
        Family(
            "Gemma 3 (text)",
            "Gemma3TextConfig",
            "Gemma3ForCausalLM",
            dict(
                _TINY,
                **_WINDOW,
                query_pre_attn_scalar=8,
                layer_types=["sliding_attention", "full_attention"],
                final_logit_softcapping=3.0,
            ),
            note="sliding and full layers, final soft-capping",
        ),
        Family("Phi-3", "Phi3Config", "Phi3ForCausalLM", _TINY),
        Family(
            "GPT-2",
            "GPT2Config",
            "GPT2LMHeadModel",
            dict(
                vocab_size=256,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=128,
                bos_token_id=None,
                eos_token_id=None,
            ),
            note="learned positions",
        ),
        Family("GPT-NeoX", "GPTNeoXConfig", "GPTNeoXForCausalLM", _TINY),
        Family("OLMo 2", "Olmo2Config", "Olmo2ForCausalLM", _TINY),
        Family(
            "Granite",
            "GraniteConfig",
            "GraniteForCausalLM",
            dict(
                _TINY,
                embedding_multiplier=2.0,
                logits_scaling=0.5,
                residual_multiplier=0.5,
                attention_multiplier=0.3,
            ),
            note="embedding, residual, attention and logit multipliers",
        ),
        Family(
            "Qwen2-MoE",
            "Qwen2MoeConfig",
            "Qwen2MoeForCausalLM",
            dict(_TINY, **_MOE, shared_expert_intermediate_size=32),
            note="4 experts, 2 per token, shared expert",
        ),
        Family(
            "Mixtral",
            "MixtralConfig",
            "MixtralForCausalLM",
            dict(_TINY, num_local_experts=4, num_experts_per_tok=2),
            note="4 experts, 2 per token",
        ),
        Family(
            "GPT-OSS",
            "GptOssConfig",
            "GptOssForCausalLM",
            dict(
                _TINY,
                **_WINDOW,
                layer_types=["sliding_attention", "full_attention"],
                num_local_experts=4,
                num_experts_per_tok=2,
            ),
            no_sdpa=True,
            note="sliding and full layers, attention sinks, 4 experts",
        ),
        Family(
            "LFM2",
            "Lfm2Config",
            "Lfm2ForCausalLM",
            dict(_TINY, layer_types=["conv", "full_attention"]),
            refused="conv state",
            note="short-convolution and attention layers",
        ),
        Family(
            "Mamba",
            "MambaConfig",
            "MambaForCausalLM",
            dict(vocab_size=256, hidden_size=32, state_size=8, num_hidden_layers=2),
            no_sdpa=True,
            refused="linear_attention state",
        ),
        Family(
            "Qwen3-Next",
            "Qwen3NextConfig",
            "Qwen3NextForCausalLM",
            dict(
                _TINY,
                **_MOE,
                head_dim=8,
                layer_types=["linear_attention", "full_attention"],
                linear_num_key_heads=2,
                linear_num_value_heads=4,
                linear_key_head_dim=8,
                linear_value_head_dim=8,
                shared_expert_intermediate_size=32,
            ),
            refused="linear_attention state",
            note="gated delta-net and attention layers",
        ),
        Family(
            "Jamba",
            "JambaConfig",
            "JambaForCausalLM",
            dict(
                _TINY,
                num_experts=2,
                num_experts_per_tok=1,
                attn_layer_period=2,
                attn_layer_offset=1,
                expert_layer_period=2,
                expert_layer_offset=1,
                mamba_d_state=8,
                mamba_dt_rank=4,
            ),
            refused="linear_attention state",
            note="Mamba and attention layers",
        ),
        Family(
            "Falcon-H1",
            "FalconH1Config",
            "FalconH1ForCausalLM",
            dict(
                _TINY,
                head_dim=8,
                mamba_d_ssm=32,
                mamba_n_heads=4,
                mamba_d_head=8,
                mamba_n_groups=1,
                mamba_d_state=8,
                mamba_chunk_size=16,
            ),
            refused="hybrid state",
            note="Mamba-2 and attention in every layer",
        ),
        Family(
            "RWKV",
            "RwkvConfig",
            "RwkvForCausalLM",
            dict(
                vocab_size=256,
                hidden_size=32,
                num_hidden_layers=2,
                attention_hidden_size=32,
                intermediate_size=64,
                context_length=128,
            ),
            no_sdpa=True,
            refused="takes no KV cache",
        ),
    ]
}


def expected(family: Family, attention: str) -> str:
    if attention == "sdpa" and family.no_sdpa:
        return NO_IMPL
    return REFUSED if family.refused else EXACT


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and far faster than on contended threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(family: Family, dtype: str, attention: str) -> Any:
    """The family's tiny model with random weights that depend on nothing but the seed: every
    matrix N(0, 1/fan_in), so each layer keeps its input's scale; norms and biases as
    transformers initialises them. The global torch RNG is left as it was."""
    config = getattr(transformers, family.config)(**family.kwargs)
    config._attn_implementation = attention
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, family.model)(config)
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim >= 2:
                    param.normal_(0.0, param.shape[-1] ** -0.5)
    return model.to(getattr(torch, dtype)).eval()


def reference(model: Any, sequence: Sequence[int], temperature: float = 1.0) -> Any:
    """Next-token log-probs after every position of ``sequence``: one forward, no cache."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(sequence)])).logits[0].float()
    return torch.log_softmax(logits / temperature, -1)


def top_k_error(model: Any, prefixes: Sequence[Sequence[int]], out: Any) -> float:
    """Largest gap between the backend's top-k and the reference's, in values and in the
    reference log-prob of each token the backend ranked (ties may order tokens either way)."""
    worst = 0.0
    for prefix, entry in zip(prefixes, out.entries, strict=True):
        want = reference(model, prefix)[-1]
        got = torch.tensor(entry.logprobs)
        best = want.topk(len(entry.token_ids)).values
        worst = max(worst, (got - want[list(entry.token_ids)]).abs().max().item())
        worst = max(worst, (got - best).abs().max().item())
    return worst


def sample_error(model: Any, prefixes: Sequence[Sequence[int]], out: Any, temperature: float):
    """Largest gap between the continuations' base and proposal log-probs and the reference's."""
    worst = 0.0
    for prefix, row in zip(prefixes, out.continuations, strict=True):
        for c in row:
            sequence, at = [*prefix, *c.token_ids], len(prefix) - 1
            for got, temp in ((c.token_logprobs, 1.0), (c.proposal_logprobs, temperature)):
                want = reference(model, sequence, temp)
                for j, token in enumerate(c.token_ids):
                    worst = max(worst, abs(got[j] - want[at + j, token].item()))
    return worst


def tolerance(model: Any, dtype: str) -> float:
    """``ULPS[dtype]`` units in the last place of the model's largest logits (on one probe
    sequence): a log-prob is a logit less a log-sum-exp of logits of that size."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(range(3, 30))])).logits.float()
    return (
        ULPS[dtype] * torch.finfo(getattr(torch, dtype)).eps * max(1.0, logits.abs().max().item())
    )


def matrix_error(model: Any) -> float:
    """The largest log-prob error over a chain of calls that keeps and continues rows."""
    backend = TransformersBackend.from_transformers(model)
    prefixes = [tuple(range(3, 12)), (5, 6, 7)]
    worst = top_k_error(model, prefixes, backend.top_k(prefixes, 5, keep_cache=True))
    first = backend.sample(prefixes, 3, 6, seed=0, keep_cache=True)
    worst = max(worst, sample_error(model, prefixes, first, 1.0))
    grown = [
        (*p, *c.token_ids)
        for p, row in zip(prefixes, first.continuations, strict=True)
        for c in row
    ]
    assert len(grown) == 6 and all(len(s) > 8 for s in grown)
    # Kept rows as they are and extended by 1 and 3 tokens, next to a fresh prompt.
    again = [grown[0], (*grown[1], 9), (*grown[3], 9, 10, 11), (20, 21), grown[4]]
    second = backend.sample(again, 2, 7, seed=1, temperature=0.5, keep_cache=True)
    worst = max(worst, sample_error(model, again, second, 0.5))
    assert second.forward_tokens <= 1 + 3 + 2 + len(again) * 2 * 7  # the kept rows were used
    rows = [
        (*p, *c.token_ids) for p, row in zip(again, second.continuations, strict=True) for c in row
    ]
    last = [rows[0], rows[3], rows[5], (*rows[8], 4)]
    return max(worst, top_k_error(model, last, backend.top_k(last, 5)))


@pytest.mark.parametrize(("dtype", "attention"), CELLS)
@pytest.mark.parametrize("title", list(FAMILIES))
def test_architecture_matrix(title: str, dtype: str, attention: str) -> None:
    family = FAMILIES[title]
    outcome = expected(family, attention)
    if outcome == NO_IMPL:  # transformers itself refuses; the table says so
        with pytest.raises(ValueError, match="does not support an attention implementation"):
            build(family, dtype, attention)
        return
    model = build(family, dtype, attention)
    if outcome == REFUSED:
        with pytest.raises(ValueError) as refusal:
            TransformersBackend.from_transformers(model)
        message = str(refusal.value)
        assert family.model in message and repr(model.config.model_type) in message
        assert family.refused in message and "VLLMBackend" in message
        return
    error = matrix_error(model)
    assert error <= tolerance(model, dtype), (title, dtype, attention, error)


def test_a_model_is_refused_before_any_cache_is_built() -> None:
    """The refusal comes from the constructor, not from a forward pass mid-call: the model
    never runs (a bare IndexError from transformers' cache was the old failure)."""
    model = build(FAMILIES["Mamba"], "float32", "eager")
    calls: list[object] = []
    model.register_forward_pre_hook(lambda *args: calls.append(args))
    with pytest.raises(ValueError, match=r"MambaForCausalLM.*VLLMBackend"):
        TransformersBackend(model)
    assert calls == []


def test_sliding_window_models_refuse_attention_without_4d_masks() -> None:
    model = build(FAMILIES["Mistral"], "float32", "eager")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"MistralForCausalLM.*attn_implementation=.sdpa."):
        TransformersBackend(model)


# -- the table in the docs --------------------------------------------------------------------


def _cell(family: Family, attention: str) -> str:
    outcome = expected(family, attention)
    if outcome == NO_IMPL:
        return "n/a (no SDPA in transformers)"
    return f"refused ({family.refused})" if outcome == REFUSED else "exact"


def table() -> str:
    """The matrix as a markdown table, one row per family."""
    head = ["Family", "Model class", *(f"{d} {a}" for d, a in CELLS), "Notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for family in FAMILIES.values():
        cells = [_cell(family, a) for _, a in CELLS]
        lines.append(
            f"| {family.title} | `{family.model}` | " + " | ".join(cells) + f" | {family.note} |"
        )
    return "\n".join(lines)


_SECTION = re.compile(r"(<!-- matrix -->\n)(.*?)(<!-- /matrix -->)", re.S)


def test_the_docs_table_is_the_matrix() -> None:
    found = _SECTION.search(DOC.read_text())
    assert found is not None, f"{DOC} lost its <!-- matrix --> section"
    assert found.group(2) == table() + "\n", (
        "docs/architectures.md differs from the matrix: run "
        "`python tests/backends/test_architectures.py` to rewrite its table"
    )


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(_SECTION.sub(lambda m: m.group(1) + table() + "\n" + m.group(3), text))
