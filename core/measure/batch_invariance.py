"""How often batched arithmetic alone changes a seeded request's draws.

``python -m power_sampling.measure.batch_invariance [--seeds 20] [--out DIR]`` runs each seeded
request twice on the engine every entry point uses
(:class:`~power_sampling.engine.scheduler.Scheduler`): alone, and merged with
``--neighbours`` concurrent requests of other seeds, methods and lengths. The random numbers are
the request's own either way (one stream per prefix), so any difference comes from the model's
arithmetic: a merged call runs the request's rows in a larger, differently padded batch, whose
float32 sums round differently, and a token whose cumulative probability lies within that
rounding of the row's uniform can flip. Reported per method: how many seeds gave other tokens,
and where the first difference fell. vLLM documents the same limit for its batches.

On a float64 model the two runs agree exactly (``tests/engine/test_continuous_batching.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..backends.models import DEFAULT_MODEL, resolve_model
from ..config import PowerSamplingConfig
from ..engine.scheduler import Scheduler
from ..request import Request

PROMPT = [{"role": "user", "content": "What is 17 * 24? Think step by step."}]
METHODS: dict[str, dict[str, Any]] = {
    "standard": dict(method="standard", max_new_tokens=32),
    "power": dict(
        method="power",
        max_new_tokens=12,
        block_size=4,
        num_candidates=4,
        top_k=2,
        num_rollouts=2,
        rollout_length=8,
    ),
}
NEIGHBOURS = [  # other methods and lengths, so the merged calls have other shapes
    dict(METHODS["standard"], max_new_tokens=20),
    dict(METHODS["power"], max_new_tokens=8),
    dict(method="low_temperature", max_new_tokens=24),
    dict(METHODS["standard"], max_new_tokens=40),
]


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where ``a`` and ``b`` differ (a length difference counts), or None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(backend: Backend, method: str, seed: int, neighbours: int) -> int | None:
    """Where the request of ``method`` and ``seed`` first draws differently among
    ``neighbours`` other requests than alone (None: the same tokens)."""
    target = Request(PROMPT, PowerSamplingConfig(**METHODS[method], seed=seed))
    alone = Scheduler(backend).generate(target)
    others = [
        Request(PROMPT, PowerSamplingConfig(**NEIGHBOURS[i % len(NEIGHBOURS)], seed=10_000 + i))
        for i in range(neighbours)
    ]
    scheduler = Scheduler(backend)
    half = len(others) // 2
    jobs = [scheduler.submit(r) for r in [*others[:half], target, *others[half:]]]
    results = [job.future.result() for job in jobs]
    return first_difference(alone.token_ids, results[half].token_ids)


def run(backend: Backend, seeds: int, neighbours: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for method in METHODS:
        where = [compare(backend, method, seed, neighbours) for seed in range(seeds)]
        changed = [w for w in where if w is not None]
        report[method] = {
            "settings": METHODS[method],
            "seeds": seeds,
            "changed": len(changed),
            "first_difference_at": where,
        }
    return report


def markdown(report: dict[str, Any], command: str, neighbours: int, model: str) -> str:
    lines = [
        "# Batched arithmetic and seeded draws",
        "",
        f"Made by `{command}` on {datetime.date.today()}, "
        f"{platform.machine()} CPU, model {model} (float32).",
        "",
        f"Each seeded request ran alone and merged with {neighbours} concurrent requests of "
        "other seeds, methods and lengths; its random numbers are its own either way, so a "
        "difference comes from the batch's float32 rounding alone.",
        "",
        "| method | settings | seeds | seeds with other tokens | first difference at token |",
        "|---|---|---|---|---|",
    ]
    for method, row in report.items():
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items() if k != "method")
        at = sorted(w for w in row["first_difference_at"] if w is not None)
        lines.append(
            f"| {method} | {settings} | {row['seeds']} | {row['changed']} | "
            f"{', '.join(map(str, at)) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m power_sampling.measure.batch_invariance", description=__doc__
    )
    parser.add_argument("--seeds", type=int, default=20, help="seeds per method (default 20)")
    parser.add_argument("--neighbours", type=int, default=7, help="requests beside it (7)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or path")
    parser.add_argument("--out", default="results", help="directory for the .md and .json")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.neighbours < 1:
        parser.error("--seeds and --neighbours must be >= 1")
    backend = resolve_model(args.model)
    report = run(backend, args.seeds, args.neighbours)
    command = "python -m power_sampling.measure.batch_invariance " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report, command.strip(), args.neighbours, args.model)
    (out / "batch-invariance.md").write_text(text)
    (out / "batch-invariance.json").write_text(json.dumps(report, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
