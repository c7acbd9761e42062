"""OpenAI-compatible servers side by side under the same load (completion tokens per second).

Every server gets the same workload, in turns (server A at c = 1, server B at c = 1, A at c = 8,
...), so a load that changes during the run (a shared machine) weighs on both alike: at each
concurrency c, ``rounds * c`` completions requests with distinct seeds, c of them in flight at
once, each the same body (``prompt``, ``max_tokens``, temperature 1, no truncation, plus
``extra`` fields; a server ignores the fields it does not know, as vLLM's does). Reported per
server and concurrency: completion tokens (the servers' own ``usage``) per second of wall time,
and p50 / p95 latency.

``python -m power_sampling.measure.servers --server NAME=URL --server NAME=URL ...`` writes the
table (markdown) and the points (json); ``results/vllm-async.md`` says how it was run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ServerPoint", "compare", "markdown", "wait_until_up"]


@dataclass(frozen=True)
class ServerPoint:
    """One server at one concurrency."""

    server: str
    concurrency: int
    requests: int
    completion_tokens: int
    wall_time: float
    tokens_per_second: float
    p50_latency: float
    p95_latency: float


async def _load(
    url: str, body: dict[str, Any], concurrency: int, count: int, first_seed: int
) -> tuple[list[float], int, float]:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(seed: int) -> None:
            nonlocal tokens
            async with gate:
                sent = time.perf_counter()
                response = await client.post("/v1/completions", json=body | {"seed": seed})
                response.raise_for_status()
                tokens += int(response.json()["usage"]["completion_tokens"])
                latencies.append(time.perf_counter() - sent)

        start = time.perf_counter()
        await asyncio.gather(*(one(first_seed + i) for i in range(count)))
        wall = time.perf_counter() - start
    return latencies, tokens, wall


def compare(
    servers: dict[str, str],
    *,
    model: str | dict[str, str],
    prompt: str,
    max_tokens: int = 64,
    levels: Sequence[int] = (1, 8),
    rounds: int = 2,
    extra: dict[str, Any] | None = None,
    warmup: bool = True,
) -> list[ServerPoint]:
    """Every server (name -> base URL, without ``/v1``) at every concurrency of ``levels``, in
    turns; ``model`` is the served model name, one for all or one per server. Seeds are the same
    for every server and distinct within a level."""
    points = []
    names = {name: model if isinstance(model, str) else model[name] for name in servers}
    for level in levels:
        for name, url in servers.items():
            body = {
                "model": names[name],
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "top_p": 1.0,
                **(extra or {}),
            }
            if warmup:
                asyncio.run(_load(url, body, 1, 1, 0))
            count = max(rounds * level, 1)
            latencies, tokens, wall = asyncio.run(_load(url, body, level, count, 1000))
            points.append(
                ServerPoint(
                    name,
                    level,
                    count,
                    tokens,
                    wall,
                    tokens / wall if wall > 0 else 0.0,
                    float(np.percentile(latencies, 50)),
                    float(np.percentile(latencies, 95)),
                )
            )
    return points


def markdown(points: Sequence[ServerPoint], reference: str) -> str:
    """The points as a table, each server's throughput against ``reference``'s at the same
    concurrency."""
    base = {p.concurrency: p.tokens_per_second for p in points if p.server == reference}
    lines = [
        f"| server | concurrency | requests | tokens/s | vs {reference} | p50 latency (s) | "
        "p95 latency (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        ratio = p.tokens_per_second / base[p.concurrency] if base.get(p.concurrency) else np.nan
        lines.append(
            f"| {p.server} | {p.concurrency} | {p.requests} | {p.tokens_per_second:.1f} | "
            f"{ratio:.2f} | {p.p50_latency:.2f} | {p.p95_latency:.2f} |"
        )
    return "\n".join(lines) + "\n"


def wait_until_up(url: str, timeout: float = 600.0) -> str:
    """Wait for the server at ``url`` to list its models; returns the first model's id."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(f"{url}/v1/models", timeout=5)
            if response.status_code == 200:
                return str(response.json()["data"][0]["id"])
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server at {url} did not come up in {timeout:.0f} s")
        time.sleep(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="append", required=True, metavar="NAME=URL")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--extra", default="{}", help="JSON fields added to every request body")
    parser.add_argument("--out", metavar="STEM", help="write STEM.md and STEM.json")
    args = parser.parse_args(argv)
    servers = dict(s.split("=", 1) for s in args.server)
    models = {name: wait_until_up(url) for name, url in servers.items()}
    levels = [int(c) for c in args.concurrency.split(",")]
    points = compare(
        servers,
        model=models,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        levels=levels,
        rounds=args.rounds,
        extra=json.loads(args.extra),
    )
    table = markdown(points, next(iter(servers)))
    print(table)
    if args.out:
        Path(f"{args.out}.md").write_text(table)
        Path(f"{args.out}.json").write_text(json.dumps([asdict(p) for p in points], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
