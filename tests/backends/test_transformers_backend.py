"""TransformersBackend on tiny in-process Llamas: the protocol, KV-cache sharing against a plain
full forward pass, batching, stop conditions, and the power sampler's distribution through it.

The reference for every log-prob is ``log_softmax(model(prefix + continuation).logits)`` from one
uncached forward pass of the whole sequence; the backend must match it whatever it reused.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from power_sampling import PowerSampler, PowerSamplingConfig, exact  # noqa: E402
from power_sampling.backends import (  # noqa: E402
    Backend,
    IgnoreEOS,
    StopCondition,
    TextBackend,
    TransformersBackend,
)
from power_sampling.testing import tiny_chat_model, tiny_table_model, tiny_tokenizer  # noqa: E402

TOL = 1e-4
LONG = tuple(range(40, 49))  # 9 tokens
SHORT = (7, 8, 9, 10)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and far faster than on contended threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat() -> tuple[Any, Any]:
    return tiny_chat_model(seed=0)


@pytest.fixture
def backend(chat: tuple[Any, Any]) -> TransformersBackend:
    """A fresh backend (empty cache store) per test over the shared tiny chat model."""
    return TransformersBackend.from_transformers(*chat)


def reference(model: Any, prefix: Sequence[int], tokens: Sequence[int], temperature: float = 1.0):
    """Per-token log-probs of ``tokens`` after ``prefix`` from one uncached forward pass."""
    ids = torch.tensor([[*prefix, *tokens]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits / temperature, -1)
    return [logp[len(prefix) + j - 1, t].item() for j, t in enumerate(tokens)]


def assert_recomputed(model: Any, prefixes, out, temperature: float = 1.0) -> None:
    """Every continuation's base (and proposal) log-probs equal the full-recompute reference."""
    assert len(out.continuations) == len(prefixes)
    for prefix, row in zip(prefixes, out.continuations, strict=True):
        for c in row:
            base = reference(model, prefix, c.token_ids)
            assert np.allclose(c.token_logprobs, base, atol=TOL)
            assert c.logprob == pytest.approx(sum(base), abs=TOL * len(base) + 1e-6)
            proposal = reference(model, prefix, c.token_ids, temperature)
            assert np.allclose(c.proposal_logprobs, proposal, atol=TOL)


def grown(prefixes, out) -> list[tuple[int, ...]]:
    """Prefix + continuation of every unfinished row (what keep_cache keeps)."""
    return [
        tuple(p) + c.token_ids
        for p, row in zip(prefixes, out.continuations, strict=True)
        for c in row
        if not c.finished
    ]


# -- protocol ---------------------------------------------------------------------------------


def test_protocol_properties_and_text(backend: TransformersBackend) -> None:
    assert isinstance(backend, TextBackend) and isinstance(backend, Backend)
    assert backend.vocab_size == 384 and backend.max_context == 1024
    assert backend.stop.token_ids == {0, 2}  # <|endoftext|> and the end-of-turn <|im_end|>
    assert isinstance(backend.name, str) and backend.name
    text = "Let's think step by step."
    ids = backend.encode(text)
    assert isinstance(ids, list) and all(type(t) is int for t in ids)
    assert backend.decode(ids) == text
    chat_ids = backend.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert isinstance(chat_ids, list) and all(type(t) is int for t in chat_ids)
    assert backend.decode(chat_ids).endswith("assistant\n")
    assert chat_ids[:1] == [1]  # <|im_start|>

    out = backend.sample([SHORT, LONG], 3, 4, seed=0)
    assert [len(row) for row in out.continuations] == [3, 3]
    c = out.continuations[0][0]
    assert isinstance(c.logprob, float) and len(c.token_logprobs) == len(c.token_ids) <= 4
    assert all(type(t) is int for t in c.token_ids)
    top = backend.top_k([SHORT], 5)
    assert len(top.entries[0].token_ids) == 5
    assert list(top.entries[0].logprobs) == sorted(top.entries[0].logprobs, reverse=True)


