"""Constraint masks inside the transformers backend's batched decode, and xgrammar constraints
on a real (tiny, in-process) tokenizer."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from power_sampling import PowerSampler, PowerSamplingConfig, exact
from power_sampling.backends.transformers import TransformersBackend
from power_sampling.constraints import Constraint, TokenAutomaton, allowed_tokens
from power_sampling.exact import total_variation
from power_sampling.testing import TABLE_EOS_ID, tiny_chat_model, tiny_table_model

pytest.importorskip("xgrammar")

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[a-z]{1,8}$"},
        "days": {"type": "integer"},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def chat_backend() -> TransformersBackend:
    model, tokenizer = tiny_chat_model()
    return TransformersBackend.from_transformers(model, tokenizer)


def test_decode_reports_base_logprobs_and_the_allowed_mass(chat_backend) -> None:
    """Every continuation is valid; its per-token log-probs are the base model's and its
    log_mass is Σ log Σ_allowed p, both recomputed here by a full forward without the cache."""
    backend = chat_backend
    constraint = Constraint.regex(r"(yes|no|maybe), [0-9]{1,3}!")
    stop = backend.stop
    root = constraint.matcher(backend, stop.token_ids)
    prompt = backend.encode("Answer: ")
    out = backend.sample([prompt], 6, 12, seed=3, constraint=[root]).continuations[0]
    for row in out:
        matcher = root.fork()
        ids = torch.tensor([prompt + list(row.token_ids)])
        with torch.no_grad():
            logp = torch.log_softmax(backend.model(ids).logits[0].float(), -1).numpy()
        expected_mass = 0.0
        for t, token in enumerate(row.token_ids):
            position = len(prompt) - 1 + t
            allowed = allowed_tokens(matcher, backend.vocab_size)
            assert allowed[token]
            expected_mass += float(np.logaddexp.reduce(logp[position][allowed]))
            assert row.token_logprobs[t] == pytest.approx(logp[position][token], abs=1e-4)
            assert matcher.accept(token)
        assert row.log_mass == pytest.approx(expected_mass, abs=1e-3)
        assert row.log_mass < 0
        if row.finished:
            text = backend.decode(row.token_ids)
            assert text.split(", ")[0] in {"yes", "no", "maybe"} and text.endswith("!")


@pytest.mark.parametrize("method", ["power", "standard", "mcmc"])
def test_json_schema_outputs_parse_and_validate(chat_backend, method: str) -> None:
    config = PowerSamplingConfig(
        method=method,
        block_size=6,
        top_k=3,
        num_candidates=4,
        num_rollouts=2,
        rollout_length=6,
        mcmc_steps=2,
        max_new_tokens=24,
    )
    sampler = PowerSampler(chat_backend, config)
    constraint = Constraint.json_schema(SCHEMA)
    for seed in range(1 if method != "standard" else 4):
        generation = sampler.generate("Trip:", seed=seed, constraint=constraint)
        if generation.finish_reason == "stop":
            value = json.loads(generation.text)
            assert set(value) == {"city", "days"} and isinstance(value["days"], int)
        else:  # cut by the length cap: a valid prefix of the layout json.dumps gives
            assert generation.text.startswith('{"city": "')


def test_masked_decode_matches_the_exact_masked_model() -> None:
    """On a tiny transformers model with an automaton over token ids, 1200 draws of one batched
    call follow the exact masked model (enumerated through the same backend's top_k)."""
    backend = TransformersBackend.from_transformers(tiny_table_model(5, seed=1))
    automaton = TokenAutomaton({0: {1: 1, 2: 2}, 1: {4: 3}, 2: {1: 3, 3: 3}, 3: {3: 3}}, {2, 3})
    prompt, runs = [3], 1200
    reference = exact.base_distribution(backend, prompt, 3, constraint=automaton)
    root = automaton.matcher(backend, backend.stop.token_ids)
    rows = backend.sample([prompt], runs, 3, seed=0, constraint=[root]).continuations[0]
    counts = Counter(r.token_ids for r in rows)
    observed = {x: c / runs for x, c in counts.items()}
    assert set(observed) <= set(reference)
    bound = 3 * 0.5 * sum(np.sqrt(q * (1 - q) / runs) for q in reference.values())
    assert total_variation(observed, reference) < bound
    assert all(r.log_mass < 0 for r in rows if r.token_ids[0] == 1)  # 4 is forced after 1
    assert TABLE_EOS_ID in backend.stop.token_ids


def test_top_k_at_a_dead_end_ranks_nothing() -> None:
    """Where the constraint allows no token, top_k returns no token (as TableLM does), not the
    unmasked ranking; other prefixes of the batch keep theirs."""
    backend = TransformersBackend.from_transformers(tiny_table_model(5, seed=1))
    automaton = TokenAutomaton({0: {1: 1, 2: 2}, 1: {}, 2: {3: 3}}, {3})
    root = automaton.matcher(backend, backend.stop.token_ids)
    stuck, going = root.fork(), root.fork()
    assert stuck.accept(1) and going.accept(2)
    out = backend.top_k([[3, 1], [3, 2]], 5, constraint=[stuck, going]).entries
    assert out[0].token_ids == () and out[1].token_ids == (3,)
