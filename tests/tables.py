"""Small table models for exact tests: vocabularies of at most 6 tokens, token 0 = EOS."""

from __future__ import annotations

import numpy as np

from power_sampling import TableLM

EOS = 0


def random_table(vocab_size: int, seed: int, concentration: float = 0.5) -> TableLM:
    """Next-token distributions drawn from a Dirichlet per context (the last two tokens)."""
    rng = np.random.default_rng(seed)
    tables: dict[tuple[int, ...], np.ndarray] = {}

    def probs(prefix: tuple[int, ...]) -> np.ndarray:
        key = prefix[-2:]
        if key not in tables:
            tables[key] = rng.dirichlet(np.full(vocab_size, concentration))
        return tables[key]

    return TableLM(probs, EOS, vocab_size=vocab_size)


def rarely_ending_table(
    vocab_size: int, seed: int, eos: float = 0.05, concentration: float = 0.5
) -> TableLM:
    """Like ``random_table`` but EOS has a fixed small probability, so sequences run for
    several blocks (what rollout reuse and multi-block tests need)."""
    rng = np.random.default_rng(seed)
    tables: dict[tuple[int, ...], np.ndarray] = {}

    def probs(prefix: tuple[int, ...]) -> np.ndarray:
        key = prefix[-2:]
        if key not in tables:
            rest = rng.dirichlet(np.full(vocab_size - 1, concentration)) * (1 - eos)
            tables[key] = np.concatenate([[eos], rest])
        return tables[key]

    return TableLM(probs, EOS, vocab_size=vocab_size)


def few_good_futures() -> TableLM:
    """The two-step example where power sampling and low temperature disagree.

    Tokens: 0 EOS, 1 a, 2 b, 3 c, 4 d. After the prompt: p(a) = 0.6, p(b) = 0.4. After a, three
    tokens are equally likely (1/3 each); after b, one token is certain. See
    ``test_hand_derived_two_step_example`` for the arithmetic.
    """

    def probs(prefix: tuple[int, ...]) -> list[float]:
        generated = prefix[1:]
        if len(generated) == 0:
            return [0.0, 0.6, 0.4, 0.0, 0.0]
        if generated[0] == 1:
            return [0.0, 0.0, 1 / 3, 1 / 3, 1 / 3]
        return [0.0, 0.0, 0.0, 1.0, 0.0]

    return TableLM(probs, EOS, vocab_size=5)


def early_stop_trap() -> TableLM:
    """A hand-made model with EOS at several depths: ending now vs a peaked long future."""

    def probs(prefix: tuple[int, ...]) -> list[float]:
        generated = prefix[1:]
        last = generated[-1] if generated else None
        if last is None:
            return [0.3, 0.25, 0.25, 0.2]
        if last == 1:
            return [0.1, 0.0, 0.9, 0.0]
        if last == 2:
            return [0.4, 0.2, 0.2, 0.2]
        return [0.25, 0.25, 0.25, 0.25]

    return TableLM(probs, EOS, vocab_size=4)
