"""The public PowerSampler API: prompts, text, streaming, determinism, bad input, imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tables import random_table

from power_sampling import METHODS, PowerSampler, PowerSamplingConfig, TableLM
from power_sampling.backends.scripted import ScriptedLM
from power_sampling.testing import tiny_tokenizer

SMALL = dict(
    block_size=2, top_k=3, num_candidates=4, num_rollouts=3, rollout_length=3, max_new_tokens=6
)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_output_different_seeds_differ(method: str) -> None:
    # best_of 2: with 32 draws a 6-token model's most likely completion nearly always wins.
    config = PowerSamplingConfig(method=method, best_of=2, **SMALL)
    sampler = PowerSampler(random_table(6, 7), config)
    first = [sampler.generate([1], seed=s).token_ids for s in range(8)]
    again = [sampler.generate([1], seed=s).token_ids for s in range(8)]
    assert first == again
    assert len({tuple(t) for t in first}) > 1


def test_config_seed_makes_every_call_reproducible() -> None:
    sampler = PowerSampler(random_table(6, 7), PowerSamplingConfig(seed=3, **SMALL))
    assert sampler.generate([1]).token_ids == sampler.generate([1]).token_ids


def test_no_global_random_state_is_touched() -> None:
    state = np.random.get_state()[1].copy()
    PowerSampler(random_table(4, 0), PowerSamplingConfig(**SMALL)).generate([1], seed=0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize("method", METHODS)
def test_generate_batch_is_batched_and_matches_lengths(method: str) -> None:
    sampler = PowerSampler(random_table(6, 7), PowerSamplingConfig(method=method, **SMALL))
    results = sampler.generate_batch([[1], [2, 3], [4]], seed=0)
    assert len(results) == 3
    for generation in results:
        assert 1 <= len(generation.token_ids) <= 6
        assert generation.finish_reason in ("stop", "length")
        assert generation.stats.completion_tokens == len(generation.token_ids)


def test_stats_account_for_candidates_and_rollouts() -> None:
    config = PowerSamplingConfig(**{**SMALL, "max_new_tokens": 4})
    lm = TableLM(lambda prefix: [0.0, 0.5, 0.5], eos_token_id=0)  # never ends: 2 full blocks
    generation = PowerSampler(lm, config).generate([1], seed=0)
    stats = generation.stats
    assert generation.finish_reason == "length" and len(generation.token_ids) == 4
    assert stats.steps == 2
    # Per block: L·B = 4·2 candidate tokens; rollouts: K distinct (≤ 3) × M = 3 × min(H, left).
    assert stats.candidate_tokens == 2 * 4 * 2
    assert 0 < stats.rollout_tokens <= 3 * 3 * 2  # the first block leaves 2 tokens of horizon
    assert stats.backend_calls == 3  # the last block has no future to roll out


def test_trace_records_each_decision() -> None:
    generation = PowerSampler(random_table(6, 7), PowerSamplingConfig(**SMALL)).generate(
        [1], seed=0, trace=True
    )
    assert generation.trace
    for step in generation.trace:
        assert 0 <= step.chosen < len(step.candidates)
        assert sum(step.p_jk) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([], "empty prompt"), ([1, 99], "outside the vocabulary"), ([-1], "outside the vocabulary")],
)
def test_bad_prompts_raise_clear_errors(prompt: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PowerSampler(random_table(4, 0), PowerSamplingConfig(**SMALL)).generate(prompt)


@pytest.mark.parametrize(
    ("probs", "message"),
    [([0.5, 0.6, 0.0], "sums to 1.1"), ([1.2, -0.2, 0.0], "negative"), ([0.5, 0.5], "shape")],
)
def test_table_lm_rejects_bad_probabilities(probs: list[float], message: str) -> None:
    lm = TableLM(lambda prefix: probs if len(prefix) > 1 else [0.2, 0.4, 0.4], 0, vocab_size=3)
    with pytest.raises(ValueError, match=message):
        PowerSampler(lm, PowerSamplingConfig(**SMALL)).generate([1], seed=0)


def test_text_prompts_need_a_tokenizer() -> None:
    with pytest.raises(TypeError, match="has no tokenizer"):
        PowerSampler(random_table(4, 0)).generate("hello")
    with pytest.raises(TypeError, match="prompt must be"):
        PowerSampler(random_table(4, 0)).generate(3.5)  # type: ignore[arg-type]


def test_backend_type_is_checked() -> None:
    with pytest.raises(TypeError, match="must implement"):
        PowerSampler(object())  # type: ignore[arg-type]


def scripted(reply: str = "The answer is 42. Done.") -> ScriptedLM:
    return ScriptedLM(tiny_tokenizer(), reply)


@pytest.mark.parametrize("method", METHODS)
def test_text_never_contains_the_prompt(method: str) -> None:
    sampler = PowerSampler(scripted(), PowerSamplingConfig.preset("cpu", method=method))
    for prompt in ("What is 6 times 7?", [{"role": "user", "content": "What is 6 times 7?"}]):
        generation = sampler.generate(prompt, seed=0)
        assert generation.text == "The answer is 42. Done."
        assert generation.finish_reason == "stop"


def test_stream_deltas_join_to_the_text() -> None:
    sampler = PowerSampler(scripted(), PowerSamplingConfig.preset("cpu", block_size=3))
    chunks = list(sampler.stream([{"role": "user", "content": "hi"}], seed=0))
    final = chunks[-1].generation
    assert final is not None and len(chunks) > 2
    assert "".join(c.text for c in chunks) == final.text
    assert [t for c in chunks for t in c.token_ids] == final.token_ids


def test_stop_strings_cut_the_text_and_are_never_streamed() -> None:
    sampler = PowerSampler(scripted(), PowerSamplingConfig.preset("cpu", block_size=2))
    messages = [{"role": "user", "content": "hi"}]
    generation = sampler.generate(messages, stop=["42."], seed=0)
    assert generation.text == "The answer is "
    assert generation.finish_reason == "stop"
    chunks = list(sampler.stream(messages, stop=["42."], seed=0))
    assert "".join(c.text for c in chunks) == "The answer is "
    with pytest.raises(ValueError, match="non-empty"):
        sampler.generate(messages, stop=[""])


def test_prompt_longer_than_the_context_is_a_clear_error() -> None:
    lm = ScriptedLM(tiny_tokenizer(), "x", max_context=8)
    with pytest.raises(ValueError, match="maximum context length is 8"):
        PowerSampler(lm).generate("a long prompt that does not fit in eight tokens at all")


def test_importing_the_package_loads_no_framework() -> None:
    code = (
        "import sys, power_sampling, power_sampling.exact, power_sampling.backends;"
        "heavy = {'torch', 'transformers', 'langchain', 'langchain_core', 'dspy', 'vllm'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("method", METHODS)
def test_generation_logprob_is_the_base_log_likelihood(method: str) -> None:
    lm = random_table(6, 7)
    config = PowerSamplingConfig(method=method, best_of=3, mcmc_steps=3, **SMALL)
    generation = PowerSampler(lm, config).generate([1], seed=0)
    seq, expected = [1], 0.0
    for token in generation.token_ids:
        expected += float(np.log(lm.probs(seq)[token]))
        seq.append(token)
    assert generation.logprob == pytest.approx(expected, abs=1e-9)