def test_without_a_tokenizer_it_is_a_token_id_backend(chat: tuple[Any, Any]) -> None:
    backend = TransformersBackend.from_transformers(chat[0], stop_token_ids=[5])
    assert isinstance(backend, Backend) and isinstance(backend, TransformersBackend)
    assert not isinstance(backend, TextBackend)  # so samplers never try to decode
    assert backend.stop.token_ids == {0, 2, 5}
    with pytest.raises(AttributeError, match="from_transformers\\(model, tokenizer\\)"):
        backend.decode([5])
    with pytest.raises(AttributeError, match="no tokenizer"):
        backend.encode("x")
    assert not isinstance(TransformersBackend(chat[0]), TextBackend)  # built directly, too
    with pytest.raises(ValueError, match="stop strings"):
        backend.sample([SHORT], 1, 3, seed=0, stop=StopCondition(strings=("x",)))
    gen = PowerSampler(
        backend,
        block_size=2,
        num_candidates=3,
        top_k=2,
        num_rollouts=2,
        rollout_length=2,
        max_new_tokens=4,
    ).generate(list(SHORT), seed=0)
    assert gen.text is None and 0 < len(gen.token_ids) <= 4


def test_stop_ids_come_from_configs_tokenizer_and_end_of_turn_tokens() -> None:
    """With no EOS in the model's configs, the tokenizer's EOS and the end-of-turn token
    found in the vocabulary (``<|im_end|>``) still end continuations."""
    model, tokenizer = tiny_chat_model(seed=1)
    model.generation_config.eos_token_id = model.config.eos_token_id = None
    backend = TransformersBackend.from_transformers(model, tokenizer, stop_token_ids=[7])
    assert backend.stop.token_ids == {tokenizer.eos_token_id, 2, 7}


def test_chat_template_missing_is_a_clear_error(chat: tuple[Any, Any]) -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    backend = TransformersBackend.from_transformers(chat[0], tokenizer)
    with pytest.raises(ValueError, match="chat template"):
        backend.apply_chat_template([{"role": "user", "content": "Hi"}])


# -- log-probs against a full forward pass ----------------------------------------------------


def test_top_k_matches_a_full_forward_and_batching(
    chat: tuple[Any, Any], backend: TransformersBackend
) -> None:
    prefixes = [SHORT, LONG, (3,), LONG[:5]]
    batched = backend.top_k(prefixes, 6)
    for prefix, entry in zip(prefixes, batched.entries, strict=True):
        alone = TransformersBackend.from_transformers(*chat).top_k([prefix], 6).entries[0]
        assert entry.token_ids == alone.token_ids
        assert np.allclose(entry.logprobs, alone.logprobs, atol=TOL)
        with torch.inference_mode():
            logits = chat[0](input_ids=torch.tensor([prefix])).logits[0, -1].float()
        best = torch.log_softmax(logits, -1).topk(6)
        assert list(entry.token_ids) == best.indices.tolist()
        assert np.allclose(entry.logprobs, best.values.tolist(), atol=TOL)
    assert batched.forward_tokens == sum(map(len, prefixes))


def test_cached_chain_equals_full_recompute(chat: tuple[Any, Any]) -> None:
    """A block step, its rollouts, the next step and a token-level step, each reusing the
    previous call's kept rows, give the log-probs of a plain forward pass."""
    model, backend = chat[0], TransformersBackend.from_transformers(*chat)
    prefixes = [LONG, SHORT]
    candidates = backend.sample(prefixes, 4, 6, seed=0, keep_cache=True)
    assert_recomputed(model, prefixes, candidates)

    # Rollouts continue from kept candidate rows: no prefill, and drawn at temperature 0.5.
    kept = grown(prefixes, candidates)[:3]
    rollouts = backend.sample(kept, 3, 5, seed=1, temperature=0.5)
    assert_recomputed(model, kept, rollouts, temperature=0.5)
    assert rollouts.forward_tokens <= len(kept) * 3 * 4  # decode only: 4 forwards per row

    # The next block step starts from a kept row.
    step = backend.sample([kept[0]], 4, 6, seed=2, keep_cache=True)
    assert_recomputed(model, [kept[0]], step)
    assert step.forward_tokens <= 4 * 6

    # Token level: top-k keeps the prefix row; candidates extend it by one token each.
    prefix = kept[1]
    top = backend.top_k([prefix], 3, keep_cache=True)
    assert top.forward_tokens == 0  # kept by the candidate call
    extended = [(*prefix, t) for t in top.entries[0].token_ids]
    token_rollouts = backend.sample(extended, 2, 4, seed=3)
    assert_recomputed(model, extended, token_rollouts)
    assert token_rollouts.forward_tokens <= 3 + 3 * 2 * 3


