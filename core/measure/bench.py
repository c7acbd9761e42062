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
standard decoding, the
effect of the options beyond the paper, and the power sampler's efficiency: the tokens per
second it generates, everything between model calls included, against the model's own
``generate`` running the very same batched calls (recorded, then replayed). Timings on shared
machines are noisy: read ratios, not absolutes.

Longer than most modules because every measurement above shares one recorder, one report and
one markdown table; its command line is in :mod:`power_sampling.cli.bench`.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..backends.ignore_eos import IgnoreEOS
from ..config import PowerSamplingConfig
from ..samplers.power_sampler import PowerSampler, Prompt

BENCH_PROMPTS: tuple[str, ...] = (
    "A baker makes 24 muffins and sells 3 boxes of 6. How many muffins are left?",
    "Tom has 5 apples, buys 7 more and gives 4 away. How many apples does he have?",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
    "Sara reads 12 pages a day. How many pages does she read in 2 weeks?",
)


def token_prompts(backend: Backend, count: int, length: int = 48) -> list[list[int]]:
    """``count`` fixed token-id prompts of ``length`` ids (no end tokens), for backends without a
    tokenizer such as ``random:<architecture>`` models; the same for every run."""
    rng = np.random.default_rng(0)
    ends = backend.stop.token_ids
    allowed = np.array([t for t in range(min(backend.vocab_size, 32768)) if t not in ends])
    return [[int(t) for t in rng.choice(allowed, size=length)] for _ in range(count)]


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
    **overrides: Any,
) -> MethodResult:
    """Generate every prompt ``samples`` times, one generation at a time (latency per prompt, as
    the paper reports); generation ``i`` uses seed ``seed + i`` whatever the method."""
    config = sampler.config.replace(**overrides)
    walls, forward, steps, completion, logliks = [], 0, 0, 0, []
    for i, prompt in enumerate(p for p in prompts for _ in range(samples)):
        start = time.perf_counter()
        out = sampler.generate(prompt, seed=seed + i, **overrides)
        walls.append(time.perf_counter() - start)
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


@dataclass
class Call:
    """The shape of one backend call: ``n`` continuations of at most ``new_tokens`` tokens after
    each prefix, ``drawn`` tokens actually produced, in ``seconds``."""

    prefixes: list[tuple[int, ...]]
    n: int
    new_tokens: int
    drawn: int
    seconds: float


