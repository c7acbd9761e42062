"""The ``temperature`` field on a table model, exactly: 0 is greedy (the arg-max path) and T
draws from p^(1/T) per token, for ``standard`` and ``low_temperature``.

Noise bound as in ``test_samplers_exact``: E[TV(empirical, q)] <= 1/2 sum_x sqrt(q(1-q)/n) for
n independent draws, and the tests allow 3x that.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from tables import EOS, random_table

from power_sampling import PowerSampler, PowerSamplingConfig, exact
from power_sampling.backends.transformers.draws import draw, scaled_log_softmax
from power_sampling.exact import total_variation

PROMPT = (1,)
LENGTH = 4


def arg_max_path(lm, prompt, length: int) -> tuple[int, ...]:
    """The greedy completion, walked by hand: the most likely token (lowest id among equals)."""
    seq, out = list(prompt), []
    while len(out) < length:
        token = int(np.argmax(lm.probs(seq)))
        seq.append(token)
        out.append(token)
        if token == EOS:
            break
    return tuple(out)


@pytest.mark.parametrize("method", ["standard", "low_temperature"])
@pytest.mark.parametrize("block_size", [1, 3])
@pytest.mark.parametrize("table_seed", [0, 3, 7])
def test_temperature_zero_is_the_arg_max_path(method: str, block_size: int, table_seed: int):
    lm = random_table(5, table_seed, concentration=0.3)
    config = PowerSamplingConfig(
        method=method, temperature=0, block_size=block_size, max_new_tokens=LENGTH
    )
    sampler = PowerSampler(lm, config)
    expected = arg_max_path(lm, PROMPT, LENGTH)
    outputs = {tuple(sampler.generate(list(PROMPT), seed=s).token_ids) for s in range(20)}
    assert outputs == {expected}
    # the exact law at temperature 0 is the same single path
    law = exact.base_distribution(lm, PROMPT, LENGTH, temperature=0.0)
    assert {x for x, q in law.items() if q > 0} == {expected}


def test_temperature_zero_in_the_transformers_draw():
    """Greedy on the device: the arg-max of every row whatever its uniform, proposal log-prob 0,
    masked (-inf) logits never chosen."""
    logits = torch.tensor([[0.1, 3.0, 3.0, -1.0], [float("-inf"), 1.0, 2.0, 0.0]])
    assert scaled_log_softmax(logits, 0.0).exp().tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    for u in (0.0, 0.5, 1 - 2**-53):
        token, base, proposal = draw(logits, 0.0, torch.tensor([u, u]))
        assert token.tolist() == [1, 2]
        assert proposal.tolist() == [0.0, 0.0]
        assert base.tolist() == pytest.approx(
            torch.log_softmax(logits, -1)[[0, 1], [1, 2]].tolist()
        )


@pytest.mark.parametrize(
    ("method", "temperature"),
    [("standard", 0.5), ("standard", 2.0), ("low_temperature", 0.7), ("standard", 1.0)],
)
def test_temperature_samples_p_to_the_one_over_t(method: str, temperature: float):
    lm = random_table(4, 0)
    config = PowerSamplingConfig(
        method=method, temperature=temperature, alpha=4.0, block_size=2, max_new_tokens=3
    )
    sampler = PowerSampler(lm, config)
    runs = 6000
    counts = Counter(tuple(sampler.generate(list(PROMPT), seed=i).token_ids) for i in range(runs))
    law = exact.base_distribution(lm, PROMPT, 3, temperature=temperature)
    bound = 3 * 0.5 * sum(np.sqrt(q * (1 - q) / runs) for q in law.values())
    sampled = {x: c / runs for x, c in counts.items()}
    assert total_variation(sampled, law) <= bound
    # and the test can tell: unless T = 1 the samples are far from the model's own law
    if temperature != 1.0:
        assert total_variation(sampled, exact.base_distribution(lm, PROMPT, 3)) > bound


def test_low_temperature_defaults_to_one_over_alpha():
    lm = random_table(4, 0)
    config = PowerSamplingConfig(method="low_temperature", alpha=2.0, max_new_tokens=3)
    given = config.replace(temperature=0.5)
    a = [PowerSampler(lm, config).generate(list(PROMPT), seed=i).token_ids for i in range(50)]
    b = [PowerSampler(lm, given).generate(list(PROMPT), seed=i).token_ids for i in range(50)]
    assert a == b
