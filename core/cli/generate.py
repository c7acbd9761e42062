"""``power-sampling generate PROMPT``: one completion, with a flag for every
:class:`~power_sampling.PowerSamplingConfig` field, a preset, the model, and the output format
(text, streamed text, or JSON with stats, settings and an optional per-step trace)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..samplers.power_sampler import Prompt

from .common import (
    UsageError,
    add_common_arguments,
    add_config_arguments,
    add_model_arguments,
    config_from_args,
    has_chat_template,
    load_backend,
    logger,
    model_name,
    read_prompt,
    run_with_progress,
    show_progress,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate one completion",
        description="Generate one completion of PROMPT with power sampling (or a baseline, by\n"
        "--method). Text goes to stdout; a progress bar and a cost summary to stderr.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              power-sampling generate "What is 17 * 3?" --preset cpu
              power-sampling generate "Write a haiku." --alpha 2 --stream
              echo "Q: 2 + 2 = ?" | power-sampling generate - --no-chat --json --trace

            docs: docs/choosing-settings.md (which method and preset), docs/getting-started.md
            """
        ),
    )
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt text, or - to read stdin")
    add_config_arguments(parser)
    add_model_arguments(parser)
    group = parser.add_argument_group("prompt and output")
    group.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap PROMPT as a user message in the model's chat template (default: on when the "
        "tokenizer has one); --no-chat sends the raw text",
    )
    group.add_argument("--system", default=None, help="a system message (chat mode only)")
    group.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="STRING",
        help="stop when the text contains STRING (not included in the output); repeatable",
    )
    fmt = group.add_mutually_exclusive_group()
    fmt.add_argument(
        "--stream", action="store_true", help="print text as it is committed (block by block)"
    )
    fmt.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: text, token ids, finish reason, log-likelihood, stats and "
        "the settings used",
    )
    group.add_argument(
        "--trace",
        action="store_true",
        help="record per-step diagnostics (candidates, log zeta, p-hat, p_JK, choice): in the "
        "JSON with --json, else one line per step on stderr",
    )
    add_common_arguments(parser)
    parser.set_defaults(handler=_cmd_generate)


def build_prompt(text: str, *, chat: bool, system: str | None) -> Prompt:
    if not chat:
        return text
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": text}]


def _cmd_generate(args: argparse.Namespace) -> int:
    from ..samplers.power_sampler import PowerSampler

    config = config_from_args(args)  # fail fast, before the model loads
    if args.stop and any(not s for s in args.stop):
        raise UsageError("--stop needs a non-empty string")
    if args.system is not None and args.chat is False:
        raise UsageError("--system needs chat mode; drop --no-chat (or put it in PROMPT)")
    text = read_prompt(args.prompt)

    backend = load_backend(args)
    chat = has_chat_template(backend) if args.chat is None else args.chat
    if args.system is not None and not chat:
        raise UsageError(
            "--system needs a chat template, and this model's tokenizer has none; "
            "put the system text into PROMPT"
        )
    prompt = build_prompt(text, chat=chat, system=args.system)
    sampler = PowerSampler(backend, config)
    logger.info("Generating with %s", config.model_dump())

    def write(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    # Streamed text is its own progress indicator when it goes to the same terminal.
    progress = show_progress(args) and not (args.stream and sys.stdout.isatty())
    generation = run_with_progress(
        sampler,
        prompt,
        progress=progress,
        description=config.method,
        on_text=write if args.stream else None,
        stop=args.stop,
        trace=args.trace,
    )

    if args.json:
        out = generation.to_dict()
        out["model"] = model_name(backend, args.model)
        out["preset"] = args.preset
        out["chat"] = chat
        out["settings"] = config.model_dump()
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.stream:
        sys.stdout.write("\n")
    else:
        sys.stdout.write((generation.text or "") + "\n")
    sys.stdout.flush()

    if not args.json and args.trace and generation.trace:
        for step in generation.trace:
            chosen = step.candidates[step.chosen] if step.candidates else ()
            sys.stderr.write(
                f"step at {step.position}: {len(step.candidates)} candidates, "
                f"chose #{step.chosen} ({len(chosen)} tokens, p_jk "
                f"{_fmt_prob(step.p_jk, step.chosen)}, log zeta "
                f"{_fmt_num(step.log_zeta, step.chosen)}), {step.num_rollouts} rollouts, "
                f"top-K kept {step.kept_mass:.2f} of the pool's estimated mass\n"
            )
    if not args.quiet and not args.json:
        s = generation.stats
        sys.stderr.write(
            f"[{config.method}] {s.completion_tokens} tokens ({generation.finish_reason}), "
            f"{s.forward_tokens} forward tokens, {s.wall_time:.1f} s\n"
        )
    return 0


def _fmt_prob(values: Sequence[float], index: int) -> str:
    return f"{values[index]:.3f}" if 0 <= index < len(values) else "-"


def _fmt_num(values: Sequence[float], index: int) -> str:
    return f"{values[index]:.2f}" if 0 <= index < len(values) else "-"