class RecordingBackend:
    """A transparent proxy that records the shape of every ``sample`` and ``top_k`` call, so
    the same batched work can be replayed through the model's own ``generate``."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.calls: list[Call] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def sample(self, prefixes: Any, n: int, max_new_tokens: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self._backend.sample(prefixes, n, max_new_tokens, **kwargs)
        budget = max_new_tokens if isinstance(max_new_tokens, int) else max(max_new_tokens)
        drawn = sum(len(c.token_ids) for row in out.continuations for c in row)
        self._record(start, prefixes, n, budget, drawn)
        return out

    def top_k(self, prefixes: Any, k: int, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self._backend.top_k(prefixes, k, **kwargs)
        self._record(start, prefixes, 1, 1, len(prefixes))  # one position scored per prefix
        return out

    def _record(self, start: float, prefixes: Any, n: int, new_tokens: int, drawn: int) -> None:
        seconds = time.perf_counter() - start
        self.calls.append(Call([tuple(p) for p in prefixes], n, new_tokens, drawn, seconds))


def replay_with_generate(backend: Any, calls: Sequence[Call]) -> tuple[float, int]:
    """Run the recorded calls through ``model.generate`` (same prefixes, rows and lengths,
    sampling at temperature 1 without truncation, every row to the full length); returns the
    seconds taken and the tokens generated."""
    import torch

    model, seconds, tokens = backend.model, 0.0, 0
    kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0)
    with torch.inference_mode():
        for call in calls:
            if call.new_tokens == 0:
                continue
            rows = [p for p in call.prefixes for _ in range(call.n)]
            width = max(map(len, rows))
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, row in enumerate(rows):  # left-padded, as generate expects
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
            start = time.perf_counter()
            model.generate(
                ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=call.new_tokens,
                min_new_tokens=call.new_tokens,
                **kwargs,
            )
            seconds += time.perf_counter() - start
            tokens += len(rows) * call.new_tokens
    return seconds, tokens


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
    samples: int = 1,
    options: bool = True,
    ignore_eos: bool = False,
    replay: bool = True,
) -> dict[str, Any]:
    """Run every method on the same prompts; return the measurements and their ratios.

    Text prompts are sent as chat messages; token-id prompts as they are. ``ignore_eos`` runs
    every method to full length; ``replay`` adds the efficiency against ``model.generate``.
    """
    chat = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    cfg = sampler.config
    if ignore_eos:
        sampler = PowerSampler(IgnoreEOS(sampler.backend), cfg)
    # "power" is the paper's algorithm at these settings; each option is then switched on alone.
    paper = dict(method="power", adaptive_tolerance=0.0, reuse_rollouts=False)
    methods: list[tuple[str, dict[str, Any]]] = [
        ("standard", dict(method="standard")),
        ("power", paper),
        ("mcmc", dict(method="mcmc")),
    ]
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
    recorder = RecordingBackend(sampler.backend)
    results = {}
    for name, overrides in methods:
        # The power run goes through the recorder, so its model work can be replayed below.
        runner = PowerSampler(recorder, cfg) if name == "power" else sampler
        results[name] = run_method(runner, name, chat, seed, samples, **overrides)
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
            for name, overrides in methods[:3]
        }
        if cfg.block_size > 1
        else None,
        "speedup_vs_mcmc": mcmc.wall_time_per_prompt / power.wall_time_per_prompt,
        "speedup_vs_mcmc_per_token": mcmc.wall_time_per_token / power.wall_time_per_token,
        "loglik_gain_vs_mcmc": power.loglik_per_token - mcmc.loglik_per_token,
        "overhead_vs_standard": power.wall_time_per_prompt / standard.wall_time_per_prompt,
        "overhead_vs_standard_per_token": power.wall_time_per_token / standard.wall_time_per_token,
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
            for name, _ in methods[3:]
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


def expected_sequential_steps(config: PowerSamplingConfig, method: str, tokens: int) -> float:
    """The sequential model runs of one generation of ``tokens`` tokens (every method run to
    full length, one prompt, the transformers backend), by the algorithms' arithmetic.

    With n = ceil(tokens / B) blocks: standard decoding runs the prompt once and then one step
    per token. Power sampling's first candidate call prefills the prompt and runs B steps; every
    later one continues the chosen block's kept row (B steps), and each rollout call continues
    the kept candidate rows (H - 1 steps after the first token; none in the last block, which
    has no tokens left to roll out). MCMC grows each block in B runs (a prefill, B - 1 steps)
    and each of its N proposals regenerates from a uniform cut: (length + 1) / 2 runs on
    average, the length growing by B per block. Exact for standard and power, the expectation
    for MCMC.

    The reuse fast path (``reuse_rollouts`` with L <= M and H = B): after the first block the
    chosen block's kept rollout rows are the next candidates, so a step is its rollout call
    alone (H steps, the last token run to keep the rows), and the last block none at all.
    """
    b, h, n = config.block_size, config.rollout_length, -(-tokens // config.block_size)
    if method in ("standard", "low_temperature"):
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
    raise ValueError(f"method={method!r}: expected_sequential_steps covers standard, power, mcmc")


def steps_ratio(a: MethodResult, b: MethodResult) -> float:
    """Sequential steps per generation of ``a`` over ``b``."""
    return a.sequential_steps_per_generation / max(b.sequential_steps_per_generation, 1e-9)


def per_token(result: MethodResult) -> float:
    """Forward tokens per completion token."""
    return result.forward_tokens / max(result.completion_tokens, 1)


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


def constraint_overhead(
    sampler: PowerSampler,
    prompts: Sequence[Prompt],
    constraint: Any,
    *,
    methods: Sequence[str] = ("standard", "power"),
    seed: int = 0,
    samples: int = 1,
    ignore_eos: bool = False,
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
    first constrained call, which compiles the grammar, runs before timing.
    """
    if ignore_eos:
        sampler = PowerSampler(IgnoreEOS(sampler.backend), sampler.config)
    sampler.generate(prompts[0], seed=seed, max_new_tokens=1, constraint=constraint)
    rows = []
    for method in methods:
        totals = {"free": [0.0, 0, 0], "constrained": [0.0, 0, 0]}  # seconds, forward, output
        for i, prompt in enumerate(p for p in prompts for _ in range(samples)):
            for kind, given in (("free", None), ("constrained", constraint)):
                start = time.perf_counter()
                out = sampler.generate(prompt, seed=seed + i, method=method, constraint=given)
                totals[kind][0] += time.perf_counter() - start
                totals[kind][1] += out.stats.forward_tokens
                totals[kind][2] += len(out.token_ids)
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
