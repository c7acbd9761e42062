"""``power-sampling bench``: the measurements of :mod:`power_sampling.measure.bench`."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from ..backends.base import TextBackend
from ..backends.random_models import is_random
from ..measure.bench import markdown, run_bench
from ..measure.constraint_cost import constraint_markdown, constraint_overhead
from ..measure.memory import memory_by_prompt_length, memory_markdown
from ..measure.workload import BENCH_PROMPTS, token_prompts
from ..samplers.power_sampler import PowerSampler, Prompt
from .common import (
    UsageError,
    add_common_arguments,
    add_config_arguments,
    add_model_arguments,
    config_from_args,
    load_backend,
    load_vllm_backend,
    show_progress,
)


def add_parser(subparsers: Any) -> None:
    """Register ``power-sampling bench`` (called by :mod:`power_sampling.cli`)."""
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
    parser.add_argument(
        "--samples", type=int, default=1, help="generations per prompt, each with its own seed"
    )
    parser.add_argument("--no-options", action="store_true", help="skip the power options")
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        help="the model's end tokens end nothing: every method runs to max_new_tokens (speed "
        "runs at equal length; always on for random:<architecture> models)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 for random:tiny, whose steps are too small to share "
        "out, torch's default otherwise)",
    )
    parser.add_argument(
        "--no-replay",
        action="store_true",
        help="skip replaying the power sampler's calls through model.generate (the efficiency)",
    )
    parser.add_argument(
        "--prompt-lengths",
        metavar="N,N,...",
        help="also measure each method's peak memory generating from one prompt of each of "
        "these lengths in tokens (fixed token ids), e.g. 256,1024,4096",
    )
    parser.add_argument("--json-out", help="also write the JSON report to this file")
    parser.add_argument(
        "--constraint",
        metavar="KIND:VALUE",
        help="measure a constraint's overhead per token instead (standard and power, with and "
        "without it): json-schema:FILE_OR_JSON, regex:PATTERN, grammar:FILE or json:",
    )
    parser.add_argument(
        "--concurrency",
        metavar="C,C,...",
        help="measure throughput and latency under load instead: standard and power sampling "
        "with C concurrent requests of distinct seeds and mixed lengths each (e.g. 1,8), and "
        "a short request sent during a long one",
    )
    parser.add_argument("--plot", metavar="PNG", help="with --concurrency: also plot the load")
    parser.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default="transformers",
        help="run the model in-process with transformers (default) or on a vLLM engine "
        "(needs the [vllm] extra; eager mode when no GPU is visible)",
    )
    add_config_arguments(parser)
    add_model_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(handler=_cmd_bench, preset="cpu")


PAPER_MCMC_STEPS = 10
"""Metropolis-Hastings steps per block of the MCMC baseline in every bench run (Karan & Du's
setting), unless ``--mcmc-steps`` is given: a shorter chain would be a weaker baseline."""


def _cmd_bench(args: Any) -> int:
    config = config_from_args(args)
    if not 1 <= args.prompts <= len(BENCH_PROMPTS):
        raise UsageError(f"--prompts must be between 1 and {len(BENCH_PROMPTS)}")
    if args.samples < 1:
        raise UsageError(f"--samples {args.samples} is invalid: use an integer >= 1")
    lengths = parse_lengths(args.prompt_lengths) if args.prompt_lengths else []
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError(
            "--plot needs matplotlib, which is not installed: pip install "
            "'power-sampling[eval]' (or drop --plot)"
        )
    if "mcmc_steps" not in args:  # the baseline is the paper's chain, whatever the preset
        config = config.replace(mcmc_steps=PAPER_MCMC_STEPS)
    threads = args.threads
    if threads is None and args.model == "random:tiny":
        threads = 1
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads} is invalid: use an integer >= 1")
        import torch

        torch.set_num_threads(threads)
    backend = load_vllm_backend(args) if args.backend == "vllm" else load_backend(args)
    prompts: list[Prompt] = list(BENCH_PROMPTS[: args.prompts])
    if not isinstance(backend, TextBackend):  # e.g. random:<architecture>: no tokenizer
        prompts = list(token_prompts(backend, args.prompts))
    context = getattr(backend, "max_context", None)
    if lengths and context is not None and max(lengths) + config.max_new_tokens > context:
        raise UsageError(
            f"--prompt-lengths {args.prompt_lengths}: {max(lengths)} prompt tokens plus "
            f"{config.max_new_tokens} new ones exceed the model's context of {context} "
            "tokens; use shorter lengths or a lower --max-new-tokens"
        )
    if args.concurrency:
        return _load(args, backend, config, prompts)
    sampler = PowerSampler(backend, config.replace(method="power"))
    if args.constraint:
        report = constraint_overhead(
            sampler,
            BENCH_PROMPTS[: args.prompts],
            parse_constraint(args.constraint),
            samples=args.samples,
            ignore_eos=args.ignore_eos or is_random(args.model),
            progress=show_progress(args),
        )
        print(constraint_markdown(report))
        _write_json(args.json_out, report)
        return 0
    report = run_bench(
        sampler,
        prompts,
        samples=args.samples,
        options=not args.no_options,
        ignore_eos=args.ignore_eos or is_random(args.model),
        replay=not args.no_replay,
        progress=show_progress(args),
    )
    print(markdown(report))
    if lengths:
        report["memory_by_prompt_length"] = memory_by_prompt_length(
            sampler, lengths, ignore_eos=report["ignore_eos"]
        )
        print()
        print(memory_markdown(report["memory_by_prompt_length"]))
    _write_json(args.json_out, report)
    return 0


def _load(args: Any, backend: Any, config: Any, prompts: list[Prompt]) -> int:
    """``--concurrency``: the load bench of :mod:`power_sampling.measure.concurrency`."""
    from ..measure.concurrency import as_json, load_markdown, plot_load, run_load, short_behind_long

    levels = parse_lengths(args.concurrency, "--concurrency", "1,8", "request counts")
    configs = {
        "standard": config.replace(method="standard"),
        "power": config.replace(method="power"),
    }
    points = run_load(backend, configs, prompts, levels)
    behind = short_behind_long(
        backend,
        configs["power"].replace(max_new_tokens=3 * config.max_new_tokens),
        configs["standard"].replace(max_new_tokens=4),
        prompts[0],
    )
    print(load_markdown(points, behind))
    _write_json(args.json_out, {"load": as_json(points), "short_behind_long": behind})
    if args.plot:
        plot_load(points, args.plot)
    return 0


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    """The report as JSON at ``--json-out`` (nothing without it)."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)


