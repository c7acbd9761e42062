"""``power-sampling demo``: one grade-school word problem answered with standard sampling and with
power sampling on the embedded default model, side by side with their cost."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

from ..config import PRESETS, PowerSamplingConfig

if TYPE_CHECKING:
    from ..generation import Generation
from .common import (
    DEFAULT_MODEL_HELP,
    add_common_arguments,
    add_model_arguments,
    load_backend,
    model_name,
    run_with_progress,
    show_progress,
)

DEMO_QUESTION = (
    "Lena picks 14 apples on Monday and twice as many on Tuesday. She uses 9 apples to bake "
    "a pie. How many apples does she have left?"
)
DEMO_ANSWER = 33  # 14 + 2 * 14 = 42 apples picked, 42 - 9 = 33 left
DEMO_INSTRUCTION = "Solve it step by step, then give the final answer as a number."


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="standard vs power sampling on one word problem, with their cost",
        description="Answer one GSM8K-style word problem with standard sampling (temperature "
        "1) and with power sampling, and print both answers with their cost. Runs on the "
        "embedded SmolLM2-135M-Instruct by default; the cpu preset takes a minute or two on a "
        "laptop CPU (the first run also builds the model cache, about 15-30 s).",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help="settings of the power sampler (default: cpu)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of both samplers (default: 0)")
    add_model_arguments(parser)
    add_common_arguments(parser)
    parser.set_defaults(handler=_cmd_demo)


def extract_number(text: str) -> int | float | None:
    """The last number in ``text`` (commas between digits ignored), or None."""
    matches = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    if not matches:
        return None
    value = float(matches[-1].replace(",", "").rstrip("."))
    return int(value) if value.is_integer() else value


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..samplers.power_sampler import PowerSampler

    config = PowerSamplingConfig.preset(args.preset, seed=args.seed)
    progress = show_progress(args)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))

    say(f"Loading {args.model or 'the default model (' + DEFAULT_MODEL_HELP + ')'} ...")
    start = time.perf_counter()
    backend = load_backend(args)
    load_time = time.perf_counter() - start
    say(f"Loaded in {load_time:.1f} s.")

    sampler = PowerSampler(backend, config)
    prompt = [{"role": "user", "content": f"{DEMO_QUESTION} {DEMO_INSTRUCTION}"}]
    results: dict[str, Generation] = {}
    for label, method in (("standard", "standard"), ("power", "power")):
        say(f"Answering with {label} sampling ...")
        results[label] = run_with_progress(
            sampler, prompt, progress=progress, description=label, method=method
        )
    print(render_demo(config, args.preset, results, load_time, model_name(backend, args.model)))
    return 0


def render_demo(
    config: PowerSamplingConfig,
    preset: str,
    results: dict[str, Generation],
    load_time: float,
    model: str,
    width: int | None = None,
) -> str:
    """The question, both answers (side by side when the terminal is wide enough) and a cost
    table."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    width = max(width, 40)
    standard, power = results["standard"], results["power"]
    titles = {
        "standard": "Standard sampling (temperature 1)",
        "power": f"Power sampling (alpha {config.alpha:g}, {preset} preset)",
    }
    lines = [f"Model: {model}", ""]
    lines += [
        *textwrap.wrap(f"Question: {DEMO_QUESTION}", width),
        f"Expected answer: {DEMO_ANSWER}",
        "",
    ]

    column = (width - 3) // 2
    if column >= 36:
        left = _wrap_block(titles["standard"], standard.text or "", column)
        right = _wrap_block(titles["power"], power.text or "", column)
        left += [""] * (len(right) - len(left))
        right += [""] * (len(left) - len(right))
        lines += [f"{a:<{column}} | {b}".rstrip() for a, b in zip(left, right, strict=True)]
    else:
        lines += _wrap_block(titles["standard"], standard.text or "", width)
        lines += ["", *_wrap_block(titles["power"], power.text or "", width)]
    lines.append("")

    def verdict(g: Generation) -> str:
        value = extract_number(g.text or "")
        if value is None:
            return "none"
        return f"{value} ({'correct' if value == DEMO_ANSWER else 'wrong'})"

    rows = [
        ("final number", verdict(standard), verdict(power)),
        ("completion tokens", str(len(standard.token_ids)), str(len(power.token_ids))),
        (
            "forward tokens",
            str(standard.stats.forward_tokens),
            str(power.stats.forward_tokens),
        ),
        (
            "wall time",
            f"{standard.stats.wall_time:.1f} s",
            f"{power.stats.wall_time:.1f} s",
        ),
    ]
    head = ("", "standard", "power")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    for row in [head, *rows]:
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}".rstrip()
        )
    ratio = power.stats.wall_time / max(standard.stats.wall_time, 1e-9)
    forward = power.stats.forward_tokens / max(standard.stats.forward_tokens, 1)
    summary = (
        f"Power sampling took {ratio:.1f}x the wall time and {forward:.1f}x the forward tokens "
        f"of standard sampling (model load {load_time:.1f} s, not counted)."
    )
    settings = (
        f"Settings: alpha={config.alpha:g} block_size={config.block_size} top_k={config.top_k} "
        f"num_rollouts={config.num_rollouts} rollout_length={config.rollout_length} "
        f"num_candidates={config.num_candidates} max_new_tokens={config.max_new_tokens} "
        f"seed={config.seed}"
    )
    lines += ["", *textwrap.wrap(summary, width), *textwrap.wrap(settings, width)]
    return "\n".join(lines)


def _wrap_block(title: str, text: str, width: int) -> list[str]:
    out = [title, "-" * min(len(title), width)]
    for paragraph in text.strip().splitlines() or [""]:
        out += textwrap.wrap(paragraph, width) or [""]
    return out


# -- entry point ----------------------------------------------------------------------------
