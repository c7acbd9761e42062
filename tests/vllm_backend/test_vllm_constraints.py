"""Constrained outputs through VLLMBackend on real vLLM engines: the tokens drawn and ranked are
the allowed ones, their base and proposal log-probs and the log allowed mass of every step agree
with a transformers forward pass and with TransformersBackend under the same matcher, also from
a prefix that already holds constrained tokens; distributions against exact enumeration of the
masked model and of π_G ∝ p^α · 1[valid].

Statistical bounds as in test_vllm_backend: 3x the expected total variation of n draws, plus
the estimator allowance the transformers tests use for constrained power sampling (0.04).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from power_sampling import PowerSampler, PowerSamplingConfig, exact  # noqa: E402
from power_sampling.constraints import Constraint, Matcher, TokenAutomaton  # noqa: E402
from power_sampling.constraints.base import allowed_tokens  # noqa: E402

TOL = 1e-3  # vLLM's CPU kernels against transformers' float32 forward
PATTERN = r"(yes|no|maybe), [0-9]{1,3}!"
# On the table model: after prompt 1, p(3) = 0.91 and p(1) = 0.08; the automaton allows 1, 2
# or 3 first and removes different mass on each branch, so π_G is far from the power of the
# masked model (total variation 0.49 at α = 4).
AUTOMATON = TokenAutomaton(
    {0: {1: 1, 2: 2, 3: 2}, 1: {3: 3}, 2: {1: 3, 2: 3, 4: 3}, 3: {1: 3, 4: 3}}, accepting={3}
)


def advanced(matcher: Matcher, tokens: Sequence[int]) -> Matcher:
    forked = matcher.fork()
    for token in tokens:
        assert forked.accept(int(token))
    return forked


def masked_reference(
    model: Any, prefix: Sequence[int], tokens: Sequence[int], matcher: Matcher, temperature: float
) -> tuple[list[float], list[float], list[float]]:
    """Per drawn token, from one transformers forward pass and the matcher's masks: the base
    log-prob, the masked proposal log-prob at ``temperature`` and the log allowed mass."""
    ids = torch.tensor([[*prefix, *tokens]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0].float()
    matcher, base, proposal, mass = matcher.fork(), [], [], []
    for j, token in enumerate(tokens):
        row = logits[len(prefix) + j - 1]
        allowed = torch.from_numpy(allowed_tokens(matcher, row.shape[0]))
        logp = torch.log_softmax(row, -1)
        masked = row.masked_fill(~allowed, -torch.inf)
        base.append(logp[token].item())
        proposal.append(torch.log_softmax(masked / temperature, -1)[token].item())
        mass.append(torch.logsumexp(logp.masked_fill(~allowed, -torch.inf), -1).item())
        assert matcher.accept(int(token)), f"token {token} is not allowed"
    return base, proposal, mass


def noise(reference: dict[Any, float], runs: int) -> float:
    return 3 * 0.5 * sum(np.sqrt(q * (1 - q) / runs) for q in reference.values())


# -- the embedded model with a regex, against transformers ------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_constrained_draws_match_transformers_also_mid_output(
    embedded: Any, temperature: float
) -> None:
    """Draws from the prompt and from the prompt plus two constrained tokens (the matcher
    positioned after them): every output completes the regex, and the base and proposal
    log-probs and the log allowed mass of each step agree with the reference within 1e-3."""
    backend, model = embedded.vllm, embedded.model
    prompt = backend.apply_chat_template([{"role": "user", "content": "Is 7 prime? Say why."}])
    root = Constraint.regex(PATTERN).matcher(backend, backend.stop.token_ids)
    first = backend.sample([prompt], 3, 12, seed=0, temperature=temperature, constraint=[root])
    started = first.continuations[0][0].token_ids[:2]
    prefixes = [prompt, [*prompt, *started]]
    matchers = [root, advanced(root, started)]
    out = backend.sample(prefixes, 3, 12, seed=1, temperature=temperature, constraint=matchers)
    for prefix, matcher, row in zip(prefixes, matchers, out.continuations, strict=True):
        for c in row:
            assert c.finished and c.token_ids[-1] in backend.stop.token_ids
            done = prefix[len(prompt) :] + list(c.token_ids)
            assert re.fullmatch(PATTERN, backend.decode(done)), backend.decode(done)
            base, proposal, mass = masked_reference(
                model, prefix, c.token_ids, matcher, temperature
            )
            assert np.allclose(c.token_logprobs, base, atol=TOL)
            assert np.allclose(c.proposal_logprobs, proposal, atol=TOL)
            assert c.logprob == pytest.approx(sum(base), abs=TOL * len(base))
            assert c.log_mass == pytest.approx(sum(mass), abs=TOL * len(mass))
            assert c.log_mass < -1.0  # the regex removes most of the mass, so this is no 0


def test_constrained_top_k_matches_transformers(embedded: Any) -> None:
    """Only allowed tokens, ranked by base log-prob, as TransformersBackend ranks them; k is
    not capped by max_logprobs under a constraint (the processor ranks them itself)."""
    backend, ref = embedded.vllm, embedded.reference
    prompt = backend.apply_chat_template([{"role": "user", "content": "Is 7 prime?"}])
    root = Constraint.regex(PATTERN).matcher(backend, backend.stop.token_ids)
    yes = backend.encode("yes,")
    prefixes = [prompt, [*prompt, *yes], prompt]
    matchers = [root, advanced(root, yes), None]
    got = backend.top_k(prefixes, 8, constraint=matchers)
    want = ref.top_k(prefixes, 8, constraint=matchers)
    wide = backend.top_k(prefixes[:1], 100, constraint=matchers[:1]).entries
    wide_ref = ref.top_k(prefixes[:1], 100, constraint=matchers[:1]).entries
    for a, b, m in zip(got.entries + wide, want.entries + wide_ref, [*matchers, root], strict=True):
        assert set(a.token_ids) == set(b.token_ids)
        assert list(a.logprobs) == sorted(a.logprobs, reverse=True)
        reference = dict(zip(b.token_ids, b.logprobs, strict=True))
        assert np.allclose(a.logprobs, [reference[t] for t in a.token_ids], atol=TOL)
        if m is not None:
            assert all(m.fork().accept(t) for t in a.token_ids)
    assert got.entries[1].token_ids == tuple(backend.encode(" "))  # only the space may follow


# -- table models: exact targets ---------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_constrained_draws_follow_the_masked_model(table: Any, temperature: float) -> None:
    """Three-token continuations drawn under the automaton against the exact masked model at
    that temperature, and their base, proposal and mass terms against the enumerated ones."""
    runs, length = 1000, 3
    enumerated = exact.enumerate_completions(
        table.reference, (1,), length, temperature=temperature, constraint=AUTOMATON
    )
    q = {x: float(np.exp(lq)) for x, (_, lq) in enumerated.items()}
    root = AUTOMATON.matcher(table.vllm, table.vllm.stop.token_ids)
    drawn = table.vllm.sample(
        [(1,)], runs, length, seed=5, temperature=temperature, constraint=[root]
    ).continuations[0]
    counts = Counter(c.token_ids for c in drawn)
    assert set(counts) <= set(q)
    assert exact.total_variation({x: c / runs for x, c in counts.items()}, q) < noise(q, runs)
    one = exact.enumerate_completions(table.reference, (1,), length, constraint=AUTOMATON)
    for c in drawn[:50]:
        lp, lq = enumerated[c.token_ids]
        assert c.logprob == pytest.approx(lp, abs=TOL)
        assert sum(c.proposal_logprobs) == pytest.approx(lq, abs=TOL)
        assert c.log_mass == pytest.approx(lp - one[c.token_ids][1], abs=TOL)  # log p - log q


def test_raw_log_probs_engine_under_a_constraint(raw_table: Any) -> None:
    """Raw log-probs are the base ones; at temperature 1 the proposal is base - mass, at
    another temperature there is none (as without a constraint)."""
    backend, root = raw_table.vllm, AUTOMATON.matcher(raw_table.vllm, raw_table.vllm.stop.token_ids)
    enumerated = exact.enumerate_completions(raw_table.reference, (1,), 3, constraint=AUTOMATON)
    for temperature in (1.0, 0.5):
        out = backend.sample([(1,)], 20, 3, seed=0, temperature=temperature, constraint=[root])
        for c in out.continuations[0]:
            lp, lq = enumerated[c.token_ids]
            assert c.logprob == pytest.approx(lp, abs=TOL)
            assert c.log_mass == pytest.approx(lp - lq, abs=TOL)
            if temperature == 1.0:
                assert sum(c.proposal_logprobs) == pytest.approx(lq, abs=TOL)
            else:
                assert c.proposal_logprobs == ()


def test_a_dead_end_cuts_the_continuation_as_transformers_does(table: Any) -> None:
    """After token 3 the automaton allows nothing: the continuation ends there, unfinished,
    with log mass -inf, in both backends."""
    dead = TokenAutomaton({0: {1: 1, 3: 2}, 1: {3: 3}, 2: {}}, accepting={3})

    def shapes(backend: Any) -> set[tuple[tuple[int, ...], bool, bool]]:
        root = dead.matcher(backend, backend.stop.token_ids)
        rows = backend.sample([(1,)], 60, 3, seed=0, constraint=[root]).continuations[0]
        return {(c.token_ids, c.finished, c.log_mass == -np.inf) for c in rows}

    want = {((3,), False, True), ((1, 3, 0), True, False)}
    assert shapes(table.vllm) == want == shapes(table.reference)
    stuck = advanced(dead.matcher(table.vllm, table.vllm.stop.token_ids), [3])
    for backend in (table.vllm, table.reference):  # nothing to rank there either
        assert backend.top_k([(1, 3)], 5, constraint=[stuck]).entries[0].token_ids == ()


def test_constrained_power_sampling_matches_pi_g(table: Any) -> None:
    """Token-level power sampling through vLLM under the automaton is close to π_G (exact, by
    enumeration), which is 0.49 away from the power of the masked model: the allowed mass the
    backend reports is what moves it there."""
    alpha, length, runs = 4.0, 3, 400
    pi_g = exact.power_distribution(table.reference, (1,), alpha, length, constraint=AUTOMATON)
    masked = exact.enumerate_completions(table.reference, (1,), length, constraint=AUTOMATON)
    weights = {x: np.exp(alpha * lq) for x, (_, lq) in masked.items()}
    naive = {x: w / sum(weights.values()) for x, w in weights.items()}
    assert exact.total_variation(naive, pi_g) > 0.4
    config = PowerSamplingConfig(
        alpha=alpha,
        block_size=1,
        top_k=5,
        num_rollouts=8,
        rollout_length=length,
        max_new_tokens=length,
    )
    gens = PowerSampler(table.vllm, config).generate_batch(
        [[1]] * runs, seed=1, constraint=AUTOMATON
    )
    counts = Counter(tuple(g.token_ids) for g in gens)
    tv = exact.total_variation({x: c / runs for x, c in counts.items()}, pi_g)
    assert tv < noise(pi_g, runs) + 0.04
    assert tv < 0.25 * exact.total_variation(naive, pi_g)


def test_constrained_mcmc_moves_toward_pi_g(table: Any) -> None:
    """MCMC under the automaton: its proposal is the masked model at temperature 1/α, whose
    masked log-probs enter the acceptance ratio; more steps bring the samples closer to π_G."""
    alpha, length, runs = 4.0, 3, 300
    pi_g = exact.power_distribution(table.reference, (1,), alpha, length, constraint=AUTOMATON)
    tvs = []
    for steps in (0, 12):
        config = PowerSamplingConfig(
            method="mcmc", alpha=alpha, block_size=length, mcmc_steps=steps, max_new_tokens=length
        )
        sampler = PowerSampler(table.vllm, config)
        gens = sampler.generate_batch([[1]] * runs, seed=2, constraint=AUTOMATON)
        counts = Counter(tuple(g.token_ids) for g in gens)
        tvs.append(exact.total_variation({x: c / runs for x, c in counts.items()}, pi_g))
    assert tvs[0] > 0.3 and tvs[1] < tvs[0] - 0.1


def test_engines_that_cannot_run_constraints_are_refused(bare_table: Any) -> None:
    from power_sampling.backends.vllm import backend as vllm_module
    from power_sampling.backends.vllm.constraints import PROCESSOR_NAME

    assert vllm_module._PROCESSOR == PROCESSOR_NAME
    root = AUTOMATON.matcher(bare_table, bare_table.stop.token_ids)
    for call in (
        lambda: bare_table.sample([(1,)], 2, 3, seed=0, constraint=[root]),
        lambda: bare_table.top_k([(1,)], 3, constraint=[root]),
    ):
        with pytest.raises(ValueError, match="logits_processors"):
            call()
    assert len(bare_table.sample([(1,)], 2, 3, seed=0, constraint=[None]).continuations[0]) == 2
