"""``power-sampling eval``: evaluate a method on a benchmark, or compare methods.

power-sampling eval --task gsm8k --method power --limit 20 --preset cpu
power-sampling eval compare --task gsm8k --limit 20 --preset cpu
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import METHODS
from ..evals.compare import COMPARE_METHODS
from ..evals.tasks import TASKS
from . import common as base

DEFAULT_OUTPUT_DIR = "eval_results"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand (with its ``compare`` mode) to ``subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "eval",
        help="evaluate a method on a benchmark (or compare methods)",
        description=textwrap.fill(
            "Evaluate a sampling method on a benchmark: one JSONL record per problem in "
            "--output-dir (an interrupted run resumes where it stopped) and a summary with pass@1 "
            "and its 95% Wilson interval, pass@k for --samples k, latency and tokens. "
            "'eval compare' runs several methods on the same problems and writes a markdown table "
            "and an accuracy-vs-latency plot.",
            width=88,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              power-sampling eval --task gsm8k --method power --limit 20 --preset cpu
              power-sampling eval --task humaneval --method standard --samples 8 --limit 10
              power-sampling eval compare --task gsm8k --limit 20 --preset cpu
              power-sampling eval --task math500 --method power --preset paper \\
                  --model Qwen/Qwen2.5-Math-7B --dtype bfloat16 --device cuda

            docs: docs/evaluation.md (what a run writes, statistics, resuming, sandboxing)
            """
        ),
    )
    parser.add_argument(
        "mode",
        nargs="?",
        choices=("run", "compare"),
        default="run",
        help="run: evaluate --method (the default); compare: evaluate each of --methods",
    )
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--task", required=True, type=str.lower, choices=sorted(TASKS), help="the benchmark"
    )
    group.add_argument(
        "--limit", type=int, default=None, metavar="N", help="the first N problems (default: all)"
    )
    group.add_argument(
        "--samples",
        type=int,
        default=1,
        metavar="K",
        help="completions per problem; pass@1..K are reported (default: 1)",
    )
    group.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        metavar="DIR",
        help="where <task>-<method>.jsonl records and summaries go; a run resumes from them "
        f"(default: {DEFAULT_OUTPUT_DIR})",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=8,
        metavar="N",
        help="(problem, sample) pairs generated together (default: 8)",
    )
    group.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the task's chat prompt with the model's chat template (default: when the "
        "tokenizer has one); --no-chat sends the raw prompt and stops at the task's stop strings",
    )
    group.add_argument(
        "--data", default=None, metavar="PATH", help="read the benchmark from this file instead"
    )
    group.add_argument(
        "--workers", type=int, default=4, metavar="N", help="grading threads (default: 4)"
    )
    group.add_argument(
        "--methods",
        default=None,
        metavar="M1,M2,...",
        help=f"compare only: comma-separated methods (default: {','.join(COMPARE_METHODS)})",
    )
    base.add_config_arguments(parser)
    base.add_model_arguments(parser)
    base.add_common_arguments(parser)
    parser.set_defaults(handler=cmd_eval)
    return parser


def cmd_eval(args: argparse.Namespace) -> int:
    """The ``eval`` handler: ``cmd_compare`` in compare mode, else ``cmd_run``."""
    return cmd_compare(args) if args.mode == "compare" else cmd_run(args)


def _prepare(args: argparse.Namespace, methods: Sequence[str]) -> tuple[Any, Any, Path]:
    """Validate flags, settings, task data and output files before the model loads."""
    from ..evals.records import prepare_output
    from ..evals.stats import require_statistics
    from ..evals.tasks import get_task

    require_statistics()  # a missing [eval] library fails here, not after the generations
    config = base.config_from_args(args)
    if args.verbose < 2:  # math-verify warns on every call that its signal timeouts are off
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    for flag, value in (("--samples", args.samples), ("--batch-size", args.batch_size)):
        if value < 1:
            raise base.UsageError(f"{flag} {value} is invalid: use an integer >= 1")
    if args.limit is not None and args.limit < 1:
        raise base.UsageError(f"--limit {args.limit} is invalid: use an integer >= 1")
    if args.workers < 1:
        raise base.UsageError(f"--workers {args.workers} is invalid: use an integer >= 1")
    seed = 0 if config.seed is None else config.seed
    if args.data is not None and not Path(args.data).is_file():
        raise base.UsageError(f"--data {args.data}: no such file; give the path of a JSONL file")
    task = get_task(args.task, data_path=args.data, seed=seed)
    task.load(args.limit)  # an empty or corrupt data file fails here, not after loading
    folder = Path(args.output_dir)
    for method in methods or [config.method]:
        prepare_output(folder / f"{task.name}-{method}.jsonl")
    return config, task, folder


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from ..backends.models import DEFAULT_MODEL

    return dict(
        limit=args.limit,
        samples=args.samples,
        batch_size=args.batch_size,
        chat=args.chat,
        name=args.model or DEFAULT_MODEL,
        progress=base.show_progress(args),
        workers=args.workers,
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Evaluate one method; print its summary."""
    from ..evals.runner import evaluate

    if args.methods is not None:
        raise base.UsageError("--methods is for 'eval compare'; use --method to evaluate one")
    config, task, folder = _prepare(args, [])
    backend = base.load_backend(args)
    output = folder / f"{task.name}-{config.method}.jsonl"
    result = evaluate(backend, task, config, output=output, **_run_kwargs(args))
    print(result.summary.format())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Evaluate each of ``--methods``; print the markdown table, write it and the plot."""
    from ..evals.compare import compare

    if "method" in args:
        raise base.UsageError("'eval compare' runs --methods; drop --method")
    text = ",".join(COMPARE_METHODS) if args.methods is None else args.methods
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not methods or any(m not in METHODS for m in methods):
        raise base.UsageError(
            f"--methods {text!r} is invalid: use a comma-separated list of {', '.join(METHODS)}"
        )
    config, task, folder = _prepare(args, methods)
    backend = base.load_backend(args)
    result = compare(backend, task, config, methods, output_dir=folder, **_run_kwargs(args))
    print(result.table)
    if not args.quiet:
        written = [str(result.table_path)] + ([str(result.plot_path)] if result.plot_path else [])
        print(f"wrote {', '.join(written)} and the per-method records in {folder}", file=sys.stderr)
    return 0