def parse_lengths(
    spec: str,
    flag: str = "--prompt-lengths",
    example: str = "256,1024,4096",
    what: str = "token counts",
) -> list[int]:
    """Counts from a comma-separated flag value (integers >= 1): prompt lengths by default."""
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UsageError(
            f"{flag} {spec!r} is invalid: use comma-separated {what} >= 1, e.g. {example}"
        )
    return counts


def parse_constraint(spec: str) -> Any:
    """A :class:`~power_sampling.constraints.Constraint` from ``KIND:VALUE`` (a JSON schema or
    grammar may be given as a file path)."""
    from pathlib import Path

    from ..constraints import Constraint

    kind, _, value = spec.partition(":")
    if kind in ("json-schema", "grammar") and value and Path(value).is_file():
        value = Path(value).read_text()
    if kind == "json-schema":
        try:
            return Constraint.json_schema(value)
        except ValueError as error:
            raise UsageError(f"--constraint {spec!r}: {error}") from error
    if kind == "regex" and value:
        return Constraint.regex(value)
    if kind == "grammar" and value:
        return Constraint.grammar(value)
    if kind == "json":
        return Constraint.json()
    raise UsageError(
        f"--constraint {spec!r} is invalid: use json-schema:FILE_OR_JSON, regex:PATTERN, "
        "grammar:FILE or json:"
    )
