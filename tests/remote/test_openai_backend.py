"""OpenAIBackend against real vLLM servers (the CPU build, see ``conftest.py``), with
TransformersBackend on the same weights as the reference: per-token log-probs, top-k sets, seeds,
stop conditions, refusals, and the samplers' distributions against exact enumeration.

Statistical bounds as in ``tests/vllm_backend``: n independent draws from q have
E[TV] ≤ ½ Σ_x sqrt(q(x)(1-q(x))/n); the tests allow 3x that (plus the estimator allowance the
transformers tests use for power sampling).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("httpx")

from power_sampling import PowerSampler, PowerSamplingConfig, exact  # noqa: E402
from power_sampling.backends import Backend, StopCondition, TextBackend  # noqa: E402
from power_sampling.backends.openai import OpenAIBackend  # noqa: E402

TOL = 1e-3  # vLLM's CPU kernels against transformers' float32 forward


def reference(model: Any, prefix: Sequence[int], tokens: Sequence[int], temperature: float = 1.0):
    """Per-token log-probs of ``tokens`` after ``prefix`` from one transformers forward pass."""
    ids = torch.tensor([[*prefix, *tokens]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits / temperature, -1)
    return [logp[len(prefix) + j - 1, t].item() for j, t in enumerate(tokens)]


def noise(reference: dict[Any, float], runs: int) -> float:
    return 3 * 0.5 * sum(np.sqrt(q * (1 - q) / runs) for q in reference.values())


@pytest.fixture(scope="module")
def embedded(embedded_url: str) -> Any:
    """The served embedded model, its transformers twin and the transformers model."""
    from power_sampling.backends import TransformersBackend
    from power_sampling.backends.models import load_default_pretrained

    model, tokenizer = load_default_pretrained()
    backend = OpenAIBackend(embedded_url, api_key="unused")
    yield backend, TransformersBackend.from_transformers(model, tokenizer), model
    backend.close()


@pytest.fixture(scope="module")
def table(table_url: tuple[str, Any]) -> Any:
    from power_sampling.backends import TransformersBackend

    url, model = table_url
    backend = OpenAIBackend(url, tokenizer=False, vocab_size=5, stop_token_ids=[0])
    yield backend, TransformersBackend.from_transformers(model), model
    backend.close()


# -- the embedded model against TransformersBackend -------------------------------------------


def test_protocol_text_and_stop_match_transformers(embedded: Any) -> None:
    backend, ref, _ = embedded
    assert isinstance(backend, TextBackend) and isinstance(backend, Backend)
    assert backend.vocab_size == ref.vocab_size
    assert backend.stop == ref.stop and backend.stop.token_ids == {0, 2}
    assert backend.name == "SmolLM2-135M-Instruct" and backend.max_context == 1024
    text = "Power sampling: p(x)^α, step by step."
    assert backend.encode(text) == ref.encode(text)
    assert backend.decode(backend.encode(text)) == text
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert backend.apply_chat_template(messages) == ref.apply_chat_template(messages)
    # vLLM's default mode: base log-probs at every temperature, no proposal ones.
    assert backend.logprobs_mode == "raw_logprobs" and not backend.returns_proposal_logprobs


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_continuation_log_probs_match_transformers(embedded: Any, temperature: float) -> None:
    """Base log-probs of every drawn token agree with a transformers forward pass within 1e-3
    at either temperature; proposal log-probs come back at temperature 1 only (raw mode)."""
    backend, _, model = embedded
    prompt = backend.apply_chat_template([{"role": "user", "content": "Name a prime number."}])
    prefixes = [prompt, backend.encode("The capital of France is")]
    out = backend.sample(prefixes, 3, 8, seed=0, temperature=temperature)
    assert [len(row) for row in out.continuations] == [3, 3]
    assert out.forward_tokens > 0
    for prefix, row in zip(prefixes, out.continuations, strict=True):
        assert len({c.token_ids for c in row}) > 1  # n distinct draws, not one repeated
        for c in row:
            assert 0 < len(c.token_ids) <= 8
            base = reference(model, prefix, c.token_ids)
            assert np.allclose(c.token_logprobs, base, atol=TOL)
            assert c.logprob == pytest.approx(sum(base), abs=TOL * len(base))
            assert c.proposal_logprobs == (c.token_logprobs if temperature == 1.0 else ())
            assert c.finished == (c.token_ids[-1] in backend.stop.token_ids)


def test_top_k_sets_and_log_probs_match_transformers(embedded: Any) -> None:
    backend, ref, _ = embedded
    prefixes = [
        backend.encode("The capital of France is"),
        backend.apply_chat_template([{"role": "user", "content": "Hi"}]),
        backend.encode("def add(a, b):\n    return"),
        backend.encode("The capital of France is"),  # repeated: asked once, returned twice
    ]
    got, want = backend.top_k(prefixes, 8), ref.top_k(prefixes, 8)
    for a, b in zip(got.entries, want.entries, strict=True):
        assert set(a.token_ids) == set(b.token_ids)
        assert list(a.logprobs) == sorted(a.logprobs, reverse=True)
        assert np.allclose(a.logprobs, b.logprobs, atol=TOL)
    assert got.entries[0] == got.entries[3]
    with pytest.raises(ValueError, match=r"at most 20 log-probs.*--max-logprobs 21"):
        backend.top_k(prefixes[:1], 21)


def test_seeded_calls_reproduce(embedded: Any) -> None:
    """The same seed gives the same continuations, also for a prefix asked alone rather than
    beside another; another seed gives others."""
    backend = embedded[0]
    a, b = backend.encode("Once upon a time"), backend.encode("1, 2, 3,")

    def draw(prefixes: list[list[int]], seed: int) -> list[list[tuple[int, ...]]]:
        out = backend.sample(prefixes, 3, 6, seed=seed, temperature=0.8)
        return [[c.token_ids for c in row] for row in out.continuations]

    first = draw([a, b], 7)
    assert draw([a, b], 7) == first
    assert draw([a], 7) == first[:1]
    assert draw([a, b], 8) != first


def test_stop_strings_and_tokens_end_continuations(embedded: Any) -> None:
    backend = embedded[0]
    prefix = backend.encode("Count: 1, 2, 3,")
    free = backend.sample([prefix], 1, 16, seed=11, stop=StopCondition()).continuations[0][0]
    tokens = list(free.token_ids)
    assert len(tokens) == 16 and not free.finished
    stop = backend.decode(tokens[:6])[-2:]
    end = next(j for j in range(1, 17) if stop in backend.decode(tokens[:j]))
    c = backend.sample([prefix], 1, 16, seed=11, stop=StopCondition(strings=(stop,)))
    cut = c.continuations[0][0]
    assert cut.finished and list(cut.token_ids) == tokens[:end]
    token = tokens[4]
    c = backend.sample([prefix], 1, 16, seed=11, stop=StopCondition(frozenset({token})))
    by_token = c.continuations[0][0]
    assert by_token.finished and list(by_token.token_ids) == tokens[: tokens.index(token) + 1]
    budget = tokens.index(token) + 1  # a stop token drawn last still finishes
    last = backend.sample([prefix], 1, budget, seed=11, stop=StopCondition(frozenset({token})))
    assert last.continuations[0][0] == by_token


def test_budgets_and_bad_input_are_refused_with_the_fix(embedded: Any) -> None:
    backend = embedded[0]
    short, long = backend.encode("Hello"), backend.encode("The capital of France is")
    out = backend.sample([short, long, short], 2, [2, 5, 0], seed=0, stop=StopCondition())
    lengths = [[len(c.token_ids) for c in row] for row in out.continuations]
    assert lengths == [[2, 2], [5, 5], [0, 0]]
    assert backend.sample([short], 0, 3, seed=0).continuations == [[]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        backend.sample([(1, backend.vocab_size)], 1, 3, seed=0)
    with pytest.raises(ValueError, match="empty prompt"):
        backend.top_k([()], 3)
    from power_sampling.constraints import Constraint

    matcher = Constraint.regex("[0-9]+").matcher(backend, sorted(backend.stop.token_ids))
    for call in (
        lambda: backend.sample([short], 1, 3, seed=0, constraint=[matcher]),
        lambda: backend.top_k([short], 3, constraint=[matcher]),
    ):
        with pytest.raises(ValueError, match="cannot run constrained outputs"):
            call()


def test_a_mismatched_tokenizer_or_model_is_refused_up_front(embedded_url: str) -> None:
    from transformers import AutoTokenizer

    from power_sampling.backends.models import default_model_dir

    other = AutoTokenizer.from_pretrained(default_model_dir())
    other.add_tokens(["café"])  # one word tokenised differently from the served model
    with pytest.raises(ValueError, match="does not match the model"):
        OpenAIBackend(embedded_url, tokenizer=other)
    with pytest.raises(ValueError, match="does not serve 'gpt-4'"):
        OpenAIBackend(embedded_url, "gpt-4")


def test_raw_server_refuses_mcmc_with_the_fix_and_runs_the_rest(embedded: Any) -> None:
    backend, _, model = embedded
    config = PowerSamplingConfig(method="mcmc", alpha=4.0, block_size=4, max_new_tokens=4)
    with pytest.raises(ValueError, match="--logprobs-mode processed_logprobs"):
        PowerSampler(backend, config).generate("Hi", seed=0)
    sampler = PowerSampler(
        backend, top_k=2, num_rollouts=2, rollout_length=4, block_size=4, max_new_tokens=8
    )
    gen = sampler.generate([{"role": "user", "content": "What is 2+2?"}], seed=0)
    assert gen.text and 0 < len(gen.token_ids) <= 8
    prompt = backend.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    expected = sum(reference(model, prompt, gen.token_ids))
    assert gen.logprob == pytest.approx(expected, abs=TOL * len(gen.token_ids))


# -- a table model on a processed-log-probs server: distributions against enumeration --------


def test_token_id_server_is_not_a_text_backend(table: Any) -> None:
    backend = table[0]
    assert isinstance(backend, Backend) and not isinstance(backend, TextBackend)
    assert backend.stop.token_ids == {0} and backend.vocab_size == 5
    assert backend.logprobs_mode == "processed_logprobs" and backend.returns_proposal_logprobs
    with pytest.raises(AttributeError, match="tokenizer=False"):
        backend.decode([1])
    with pytest.raises(ValueError, match="stop strings"):
        backend.sample([(1,)], 1, 3, seed=0, stop=StopCondition(strings=("x",)))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampled_sequences_follow_the_model_at_the_temperature(
    table: Any, temperature: float
) -> None:
    """Two-token continuations drawn over HTTP against the exact distribution at that
    temperature, and their base (rescored at 0.5) and proposal log-probs against the exact
    ones."""
    backend, ref, _ = table
    runs = 2000
    exact_seqs = exact.enumerate_completions(ref, (1,), 2, temperature=temperature)
    q = {x: float(np.exp(lq)) for x, (_, lq) in exact_seqs.items()}
    drawn = backend.sample([(1,)], runs, 2, seed=3, temperature=temperature).continuations[0]
    counts = Counter(c.token_ids for c in drawn)
    assert exact.total_variation({x: c / runs for x, c in counts.items()}, q) < noise(q, runs)
    for c in drawn[:50]:
        lp, lq = exact_seqs[c.token_ids]
        assert c.logprob == pytest.approx(lp, abs=TOL)
        assert sum(c.proposal_logprobs) == pytest.approx(lq, abs=TOL)


def test_power_sampling_matches_the_exact_power_distribution(table: Any) -> None:
    """Token-level power sampling over HTTP is close to π ∝ p^α (exact, by enumeration) and
    much closer than low temperature is; the same test as for the in-process backends."""
    backend, ref, _ = table
    alpha, length, runs = 4.0, 3, 300
    pi = exact.power_distribution(ref, (1,), alpha, length)
    low = exact.base_distribution(ref, (1,), length, temperature=1 / alpha)
    config = PowerSamplingConfig(
        alpha=alpha,
        block_size=1,
        top_k=5,
        num_rollouts=8,
        rollout_length=length,
        max_new_tokens=length,
    )
    gens = PowerSampler(backend, config).generate_batch([[1]] * runs, seed=1)
    counts = Counter(tuple(g.token_ids) for g in gens)
    tv = exact.total_variation({x: c / runs for x, c in counts.items()}, pi)
    assert exact.total_variation(low, pi) > 0.3  # the model separates the two targets
    assert tv < noise(pi, runs) + 0.03
    assert tv < 0.5 * exact.total_variation(low, pi)


def test_mcmc_moves_toward_pi_with_exact_proposal_log_probs(table: Any) -> None:
    """MCMC over HTTP: with the server's exact proposal log-probs, more Metropolis-Hastings
    steps bring the samples closer to π."""
    backend, ref, _ = table
    alpha, length, runs = 4.0, 3, 200
    pi = exact.power_distribution(ref, (1,), alpha, length)
    tvs = []
    for steps in (0, 12):
        config = PowerSamplingConfig(
            method="mcmc", alpha=alpha, block_size=length, mcmc_steps=steps, max_new_tokens=length
        )
        gens = PowerSampler(backend, config).generate_batch([[1]] * runs, seed=2)
        counts = Counter(tuple(g.token_ids) for g in gens)
        tvs.append(exact.total_variation({x: c / runs for x, c in counts.items()}, pi))
    assert tvs[0] > 0.3 and tvs[1] < tvs[0] - 0.1
