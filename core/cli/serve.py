"""``power-sampling serve``: an OpenAI-compatible HTTP server over a model (the embedded one by
default), in this process or spread over Ray replicas (``--replicas N``).

Sampling flags (``--preset``, ``--alpha``, ...) set the server's defaults; each request may
change any of them in ``power_sampling`` (the ``openai`` client's ``extra_body``).
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
from typing import Any

from .common import (
    DEFAULT_MODEL_HELP,
    UsageError,
    add_common_arguments,
    add_config_arguments,
    add_model_arguments,
    check_model_arguments,
    config_from_args,
    load_backend,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible HTTP API",
        description="Serve the model (default: "
        + DEFAULT_MODEL_HELP
        + ") at /v1/chat/completions, /v1/completions and /v1/models.\nThe sampling flags "
        "are the defaults; requests override them in extra_body={'power_sampling': {...}}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              power-sampling serve --preset cpu
              power-sampling serve --model Qwen/Qwen2.5-7B-Instruct --device cuda --port 8000
              power-sampling serve --model Qwen/Qwen2.5-7B-Instruct --backend vllm
              power-sampling serve --model Qwen/Qwen2.5-7B-Instruct --replicas 8 \\
                  --gpus-per-replica 1 --ray-address auto
            """
        ),
    )
    add_config_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default="transformers",
        help="run the model with transformers (default) or on a vLLM engine (needs the [vllm] "
        "extra; --device does not apply: vLLM picks its GPUs, e.g. by CUDA_VISIBLE_DEVICES)",
    )
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1]")
    group.add_argument("--port", type=int, default=8000, help="port to listen on [8000]")
    group.add_argument(
        "--served-model-name",
        default=None,
        metavar="NAME",
        help="the model name clients send and /v1/models lists (default: --model, or the "
        "embedded model's name)",
    )
    group.add_argument(
        "--max-batch", type=int, default=8, help="requests batched into one sampler run [8]"
    )
    group.add_argument(
        "--batch-window",
        type=float,
        default=0.005,
        metavar="SECONDS",
        help="how long the first request waits for others to share its batch [0.005]",
    )
    group.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="waiting requests beyond which the server answers 503 at once [256]",
    )
    group.add_argument(
        "--shutdown-timeout",
        type=int,
        default=10,
        metavar="SECONDS",
        help="on Ctrl-C, how long running requests may finish before they are cancelled [10]",
    )
    ray = parser.add_argument_group("scale-out (Ray)")
    ray.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="run N model copies as Ray actors and spread requests over them",
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        help="an existing Ray cluster (e.g. auto, or ray://host:10001); default: start one here",
    )
    ray.add_argument("--gpus-per-replica", type=float, default=0, help="GPUs per replica [0]")
    ray.add_argument("--cpus-per-replica", type=float, default=1, help="CPUs per replica [1]")
    add_common_arguments(parser)
    parser.set_defaults(handler=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..backends.models import DEFAULT_MODEL

    config = config_from_args(args)  # fail fast, before the model loads
    if args.backend == "vllm" and args.device is not None:
        raise UsageError(
            f"--device {args.device} does not apply to --backend vllm: vLLM picks its platform; "
            "choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    check_model_arguments(args)
    for name in ("max_batch", "max_queue", "replicas"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: use 1 or more")
    try:
        import uvicorn

        from ..serving import LocalEngine, create_app
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    options = dict(window=args.batch_window, max_batch=args.max_batch, max_queue=args.max_queue)
    engine: Any
    if args.replicas:
        from ..serving.replicas import RayEngine

        engine = RayEngine(
            _loader(args),
            args.replicas,
            address=args.ray_address,
            num_cpus=args.cpus_per_replica,
            num_gpus=args.gpus_per_replica,
            **options,
        )
    else:
        engine = LocalEngine(_loader(args)(), **options)
    name = args.served_model_name or args.model or DEFAULT_MODEL
    app = create_app(engine, model=name, defaults=config)
    if not args.quiet:
        where = f"http://{args.host}:{args.port}/v1"
        print(f"Serving {name} at {where} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="info" if args.verbose else "warning",
            timeout_graceful_shutdown=args.shutdown_timeout,
        )
    finally:
        engine.close()  # also closed by the app's shutdown; a second close is a no-op
    return 0


def _loader(args: argparse.Namespace) -> Any:
    """A picklable function that loads the model (in this process, or in each Ray replica)."""
    if args.backend == "vllm":
        from .bench import load_vllm_backend

        options = argparse.Namespace(model=args.model, device=None, dtype=args.dtype)
        return functools.partial(load_vllm_backend, options)
    if args.replicas:
        from ..engine.registry import load_shared

        return functools.partial(load_shared, args.model, device=args.device, dtype=args.dtype)
    return functools.partial(load_backend, args)