def test_mixed_fresh_kept_and_extended_prefixes_in_one_batch(chat: tuple[Any, Any]) -> None:
    """Fresh prompts, exact kept rows and kept rows extended by different numbers of tokens
    (holes in the padded cache) in one call; budgets differ per prefix, so kept rows end at
    different steps and are stored padded to one width."""
    model, backend = chat[0], TransformersBackend.from_transformers(*chat)
    first = backend.sample([LONG, SHORT], 2, [3, 6], seed=4, keep_cache=True)
    assert_recomputed(model, [LONG, SHORT], first)
    a, b = grown([LONG, SHORT], first)[0], grown([LONG, SHORT], first)[-1]
    prefixes = [(99, 98, 97), a, (*b, 5), (*a, 5, 6, 7), b]
    out = backend.sample(prefixes, 2, 5, seed=5, temperature=0.5, keep_cache=True)
    assert_recomputed(model, prefixes, out, temperature=0.5)
    assert out.forward_tokens <= 3 + 1 + 3 + 10 * 5  # prefill only the new tokens
    top = backend.top_k(prefixes, 4)
    for prefix, entry in zip(prefixes, top.entries, strict=True):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prefix])).logits[0, -1].float()
        assert np.allclose(entry.logprobs, torch.log_softmax(logits, -1).topk(4).values, atol=TOL)


def test_rows_ending_early_leave_the_batch_and_are_not_kept() -> None:
    """On a table model EOS is frequent: rows end at different steps (the batch compacts),
    finished rows are not kept, and kept ones continue correctly."""
    model = tiny_table_model(5, seed=0)
    backend = TransformersBackend.from_transformers(model)
    out = backend.sample([(1,), (2, 3)], 32, 9, seed=0, keep_cache=True)
    rows = [c for row in out.continuations for c in row]
    assert any(c.finished for c in rows) and any(not c.finished for c in rows)
    assert all(c.token_ids[-1] == 0 for c in rows if c.finished)
    assert all(len(c.token_ids) == 9 for c in rows if not c.finished)
    assert_recomputed(model, [(1,), (2, 3)], out)
    assert out.forward_tokens < 3 + 64 * 9  # ended rows stopped running
    unfinished = grown([(1,), (2, 3)], out)
    again = backend.sample(unfinished, 2, 3, seed=1)
    assert_recomputed(model, unfinished, again)
    assert again.forward_tokens <= len(unfinished) * 2 * 2


# -- stop conditions, budgets, seeds, validation ----------------------------------------------


def test_stop_strings_and_tokens_end_continuations(backend: TransformersBackend) -> None:
    free = backend.sample([SHORT], 1, 40, seed=11, stop=StopCondition()).continuations[0][0]
    tokens = list(free.token_ids)
    assert len(tokens) == 40 and not free.finished
    text = backend.decode(tokens[:12])
    stop = text[-2:]
    end = next(j for j in range(1, 41) if stop in backend.decode(tokens[:j]))
    cut = backend.sample([SHORT], 1, 40, seed=11, stop=StopCondition(strings=(stop,)))
    c = cut.continuations[0][0]
    assert c.finished and list(c.token_ids) == tokens[:end]
    assert stop in backend.decode(c.token_ids) and stop not in backend.decode(c.token_ids[:-1])

    token = tokens[20]
    by_token = backend.sample([SHORT], 1, 40, seed=11, stop=StopCondition(frozenset({token})))
    c = by_token.continuations[0][0]
    assert c.finished and list(c.token_ids) == tokens[: tokens.index(token) + 1]


