"""The cost of a constraint: each method with and without it, on the same prompts and seeds."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..progress import progress_bar
from ..samplers.power_sampler import PowerSampler, Prompt
from .hardware import hardware
from .workload import full_length


def constraint_overhead(
    sampler: PowerSampler,
    prompts: Sequence[Prompt],
    constraint: Any,
    *,
    methods: Sequence[str] = ("standard", "power"),
    seed: int = 0,
    samples: int = 1,
    ignore_eos: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The cost of a constraint (a :class:`~power_sampling.constraints.Constraint`): each
    method with and without it, alternately on the same prompts and seeds.

    Compare at equal lengths with ``ignore_eos`` and a constraint that cannot end before
    ``max_new_tokens`` (e.g. ``Constraint.regex("[a-z ,.]{500}")``): otherwise a free output may
    end at once and the two sides run different mixes of prefill and decode.

    Reported per method: seconds per forward token (a position the model ran, rollouts and
    candidates included: every one of them needs a mask under the constraint) both ways, the
    overhead per forward token and the ratio; and seconds per completion token, which also
    reflects that constrained outputs differ in length (a free output may end at once). The
    first constrained call, which compiles the grammar, runs before timing. With ``progress``,
    a tqdm bar per method on stderr counts its prompts (each run free and constrained).
    """
    if ignore_eos:
        sampler = full_length(sampler)
    sampler.generate(prompts[0], seed=seed, max_new_tokens=1, constraint=constraint)
    rows = []
    for method in methods:
        totals = {"free": [0.0, 0, 0], "constrained": [0.0, 0, 0]}  # seconds, forward, output
        units = [p for p in prompts for _ in range(samples)]
        with progress_bar(len(units), desc=method, unit="prompt", progress=progress) as bar:
            for i, prompt in enumerate(units):
                for kind, given in (("free", None), ("constrained", constraint)):
                    start = time.perf_counter()
                    out = sampler.generate(prompt, seed=seed + i, method=method, constraint=given)
                    totals[kind][0] += time.perf_counter() - start
                    totals[kind][1] += out.stats.forward_tokens
                    totals[kind][2] += len(out.token_ids)
                bar.update(1)
        free, held = totals["free"], totals["constrained"]
        per_free, per_held = free[0] / max(free[1], 1), held[0] / max(held[1], 1)
        rows.append(
            {
                "method": method,
                "seconds_per_forward_token": per_free,
                "constrained_seconds_per_forward_token": per_held,
                "overhead_per_forward_token": per_held - per_free,
                "ratio": per_held / per_free if per_free else float("nan"),
                "seconds_per_completion_token": free[0] / max(free[2], 1),
                "constrained_seconds_per_completion_token": held[0] / max(held[2], 1),
                "forward_tokens": int(free[1]),
                "constrained_forward_tokens": int(held[1]),
                "completion_tokens": int(free[2]),
                "constrained_completion_tokens": int(held[2]),
            }
        )
    return {
        "constraint": repr(constraint),
        "hardware": hardware(),
        "ignore_eos": ignore_eos,
        "methods": rows,
    }


def constraint_markdown(report: dict[str, Any]) -> str:
    """The constraint-overhead report as a markdown table."""
    lines = [
        f"Constraint: `{report['constraint']}` on {report['hardware']}"
        + ("; end tokens ignored" if report.get("ignore_eos") else ""),
        "",
        "| method | ms/forward token free | constrained | overhead ms | ratio "
        "| completion tokens free / constrained |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["methods"]:
        lines.append(
            f"| {row['method']} | {1e3 * row['seconds_per_forward_token']:.2f} | "
            f"{1e3 * row['constrained_seconds_per_forward_token']:.2f} | "
            f"{1e3 * row['overhead_per_forward_token']:+.2f} | {row['ratio']:.2f} | "
            f"{row['completion_tokens']} / {row['constrained_completion_tokens']} |"
        )
    return "\n".join(lines)


def mask_overhead(
    backend: Any, plain: Any, wrapped: Any, *, length: int, runs: int = 10, seed: int = 0
) -> dict[str, Any]:
    """Seconds per token to mask and accept under two constraints on the same outputs: random
    walks of ``length`` tokens drawn uniformly among the tokens ``wrapped`` allows (so ``plain``,
    a looser constraint, allows them too), each replayed through a fresh matcher of either
    constraint, alternately. For a budgeted constraint against its inner one, this is the price
    of the budget per masked position, model time aside."""
    import numpy as np

    from ..constraints import allowed_tokens, new_bitmask

    stop, vocab = backend.stop.token_ids, backend.vocab_size
    rng = np.random.default_rng(seed)
    walks = []
    for _ in range(runs):
        matcher, walk = wrapped.matcher(backend, stop), []
        for _ in range(length):
            token = int(rng.choice(np.flatnonzero(allowed_tokens(matcher, vocab))))
            walk.append(token)
            if token in stop or not matcher.accept(token):
                break
        walks.append(walk)
    seconds = {"plain": 0.0, "wrapped": 0.0}
    bitmask = new_bitmask(1, vocab)
    for walk in walks:
        for kind, constraint in (("plain", plain), ("wrapped", wrapped)):
            matcher = constraint.matcher(backend, stop)
            start = time.perf_counter()
            for token in walk:
                matcher.fill_bitmask(bitmask, 0)
                if token not in stop:
                    matcher.accept(token)
            seconds[kind] += time.perf_counter() - start
    tokens = sum(len(w) for w in walks)
    return {
        "plain": repr(plain),
        "wrapped": repr(wrapped),
        "hardware": hardware(),
        "tokens": tokens,
        "plain_seconds_per_token": seconds["plain"] / tokens,
        "wrapped_seconds_per_token": seconds["wrapped"] / tokens,
        "ratio": seconds["wrapped"] / seconds["plain"],
    }
