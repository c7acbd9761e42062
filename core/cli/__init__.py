"""``power-sampling``: the command line, one module per subcommand.

- ``generate PROMPT``: one completion (:mod:`.generate`).
- ``demo``: standard vs power sampling on one word problem (:mod:`.demo`).
- ``eval``: a method on a benchmark, or several compared (:mod:`.eval`).
- ``bench``: cost of power sampling vs MCMC and standard decoding (:mod:`.bench`).
- ``serve``: an OpenAI-compatible HTTP server over the model (:mod:`.serve`).

Each module defines ``add_parser(subparsers)``, built from the shared helpers in :mod:`.common`.

Exit codes: 0 success, 1 runtime failure (e.g. a model that cannot be loaded), 2 invalid
arguments or settings (one line on stderr naming the field and the fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import bench, demo, eval, generate, serve
from .common import PROG, ModelLoadError, UsageError, configure_logging, error_message, logger

_SUBCOMMANDS = (generate, demo, eval, bench, serve)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    __version__ = version("power-sampling")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Training-free reasoning: sample from a language model's power distribution "
        "p(x)^alpha with scalable power sampling (arXiv 2601.21590).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _SUBCOMMANDS:
        command.add_parser(subparsers)
    return parser


def configure_runtime() -> None:
    """Process settings read when torch loads (lazily, after this), each only if unset.

    ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep instead of spinning between operations.
    A small model makes many tiny operations; on a CPU shared with other work, spinning threads
    fight for the cores (docs/performance.md, "CPU threads").
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