def test_budget_per_prefix(backend: TransformersBackend) -> None:
    out = backend.sample([SHORT, LONG, SHORT], 2, [2, 5, 0], seed=0, stop=StopCondition())
    assert [[len(c.token_ids) for c in row] for row in out.continuations] == [
        [2, 2],
        [5, 5],
        [0, 0],
    ]
    assert not any(c.finished for row in out.continuations for c in row)
    with pytest.raises(ValueError, match="one per prefix"):
        backend.sample([SHORT, LONG], 1, [2], seed=0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_sequences_follow_the_model_at_the_temperature(temperature: float) -> None:
    """Two-token continuations drawn by ``sample`` against the exact distribution at that
    temperature, and their reported log-probs against the exact base and proposal ones.

    Noise: n draws have E[TV] ≤ ½ Σ_x sqrt(q(x)(1-q(x))/n); 3x that fails a biased sampler
    (one that ignored the temperature is off by > 0.1 here) and passes a correct one.
    """
    backend = TransformersBackend.from_transformers(tiny_table_model(5, seed=1, sharpness=1.5))
    runs = 4000
    exact_seqs = exact.enumerate_completions(backend, (1,), 2, temperature=temperature)
    q = {x: float(np.exp(lq)) for x, (_, lq) in exact_seqs.items()}
    out = backend.sample([(1,)], runs, 2, seed=3, temperature=temperature)
    drawn = out.continuations[0]
    counts = Counter(c.token_ids for c in drawn)
    noise = 3 * 0.5 * sum(np.sqrt(v * (1 - v) / runs) for v in q.values())
    assert exact.total_variation({x: c / runs for x, c in counts.items()}, q) < noise
    for c in drawn[:50]:
        lp, lq = exact_seqs[c.token_ids]
        assert c.logprob == pytest.approx(lp, abs=TOL)
        assert sum(c.proposal_logprobs) == pytest.approx(lq, abs=TOL)


def test_seeds_make_calls_reproducible(backend: TransformersBackend) -> None:
    def draw(seed: int) -> list[tuple[int, ...]]:
        out = backend.sample([SHORT, LONG], 4, 8, seed=seed, keep_cache=True)
        return [c.token_ids for row in out.continuations for c in row]

    assert draw(0) == draw(0)  # the second call reuses kept rows and still matches
    assert draw(0) != draw(1)


def test_bad_input_is_rejected(backend: TransformersBackend) -> None:
    for call in (
        lambda p: backend.sample(p, 1, 3, seed=0),
        lambda p: backend.top_k(p, 3),
    ):
        with pytest.raises(ValueError, match="empty prompt"):
            call([()])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            call([(1, 384)])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            call([(-1,)])
    for bad in (-0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            backend.sample([SHORT], 1, 3, seed=0, temperature=bad)


# -- batching, memory, threads, loading --------------------------------------------------------


def test_max_batch_size_split_gives_the_same_log_probs(chat: tuple[Any, Any]) -> None:
    prefixes = [SHORT, LONG, (3,), LONG[:5], (9, 9)]
    whole = TransformersBackend.from_transformers(*chat).top_k(prefixes, 5)
    small = TransformersBackend.from_transformers(*chat, max_batch_size=2)
    split = small.top_k(prefixes, 5, keep_cache=True)
    for a, b in zip(whole.entries, split.entries, strict=True):
        assert a.token_ids == b.token_ids and np.allclose(a.logprobs, b.logprobs, atol=TOL)
    out = small.sample(prefixes, 3, 4, seed=0, keep_cache=True)
    assert [len(row) for row in out.continuations] == [3] * 5
    assert_recomputed(chat[0], prefixes, out)


def test_out_of_memory_halves_the_chunk_then_names_max_batch_size(
    chat: tuple[Any, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = TransformersBackend.from_transformers(*chat, max_batch_size=8)
    forward = backend._forward

    def small_memory(rows: Any, ids: Any, new: Any) -> Any:
        if ids.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(rows, ids, new)

    monkeypatch.setattr(backend, "_forward", small_memory)
    with caplog.at_level(logging.WARNING):
        out = backend.sample([SHORT], 6, 3, seed=0)
    assert "out of GPU memory" in caplog.text
    assert_recomputed(chat[0], [SHORT], out)

    monkeypatch.setattr(
        backend, "_forward", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError())
    )
    with pytest.raises(RuntimeError, match="max_batch_size"):
        backend.top_k([SHORT], 3)


def test_threads_share_one_backend(chat: tuple[Any, Any]) -> None:
    shared = TransformersBackend.from_transformers(*chat)

    def draw(backend: TransformersBackend, seed: int) -> list[tuple[int, ...]]:
        out = backend.sample([SHORT, (*LONG, seed)], 3, 6, seed=seed, keep_cache=True)
        return [c.token_ids for row in out.continuations for c in row]

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda s: draw(shared, s), range(8)))
    alone = [draw(TransformersBackend.from_transformers(*chat), s) for s in range(8)]
    assert together == alone


def test_from_pretrained_loads_a_local_folder(chat: tuple[Any, Any], tmp_path: Any) -> None:
    model, tokenizer = chat
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = TransformersBackend.from_pretrained(str(tmp_path))
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert loaded.name == tmp_path.name and loaded.stop.token_ids == {0, 2}
    a = TransformersBackend.from_transformers(*chat).top_k([SHORT], 4).entries[0]
    b = loaded.top_k([SHORT], 4).entries[0]
    assert a.token_ids == b.token_ids and np.allclose(a.logprobs, b.logprobs, atol=1e-2)
    with pytest.raises(OSError, match=r"no-such-model.*local folder"):
        TransformersBackend.from_pretrained(str(tmp_path / "no-such-model"))


# -- the power sampler through the backend -----------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 4])
def test_power_sampling_shares_the_prefix_cache(chat: tuple[Any, Any], block_size: int) -> None:
    """The 60-token prompt is prefilled once; after that a step runs only its new tokens.

    Block level, per step: L·B candidate tokens (B-1 decodes and one forward of the last token
    of each kept candidate) and at most K·M·H rollout tokens (the rollouts start from the kept
    candidate rows). Token level: the chosen token (1), the K candidate tokens and at most
    K·M·(H-1) rollout decodes. Without sharing, one step's rollouts alone would run
    K·M·(prompt + B) tokens.
    """
    prompt, (L, K, M, H) = list(range(3, 63)), (6, 3, 2, 4)
    config = PowerSamplingConfig(
        block_size=block_size,
        num_candidates=L,
        top_k=K,
        num_rollouts=M,
        rollout_length=H,
        max_new_tokens=max(3 * block_size, 2 * H),
    )
    backend = TransformersBackend.from_transformers(*chat)
    full_length = IgnoreEOS(backend)  # every step runs, whatever the random model draws
    gen = PowerSampler(full_length, config).generate(prompt, seed=0)
    stats = gen.stats
    assert stats.rollout_tokens > 0 and len(gen.token_ids) == config.max_new_tokens
    per_step = L * block_size + K * M * H if block_size > 1 else 1 + K + K * M * (H - 1)
    assert len(prompt) < stats.forward_tokens <= len(prompt) + stats.steps * per_step
    assert stats.forward_tokens < K * M * (len(prompt) + block_size)


@pytest.mark.parametrize("block_size", [1, 2])
def test_power_sampling_matches_the_exact_power_distribution(block_size: int) -> None:
    """Through the transformers backend, generate's empirical distribution is close to
    π ∝ p^α, and much closer than low temperature (temperature 1/α) is.

    Noise: n independent draws from π have E[TV] ≤ ½ Σ_x sqrt(π(x)(1-π(x))/n); we allow 3x that
    plus 0.03 for the estimator (block mode scores only the distinct blocks drawn; p̂_JK keeps an
    O(1/M²) bias), as in the TableLM fidelity tests.
    """
    backend = TransformersBackend.from_transformers(tiny_table_model(5, seed=0))
    alpha, length, runs = 4.0, 3, 1500
    pi = exact.power_distribution(backend, (1,), alpha, length)
    low = exact.base_distribution(backend, (1,), length, temperature=1 / alpha)
    config = PowerSamplingConfig(
        alpha=alpha,
        block_size=block_size,
        top_k=5,
        num_candidates=16,
        num_rollouts=16,
        rollout_length=length,
        max_new_tokens=length,
    )
    # One batch of copies of the prompt: every step is one backend call for all runs.
    gens = PowerSampler(backend, config).generate_batch([[1]] * runs, seed=block_size)
    counts = Counter(tuple(g.token_ids) for g in gens)
    empirical = {x: c / runs for x, c in counts.items()}
    noise = 3 * 0.5 * sum(np.sqrt(q * (1 - q) / runs) for q in pi.values())
    tv = exact.total_variation(empirical, pi)
    assert exact.total_variation(low, pi) > 0.3  # the model separates the two targets
    assert tv < noise + 0.03
    assert tv < 0.5 * exact.total_variation(low, pi)
