"""The paper-settings speed run on one GPU, with nothing to download (under 8 minutes on a
Qwen2.5-7B-shaped model in bfloat16).

    python tests/gpu/paper_bench.py                     # random:qwen2.5-7b on cuda
    python tests/gpu/paper_bench.py --model random:qwen2.5-1.5b --json-out gpu-bench.json

Runs standard decoding, scalable power sampling (the paper's algorithm), its reuse fast path
(``reuse_rollouts`` with L = M), Power-SMC (``num_particles`` particles, no look-ahead) and MCMC
power sampling at the paper's settings (α 4,
B = H = 192, K = M = 8, L = 32, 10 MCMC steps per block) for 768 new tokens (4 blocks), end
tokens ignored so every method runs to full length: one prompt, then a batch of 8. For each it
prints wall time, sequential model steps (the critical path) and seconds per step, and
extrapolates to the paper's 3072 tokens: the expected steps at 3072
(:func:`power_sampling.measure.bench.expected_sequential_steps`) times the measured seconds per
step.
The extrapolation holds the cost of a step fixed, so it leaves out that attention grows with the
context (small next to a 7B model's weights at 3k tokens, but not nothing).

MCMC runs at batch 1 only, and only when its estimated time (standard's seconds per step times
its expected steps) fits in what is left of ``--budget-s``: its chains share one call per
Metropolis-Hastings step, so a batch waits for its longest regeneration every time, and at 768
tokens it alone would take most of the budget. A method that fails (e.g. out of GPU memory) is
reported as failed and the run goes on. ``--set key=value`` overrides a setting (the CPU test
runs ``random:tiny`` with small blocks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from power_sampling import PowerSampler, PowerSamplingConfig
from power_sampling.backends import IgnoreEOS
from power_sampling.backends.models import resolve_model
from power_sampling.measure.bench import expected_sequential_steps, hardware, token_prompts

PAPER_TOKENS = 3072


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:qwen2.5-7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU")
    parser.add_argument("--tokens", type=int, default=768, help="new tokens (4 blocks of 192)")
    parser.add_argument("--batch", type=int, default=8, help="prompts in the batched run")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip MCMC beyond this")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=512,
        help="rows per model run: the batch's 8 x K x M = 512 rollouts in one run (a smaller "
        "cap splits a call into runs one after another, which lengthens the critical path)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json-out", default=None)
    return parser.parse_args(argv)


def settings(pairs: list[str], tokens: int) -> PowerSamplingConfig:
    overrides: dict[str, Any] = {"max_new_tokens": tokens}
    for pair in pairs:
        key, _, value = pair.partition("=")
        kind = type(PowerSamplingConfig.model_fields[key].default)
        overrides[key] = value.lower() == "true" if kind is bool else kind(value)
    return PowerSamplingConfig.preset("paper", **overrides)


def measure(
    sampler: PowerSampler, prompts: list[list[int]], method: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    """One batched generation of ``prompts``; wall time, steps and seconds per step."""
    _sync()
    start = time.perf_counter()
    outs = sampler.generate_batch(prompts, seed=0, **overrides)
    _sync()
    wall = time.perf_counter() - start
    # Prompts of one batch share every call: the batch's critical path is any one's count.
    steps = max(o.stats.sequential_steps for o in outs)
    return {
        "method": method,
        "prompts": len(prompts),
        "wall_s": wall,
        "sequential_steps": steps,
        "s_per_step": wall / max(steps, 1),
        "completion_tokens": sum(len(o.token_ids) for o in outs),
        "forward_tokens": sum(o.stats.forward_tokens for o in outs),
    }


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    config = settings(args.set, args.tokens)
    began = time.perf_counter()
    kwargs: dict[str, Any] = {"device": args.device, "max_batch_size": args.max_batch_size}
    kwargs.update({"dtype": args.dtype} if args.dtype else {})
    backend = IgnoreEOS(resolve_model(args.model, **kwargs))
    sampler = PowerSampler(backend, config)
    paper = dict(method="power", adaptive_tolerance=0.0, reuse_rollouts=False)
    fast = dict(paper, reuse_rollouts=True, num_candidates=config.num_rollouts)
    smc = dict(method="smc", lookahead_rollouts=0)
    methods = [("standard", dict(method="standard")), ("power", paper), ("power+fast", fast)]
    methods.append(("smc", smc))
    prompts = token_prompts(backend, args.batch, length=64)
    sampler.generate(prompts[0], max_new_tokens=8, method="standard")  # warm-up
    print(f"{args.model} on {hardware()}; built in {time.perf_counter() - began:.0f} s", flush=True)
    rows: list[dict[str, Any]] = []
    for batch in (prompts[:1], prompts):
        for name, overrides in methods:
            rows.append(_run(sampler, batch, name, overrides))
        if len(batch) == 1:
            standard = rows[0]
            estimate = standard["s_per_step"] * expected_sequential_steps(
                config, "mcmc", args.tokens
            )
            left = args.budget_s - (time.perf_counter() - began)
            if estimate < left:
                rows.append(_run(sampler, batch, "mcmc", dict(method="mcmc")))
            else:
                rows.append(
                    {"method": "mcmc", "prompts": 1, "skipped": f"estimated {estimate:.0f} s"}
                )
    report = extrapolate(rows, config, args.tokens)
    report.update(model=args.model, hardware=hardware(), settings=config.model_dump())
    print(table(report))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _run(
    sampler: PowerSampler, batch: list[list[int]], name: str, overrides: dict[str, Any]
) -> dict[str, Any]:
    try:
        row = measure(sampler, batch, name, overrides)
    except Exception as error:  # e.g. out of GPU memory: report it, measure the rest
        row = {"method": name, "prompts": len(batch), "failed": f"{type(error).__name__}: {error}"}
    print(json.dumps(row), flush=True)
    return row


def extrapolate(rows: list[dict[str, Any]], config: PowerSamplingConfig, tokens: int) -> dict:
    """Each measured row's expected steps and time at 3072 tokens, and the ratios per batch."""
    setting = {
        "standard": config.replace(method="standard"),
        "power": config.replace(reuse_rollouts=False),
        "power+fast": config.replace(reuse_rollouts=True, num_candidates=config.num_rollouts),
        "mcmc": config,
        "smc": config.replace(method="smc", lookahead_rollouts=0),
    }
    for row in rows:
        if "wall_s" not in row:
            continue
        method = "power" if row["method"].startswith("power") else row["method"]
        cfg = setting[row["method"]]
        row["expected_steps"] = expected_sequential_steps(cfg, method, tokens)
        row["steps_at_3072"] = expected_sequential_steps(cfg, method, PAPER_TOKENS)
        row["s_at_3072"] = row["s_per_step"] * row["steps_at_3072"]
    ratios: dict[str, dict[str, float]] = {}
    for size in sorted({r["prompts"] for r in rows}):
        got = {r["method"]: r for r in rows if r["prompts"] == size and "wall_s" in r}
        pairs = [("mcmc", "power"), ("power", "standard"), ("power+fast", "standard")]
        pairs += [("power", "power+fast"), ("smc", "standard"), ("power", "smc")]
        ratios[f"batch {size}"] = {
            f"{a} / {b}: {key}": got[a][key] / got[b][key]
            for a, b in pairs
            if a in got and b in got
            for key in ("wall_s", "sequential_steps", "s_at_3072")
        }
    return {"tokens": tokens, "rows": rows, "ratios": ratios}


def table(report: dict[str, Any]) -> str:
    lines = [
        f"| method | prompts | s | sequential steps (expected) | ms / step | s at {PAPER_TOKENS} "
        "(extrapolated) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "wall_s" not in r:
            why = r.get("skipped", r.get("failed"))
            lines.append(f"| {r['method']} | {r['prompts']} | {why} |")
            continue
        lines.append(
            f"| {r['method']} | {r['prompts']} | {r['wall_s']:.1f} | {r['sequential_steps']} "
            f"({r['expected_steps']:.0f}) | {1e3 * r['s_per_step']:.1f} | {r['s_at_3072']:.0f} |"
        )
    for batch, ratios in report["ratios"].items():
        lines.append(f"\n{batch}:")
        lines += [f"- {name}: {value:.2f}" for name, value in ratios.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
