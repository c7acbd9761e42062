"""The critical path by the algorithms' arithmetic: the sequential model runs one generation
waits for, which the bench's counts are checked against."""

from __future__ import annotations

from ..config import PowerSamplingConfig


def expected_sequential_steps(config: PowerSamplingConfig, method: str, tokens: int) -> float:
    """The sequential model runs of one generation of ``tokens`` tokens (every method run to
    full length, one prompt, the transformers backend), by the algorithms' arithmetic.

    With n = ceil(tokens / B) blocks: standard decoding runs the prompt once and then one step
    per token. Power sampling's first candidate call prefills the prompt and runs B steps; every
    later one continues the chosen block's kept row (B steps), and each rollout call continues
    the kept candidate rows (H - 1 steps after the first token; none in the last block, which
    has no tokens left to roll out). MCMC grows each block in B runs (a prefill, B - 1 steps)
    and each of its N proposals regenerates from a uniform cut: (length + 1) / 2 runs on
    average, the length growing by B per block. Power-SMC (without look-ahead) decodes its
    particles together, one interval per call with the rows kept, so it runs the prompt once and
    then one step per token, as standard decoding does. Exact for standard, power and SMC, the
    expectation for MCMC.

    The reuse fast path (``reuse_rollouts`` with L <= M and H = B): after the first block the
    chosen block's kept rollout rows are the next candidates, so a step is its rollout call
    alone (H steps, the last token run to keep the rows), and the last block none at all.
    """
    b, h, n = config.block_size, config.rollout_length, -(-tokens // config.block_size)
    if method in ("standard", "low_temperature"):
        return tokens + 1.0
    if method == "smc":
        if config.lookahead_rollouts > 0:
            raise ValueError("expected_sequential_steps covers smc without lookahead_rollouts")
        return tokens + 1.0
    if method == "power":
        if b == 1 or config.adaptive_tolerance > 0:
            raise ValueError(
                "expected_sequential_steps covers block mode (block_size > 1) without the "
                "adaptive budget"
            )
        if not config.reuse_rollouts:
            return n * b + 1.0 + sum(min(h, tokens - k * b) - 1 for k in range(1, n))
        if config.num_candidates <= config.num_rollouts and h == b:
            return b + 1.0 + sum(min(h, tokens - k * b) for k in range(1, n))
        raise ValueError("with reuse_rollouts, expected_sequential_steps needs L <= M and H = B")
    if method == "mcmc":
        lengths = [min(k * b, tokens) for k in range(1, n + 1)]
        grow = sum(length - k * b + b for k, length in enumerate(lengths, start=1))
        return grow + config.mcmc_steps * sum((length + 1) / 2 for length in lengths)
    raise ValueError(
        f"method={method!r}: expected_sequential_steps covers standard, power, mcmc, smc"
    )
