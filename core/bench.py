"""``power-sampling bench``: cost of power sampling against MCMC, standard decoding and the
hardware, measured side by side in one run on one model and one prompt set.

Reported per method: wall time per prompt, forward tokens (positions the model ran), completion
tokens, and the mean base log-likelihood per token of the outputs (the sharpening achieved).
Derived: the speed-up over MCMC at matched settings, the overhead over standard decoding, the
effect of the options beyond the paper, and the power sampler's forward tokens per second
against the same model's plain batched ``generate`` at the rollout batch size (the hardware
limit for this workload). Timings on shared machines are noisy: read ratios, not absolutes.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .sampler import PowerSampler, Prompt

BENCH_PROMPTS: tuple[str, ...] = (
    "A baker makes 24 muffins and sells 3 boxes of 6. How many muffins are left?",
    "Tom has 5 apples, buys 7 more and gives 4 away. How many apples does he have?",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
    "Sara reads 12 pages a day. How many pages does she read in 2 weeks?",
)


@dataclass
class MethodResult:
    name: str
    settings: dict[str, Any]
    prompts: int
    wall_time_per_prompt: float
    forward_tokens: int
    completion_tokens: int
    loglik_per_token: float
    """Mean over prompts of log p(completion) / its length."""


def run_method(
    sampler: PowerSampler,
    name: str,
    prompts: Sequence[Prompt],
    seed: int,
    **overrides: Any,
) -> MethodResult:
    """Generate every prompt one at a time (latency per prompt, as the paper reports)."""
    config = sampler.config.replace(**overrides)
    walls, forward, completion, logliks = [], 0, 0, []
    for i, prompt in enumerate(prompts):
        start = time.perf_counter()
        out = sampler.generate(prompt, seed=seed + i, **overrides)
        walls.append(time.perf_counter() - start)
        forward += out.stats.forward_tokens
        completion += len(out.token_ids)
        logliks.append(out.logprob / max(len(out.token_ids), 1))
    return MethodResult(
        name=name,
        settings=config.model_dump(),
        prompts=len(prompts),
        wall_time_per_prompt=sum(walls) / len(walls),
        forward_tokens=forward,
        completion_tokens=completion,
        loglik_per_token=sum(logliks) / len(logliks),
    )


def plain_generate_throughput(
    backend: Any, prompt_ids: list[int], batch: int, length: int
) -> float:
    """Forward tokens per second of the model's own ``generate`` at this batch size and length
    (sampling at temperature 1, no truncation): the reference the sampler is held to."""
    import torch

    model = backend.model
    ids = torch.tensor([prompt_ids] * batch, device=model.device)
    kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)  # warm-up
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=length, min_new_tokens=length, **kwargs)
        elapsed = time.perf_counter() - start
    generated = out.shape[1] - len(prompt_ids)
    return batch * (len(prompt_ids) + generated) / elapsed


def peak_memory_mb() -> float:
    """Peak accelerator memory when on CUDA, else the process's peak resident memory."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bench(
    sampler: PowerSampler,
    prompts: Sequence[Prompt] = BENCH_PROMPTS,
    *,
    seed: int = 0,
    options: bool = True,
) -> dict[str, Any]:
    """Run every method on the same prompts; return the measurements and their ratios."""
    chat = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    cfg = sampler.config
    methods: list[tuple[str, dict[str, Any]]] = [
        ("standard", dict(method="standard")),
        ("power", dict(method="power")),
        ("mcmc", dict(method="mcmc")),
    ]
    if options:
        methods += [
            ("power+adaptive", dict(method="power", adaptive_tolerance=0.05)),
            ("power+reuse", dict(method="power", reuse_rollouts=True)),
        ]
    results = {name: run_method(sampler, name, chat, seed, **o) for name, o in methods}
    power, mcmc, standard = results["power"], results["mcmc"], results["standard"]
    report: dict[str, Any] = {
        "model": getattr(sampler.backend, "name", type(sampler.backend).__name__),
        "hardware": hardware(),
        "settings": cfg.model_dump(),
        "methods": {name: asdict(r) for name, r in results.items()},
        "speedup_vs_mcmc": mcmc.wall_time_per_prompt / power.wall_time_per_prompt,
        "loglik_gain_vs_mcmc": power.loglik_per_token - mcmc.loglik_per_token,
        "overhead_vs_standard": power.wall_time_per_prompt / standard.wall_time_per_prompt,
        "peak_memory_mb": peak_memory_mb(),
    }
    if options:
        report["options"] = {
            name: {
                "time_ratio": results[name].wall_time_per_prompt / power.wall_time_per_prompt,
                "forward_token_ratio": results[name].forward_tokens / max(power.forward_tokens, 1),
                "loglik_delta": results[name].loglik_per_token - power.loglik_per_token,
            }
            for name in ("power+adaptive", "power+reuse")
        }
    if hasattr(sampler.backend, "model"):
        prompt_ids = sampler.encode_prompt(chat[0])
        batch, length = cfg.top_k * cfg.num_rollouts, cfg.rollout_length
        reference = plain_generate_throughput(sampler.backend, prompt_ids, batch, length)
        achieved = power.forward_tokens / (power.wall_time_per_prompt * power.prompts)
        report["efficiency"] = {
            "sampler_forward_tokens_per_s": achieved,
            "generate_forward_tokens_per_s": reference,
            "ratio": achieved / reference,
            "reference": f"model.generate, batch {batch}, {length} new tokens",
        }
    return report


def hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (CUDA)"
        threads = torch.get_num_threads()
    except ImportError:
        threads = 0
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {threads} torch threads"


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table plus the derived ratios."""
    lines = [
        f"Model: {report['model']} on {report['hardware']}.",
        "",
        "| method | s / prompt | forward tokens | completion tokens | log p / token |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in report["methods"].items():
        lines.append(
            f"| {name} | {r['wall_time_per_prompt']:.2f} | {r['forward_tokens']} | "
            f"{r['completion_tokens']} | {r['loglik_per_token']:.3f} |"
        )
    lines += [
        "",
        f"- power vs MCMC: {report['speedup_vs_mcmc']:.1f}x faster, "
        f"log p / token {report['loglik_gain_vs_mcmc']:+.3f}",
        f"- power vs standard decoding: {report['overhead_vs_standard']:.1f}x the time",
        f"- peak memory: {report['peak_memory_mb']:.0f} MiB",
    ]
    for name, o in report.get("options", {}).items():
        lines.append(
            f"- {name} vs power: {o['time_ratio']:.2f}x time, "
            f"{o['forward_token_ratio']:.2f}x forward tokens, "
            f"log p / token {o['loglik_delta']:+.3f}"
        )
    if "efficiency" in report:
        e = report["efficiency"]
        lines.append(
            f"- efficiency: {e['sampler_forward_tokens_per_s']:.0f} forward tokens/s in the "
            f"sampler vs {e['generate_forward_tokens_per_s']:.0f} for {e['reference']} "
            f"(ratio {e['ratio']:.2f})"
        )
    return "\n".join(lines)


def add_bench_parser(subparsers: Any) -> None:
    """Register ``power-sampling bench`` (called by :mod:`power_sampling.cli`)."""
    from .cli import add_common_arguments, add_config_arguments, add_model_arguments

    parser = subparsers.add_parser(
        "bench",
        help="cost of power sampling vs MCMC, standard decoding and plain generate",
        description="Run standard, power and MCMC sampling (and the power options) on the same "
        "prompts in one run, and report wall time, forward tokens, log-likelihood per token and "
        "their ratios as a markdown table and JSON.",
    )
    parser.add_argument(
        "--prompts", type=int, default=len(BENCH_PROMPTS), help="how many built-in prompts"
    )
    parser.add_argument("--no-options", action="store_true", help="skip the power options")
    parser.add_argument("--json-out", help="also write the JSON report to this file")
    add_config_arguments(parser)
    add_model_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(handler=_cmd_bench, preset="cpu")


def _cmd_bench(args: Any) -> int:
    import json

    from .cli import config_from_args, load_backend

    config = config_from_args(args)
    if not 1 <= args.prompts <= len(BENCH_PROMPTS):
        from .cli import UsageError

        raise UsageError(f"--prompts must be between 1 and {len(BENCH_PROMPTS)}")
    sampler = PowerSampler(load_backend(args), config.replace(method="power"))
    report = run_bench(sampler, BENCH_PROMPTS[: args.prompts], options=not args.no_options)
    print(markdown(report))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return 0
