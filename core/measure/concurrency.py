"""Throughput and latency under concurrent load, on the engine every entry point uses.

For each method and each concurrency c, c requests with distinct seeds (and, with
``mixed=True``, alternating lengths) are submitted at once to a fresh
:class:`~power_sampling.engine.scheduler.Scheduler` over the backend, with the model's end
tokens ignored so every request runs its full length. Reported per point: completion tokens per
second over the whole run, p50 and p95 latency of the requests, and the backend calls made (the
merged calls of all requests; none where the engine batches the requests' calls itself, e.g.
vLLM's async engine). The ratio of a point's throughput to the same method's at c = 1 is
what continuous batching buys.

:func:`short_behind_long` measures the other half: the latency of a short request sent while a
long one runs, against the long one's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..backends.ignore_eos import IgnoreEOS
from ..config import PowerSamplingConfig
from ..engine.scheduler import Scheduler
from ..request import Prompt, Request

__all__ = ["LoadPoint", "as_json", "load_markdown", "plot_load", "run_load", "short_behind_long"]


@dataclass(frozen=True)
class LoadPoint:
    """One method at one concurrency."""

    method: str
    concurrency: int
    requests: int
    completion_tokens: int
    wall_time: float
    tokens_per_second: float
    p50_latency: float
    p95_latency: float
    backend_calls: int | None
    """Merged calls; None where the scheduler does not merge (the engine batches itself)."""


def _run(
    backend: Backend, requests: Sequence[Request], *, max_batch: int, merge: bool | None = None
) -> tuple[list[float], int, float, int | None]:
    scheduler = Scheduler(
        IgnoreEOS(backend), max_batch=max_batch, max_queue=len(requests), merge=merge
    )
    start = time.perf_counter()
    jobs = [scheduler.submit(r) for r in requests]
    ends: list[float] = [0.0] * len(jobs)

    def stamp(i: int) -> Any:
        def record(_: Any) -> None:
            ends[i] = time.perf_counter()

        return record

    for i, job in enumerate(jobs):
        job.future.add_done_callback(stamp(i))
    results = [job.future.result() for job in jobs]
    wall = max(ends) - start
    tokens = sum(len(g.token_ids) for g in results)
    calls = scheduler.batcher.calls if scheduler.merge else None
    return [e - start for e in ends], tokens, wall, calls


def run_load(
    backend: Backend,
    configs: dict[str, PowerSamplingConfig],
    prompts: Sequence[Prompt],
    levels: Sequence[int] = (1, 4, 16),
    *,
    mixed: bool = True,
    merge: bool | None = None,
) -> list[LoadPoint]:
    """Every method of ``configs`` at every concurrency of ``levels`` (see the module docstring);
    c = 1 is one request alone, the baseline of the ratios. ``merge`` goes to the
    :class:`~power_sampling.engine.scheduler.Scheduler` (None: its default)."""
    points = []
    for method, config in configs.items():
        warm = [Request(prompts[0], config.replace(seed=0))]
        _run(backend, warm, max_batch=1, merge=merge)
        for level in levels:
            requests = []
            for i in range(max(level, 1)):
                half = i % 2 == 1 and mixed
                length = config.max_new_tokens // 2 if half else config.max_new_tokens
                settings = config.replace(seed=1000 + i, max_new_tokens=max(length, 1))
                requests.append(Request(prompts[i % len(prompts)], settings))
            latencies, tokens, wall, calls = _run(backend, requests, max_batch=level, merge=merge)
            points.append(
                LoadPoint(
                    method,
                    level,
                    len(requests),
                    tokens,
                    wall,
                    tokens / wall if wall > 0 else 0.0,
                    float(np.percentile(latencies, 50)),
                    float(np.percentile(latencies, 95)),
                    calls,
                )
            )
    return points


def short_behind_long(
    backend: Backend,
    long: PowerSamplingConfig,
    short: PowerSamplingConfig,
    prompt: Prompt,
    *,
    delay: float = 1.0,
) -> dict[str, float]:
    """Latency of a ``short`` request sent ``delay`` seconds into a ``long`` one, against the
    long one's and against the short one alone."""
    alone, _, _, _ = _run(backend, [Request(prompt, short)], max_batch=1)
    scheduler = Scheduler(IgnoreEOS(backend))
    start = time.perf_counter()
    first = scheduler.submit(Request(prompt, long))
    time.sleep(delay)
    sent = time.perf_counter()
    second = scheduler.generate(Request(prompt, short))
    short_latency = time.perf_counter() - sent
    first.future.result()
    long_latency = time.perf_counter() - start
    assert second.token_ids is not None
    return {
        "short_latency": short_latency,
        "short_alone": alone[0],
        "long_latency": long_latency,
        "short_over_long": short_latency / long_latency,
    }


def load_markdown(points: Sequence[LoadPoint], behind: dict[str, float] | None = None) -> str:
    """The points as a table, with each method's throughput against its own c = 1."""
    base = {p.method: p.tokens_per_second for p in points if p.concurrency == 1}
    lines = [
        "| method | concurrency | tokens/s | vs c=1 | p50 latency (s) | p95 latency (s) | "
        "backend calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        ratio = p.tokens_per_second / base[p.method] if base.get(p.method) else float("nan")
        lines.append(
            f"| {p.method} | {p.concurrency} | {p.tokens_per_second:.1f} | {ratio:.2f}x | "
            f"{p.p50_latency:.2f} | {p.p95_latency:.2f} | "
            f"{'—' if p.backend_calls is None else p.backend_calls} |"
        )
    if behind:
        lines += [
            "",
            f"A short request sent during a long one: {behind['short_latency']:.2f} s "
            f"({behind['short_alone']:.2f} s alone) against the long one's "
            f"{behind['long_latency']:.2f} s ({behind['short_over_long']:.2f} of it).",
        ]
    return "\n".join(lines) + "\n"


def as_json(points: Sequence[LoadPoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]


def plot_load(points: Sequence[LoadPoint], path: str) -> None:
    """Throughput and p95 latency against concurrency, one line per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, late) = plt.subplots(1, 2, figsize=(9, 3.5))
    for method in dict.fromkeys(p.method for p in points):
        mine = [p for p in points if p.method == method]
        levels = [p.concurrency for p in mine]
        rate.plot(levels, [p.tokens_per_second for p in mine], marker="o", label=method)
        late.plot(levels, [p.p95_latency for p in mine], marker="o", label=method)
    rate.set(xlabel="concurrent requests", ylabel="completion tokens / s")
    late.set(xlabel="concurrent requests", ylabel="p95 latency (s)")
    ticks = sorted({p.concurrency for p in points})
    for axes in (rate, late):  # log scale, ticks at the measured levels only
        axes.set_xscale("log")
        axes.set_xticks(ticks, [str(c) for c in ticks])
        axes.minorticks_off()
    rate.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
