"""``power-sampling bench``: cost of power sampling against MCMC, standard decoding and the
hardware, measured side by side in one run on one model and one prompt set.

Reported per method: wall time per generation and per completion token, forward tokens
(positions the model ran), sequential steps (the model runs one generation waits for one after
another: prefill calls plus decode steps, however many rows each has; the critical path, which
sets the latency where a batched step costs about what one row does), completion tokens, and the
mean base log-likelihood per token of the outputs with its standard error (the sharpening
achieved). With ``ignore_eos`` the model's end tokens end nothing, so every method runs to full
length (:class:`~power_sampling.backends.IgnoreEOS`).
Derived: the speed-up over MCMC at matched settings, the critical-path ratios, the overhead over
standard decoding, the effect of the options beyond the paper, and the power sampler's
efficiency: the tokens per second it generates, everything between model calls included, against
the model's own ``generate`` running the very same batched calls (recorded, then replayed).
Timings on shared machines are noisy: read ratios, not absolutes.

The recorder and the replay are in :mod:`.recording`, the expected critical path in
:mod:`.critical_path`, a constraint's cost in :mod:`.constraint_cost`; the command line is
:mod:`power_sampling.cli.bench`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..progress import progress_bar
from ..samplers.power_sampler import PowerSampler, Prompt
from .critical_path import expected_sequential_steps
from .hardware import hardware, peak_memory_mb
from .recording import RecordingBackend, replay_with_generate
from .workload import BENCH_PROMPTS, full_length, token_prompts

__all__ = [
    "BENCH_PROMPTS",
    "MethodResult",
    "RecordingBackend",
    "expected_sequential_steps",
    "hardware",
    "markdown",
    "replay_with_generate",
    "run_bench",
    "run_method",
    "token_prompts",
]


@dataclass
class MethodResult:
    name: str
    settings: dict[str, Any]
    prompts: int
    samples: int
    """Generations per prompt (each with its own seed)."""
    wall_time_per_prompt: float
    """Mean seconds per generation."""
    wall_time_per_token: float
    """Seconds per completion token (methods whose outputs differ in length compare fairer)."""
    forward_tokens: int
    sequential_steps: int
    """Model runs the generations waited for one after another, summed over generations."""
    sequential_steps_per_generation: float
    completion_tokens: int
    loglik_per_token: float
    """Mean over generations of log p(completion) / its length."""
    loglik_stderr: float
    """The standard error of that mean."""


def run_method(
    sampler: PowerSampler,
    name: str,
    prompts: Sequence[Prompt],
    seed: int,
    samples: int = 1,
    *,
    progress: bool = False,
    **overrides: Any,
) -> MethodResult:
    """Generate every prompt ``samples`` times, one generation at a time (latency per prompt, as
    the paper reports); generation ``i`` uses seed ``seed + i`` whatever the method. With
    ``progress``, a tqdm bar on stderr counts the generations."""
    config = sampler.config.replace(**overrides)
    walls, forward, steps, completion, logliks = [], 0, 0, 0, []
    units = [p for p in prompts for _ in range(samples)]
    with progress_bar(len(units), desc=name, unit="generation", progress=progress) as bar:
        for i, prompt in enumerate(units):
            start = time.perf_counter()
            out = sampler.generate(prompt, seed=seed + i, **overrides)
            walls.append(time.perf_counter() - start)
            bar.update(1)
            forward += out.stats.forward_tokens
            steps += out.stats.sequential_steps
            completion += len(out.token_ids)
            logliks.append(out.logprob / max(len(out.token_ids), 1))
    return MethodResult(
        name=name,
        settings=config.model_dump(),
        prompts=len(prompts),
        samples=samples,
        wall_time_per_prompt=statistics.fmean(walls),
        wall_time_per_token=sum(walls) / max(completion, 1),
        forward_tokens=forward,
        sequential_steps=steps,
        sequential_steps_per_generation=steps / len(walls),
        completion_tokens=completion,
        loglik_per_token=statistics.fmean(logliks),
        loglik_stderr=statistics.stdev(logliks) / len(logliks) ** 0.5 if len(logliks) > 1 else 0.0,
    )


def run_bench(
    sampler: PowerSampler,
    prompts: Sequence[Prompt] = BENCH_PROMPTS,
    *,
    seed: int = 0,
    samples: int = 1,
    options: bool = True,
    ignore_eos: bool = False,
    replay: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run every method on the same prompts; return the measurements and their ratios.

    Text prompts are sent as chat messages; token-id prompts as they are. ``ignore_eos`` runs
    every method to full length; ``replay`` adds the efficiency against ``model.generate``;
    ``progress`` draws a tqdm bar per method on stderr, counting its generations.
    """
    chat = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    cfg = sampler.config
    if ignore_eos:
        sampler = full_length(sampler)
    # "power" is the paper's algorithm at these settings; each option is then switched on alone.
    paper = dict(method="power", adaptive_tolerance=0.0, reuse_rollouts=False)
    methods: list[tuple[str, dict[str, Any]]] = [
        ("standard", dict(method="standard")),
        ("power", paper),
        ("mcmc", dict(method="mcmc")),
        ("smc", dict(method="smc", lookahead_rollouts=0)),
    ]
    base_methods = len(methods)
    if options:
        tolerance = cfg.adaptive_tolerance or 0.05
        methods += [
            ("power+adaptive", {**paper, "adaptive_tolerance": tolerance}),
            ("power+reuse", {**paper, "reuse_rollouts": True}),
        ]
        if cfg.rollout_length == cfg.block_size and cfg.top_k <= cfg.num_rollouts:
            # The reuse fast path: L = M, so the chosen block's rollouts are every candidate.
            fast = {**paper, "reuse_rollouts": True, "num_candidates": cfg.num_rollouts}
            methods.append(("power+fast", fast))
        if cfg.lookahead_rollouts > 0:
            methods.append(("smc+lookahead", dict(method="smc")))
    recorder = RecordingBackend(sampler.backend)
    results = {}
    for name, overrides in methods:
        # The power run goes through the recorder, so its model work can be replayed below.
        runner = PowerSampler(recorder, cfg) if name == "power" else sampler
        results[name] = run_method(
            runner, name, chat, seed, samples, progress=progress, **overrides
        )
    power, mcmc, standard = results["power"], results["mcmc"], results["standard"]
    report: dict[str, Any] = {
        "model": getattr(sampler.backend, "name", type(sampler.backend).__name__),
        "hardware": hardware(),
        "settings": cfg.model_dump(),
        "ignore_eos": ignore_eos,
        "methods": {name: asdict(r) for name, r in results.items()},
        # Per generation: the ratios of the critical paths (sequential model runs).
        "sequential_steps_ratio_mcmc_vs_power": steps_ratio(mcmc, power),
        "sequential_steps_ratio_power_vs_standard": steps_ratio(power, standard),
        "expected_sequential_steps": {
            name: expected_sequential_steps(cfg.replace(**overrides), name, cfg.max_new_tokens)
            for name, overrides in methods[:base_methods]
        }
        if cfg.block_size > 1
        else None,
        "speedup_vs_mcmc": mcmc.wall_time_per_prompt / power.wall_time_per_prompt,
        "speedup_vs_mcmc_per_token": mcmc.wall_time_per_token / power.wall_time_per_token,
        "loglik_gain_vs_mcmc": power.loglik_per_token - mcmc.loglik_per_token,
        "overhead_vs_standard": power.wall_time_per_prompt / standard.wall_time_per_prompt,
        "overhead_vs_standard_per_token": power.wall_time_per_token / standard.wall_time_per_token,
        "vs_standard": {name: vs(r, standard) for name, r in results.items()},
        "peak_memory_mb": peak_memory_mb(),
    }
    if options:
        report["options"] = {
            name: {
                "time_ratio": results[name].wall_time_per_prompt / power.wall_time_per_prompt,
                "time_per_token_ratio": results[name].wall_time_per_token
                / power.wall_time_per_token,
                "speedup_vs_mcmc": mcmc.wall_time_per_prompt / results[name].wall_time_per_prompt,
                "forward_token_ratio": results[name].forward_tokens / max(power.forward_tokens, 1),
                "sequential_steps_ratio": steps_ratio(results[name], power),
                # Per completion token: an option that changes the outputs' length changes the
                # work per generation for that reason alone.
                "forward_tokens_per_token_ratio": per_token(results[name]) / per_token(power),
                "loglik_delta": results[name].loglik_per_token - power.loglik_per_token,
                "loglik_delta_stderr": (results[name].loglik_stderr ** 2 + power.loglik_stderr**2)
                ** 0.5,
            }
            for name, _ in methods[base_methods:]
        }
    if replay and hasattr(sampler.backend, "model"):
        seconds, tokens = replay_with_generate(sampler.backend, recorder.calls)
        drawn = sum(call.drawn for call in recorder.calls)
        wall = power.wall_time_per_prompt * power.prompts * power.samples
        achieved = drawn / wall
        report["efficiency"] = {
            "backend_time_share": sum(call.seconds for call in recorder.calls) / wall,
            "sampler_tokens_per_s": achieved,
            "generate_tokens_per_s": tokens / seconds,
            "ratio": achieved * seconds / tokens,
            "reference": f"model.generate replaying the power sampler's {len(recorder.calls)} "
            "batched calls (same prefixes, rows and lengths)",
        }
    return report


def vs(result: MethodResult, standard: MethodResult) -> dict[str, float]:
    """``result``'s sequential steps, forward tokens and wall time per generation over standard
    decoding's."""
    return {
        "sequential_steps": steps_ratio(result, standard),
        "forward_tokens": result.forward_tokens / max(standard.forward_tokens, 1),
        "wall_time": result.wall_time_per_prompt / standard.wall_time_per_prompt,
    }


def steps_ratio(a: MethodResult, b: MethodResult) -> float:
    """Sequential steps per generation of ``a`` over ``b``."""
    return a.sequential_steps_per_generation / max(b.sequential_steps_per_generation, 1e-9)


def per_token(result: MethodResult) -> float:
    """Forward tokens per completion token."""
    return result.forward_tokens / max(result.completion_tokens, 1)


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table plus the derived ratios."""
    first = next(iter(report["methods"].values()))
    eos = "; end tokens ignored" if report.get("ignore_eos") else ""
    lines = [
        f"Model: {report['model']} on {report['hardware']}; {first['prompts']} prompts x "
        f"{first['samples']} seeds per method{eos}.",
        "",
        "| method | s / generation | s / token | forward tokens | sequential steps / generation "
        "| completion tokens | log p / token (± s.e.) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["methods"].items():
        lines.append(
            f"| {name} | {r['wall_time_per_prompt']:.2f} | {r['wall_time_per_token']:.3f} | "
            f"{r['forward_tokens']} | {r['sequential_steps_per_generation']:.0f} | "
            f"{r['completion_tokens']} | {r['loglik_per_token']:.3f} ± {r['loglik_stderr']:.3f} |"
        )
    lines += [
        "",
        f"- critical path: MCMC takes {report['sequential_steps_ratio_mcmc_vs_power']:.1f}x the "
        f"sequential model steps of power sampling, power "
        f"{report['sequential_steps_ratio_power_vs_standard']:.1f}x those of standard decoding",
        f"- power vs MCMC: {report['speedup_vs_mcmc']:.1f}x faster per generation "
        f"({report['speedup_vs_mcmc_per_token']:.1f}x per completion token), "
        f"log p / token {report['loglik_gain_vs_mcmc']:+.3f}",
        f"- power vs standard decoding: {report['overhead_vs_standard']:.1f}x the time per "
        f"generation, {report['overhead_vs_standard_per_token']:.1f}x per completion token",
        f"- peak memory: {report['peak_memory_mb']:.0f} MiB",
        "",
        "Per generation, against standard decoding:",
        "",
        "| method | sequential steps | forward tokens | wall time |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {r['sequential_steps']:.2f}x | {r['forward_tokens']:.2f}x | "
            f"{r['wall_time']:.2f}x |"
            for name, r in report["vs_standard"].items()
        ),
        "",
    ]
    for name, o in report.get("options", {}).items():
        lines.append(
            f"- {name} vs power: {o['time_ratio']:.2f}x time "
            f"({o['time_per_token_ratio']:.2f}x per completion token; "
            f"{o['speedup_vs_mcmc']:.1f}x faster than MCMC), "
            f"{o['forward_token_ratio']:.2f}x forward tokens, "
            f"{o['sequential_steps_ratio']:.2f}x sequential steps "
            f"({o['forward_tokens_per_token_ratio']:.2f}x per completion token), "
            f"log p / token {o['loglik_delta']:+.3f} ± {o['loglik_delta_stderr']:.3f}"
        )
    if "efficiency" in report:
        e = report["efficiency"]
        lines.append(
            f"- efficiency: {e['sampler_tokens_per_s']:.0f} generated tokens/s in the sampler "
            f"(all its work included) vs {e['generate_tokens_per_s']:.0f} for {e['reference']}: "
            f"ratio {e['ratio']:.2f}; {e['backend_time_share']:.1%} of the sampler's time is "
            "inside backend calls"
        )
    return "\n".join(lines)
