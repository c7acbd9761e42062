"""``power-sampling serve``: an OpenAI-compatible HTTP server over a model (the embedded one by
default), in this process or spread over Ray replicas (``--replicas N``).

Sampling flags (``--preset``, ``--alpha``, ...) set the server's defaults; each request may
change any of them in ``power_sampling`` (the ``openai`` client's ``extra_body``).

Access (``--api-key``, or the ``POWER_SAMPLING_API_KEY`` variable; ``--allowed-hosts``,
``--cors-origins``) and per-request limits (``--max-tokens-limit``, ``--max-choices``,
``--max-request-forward-tokens``, ``--request-timeout``, ``--max-body-bytes``) are the server's
own: see :mod:`power_sampling.serving.access` and :mod:`power_sampling.serving.limits`. Listening
on an address other than loopback needs a key, or ``--allow-unauthenticated`` to say that the
network in front of the server does the checking.
"""

from __future__ import annotations

import argparse
import functools
import os
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
    load_vllm_backend,
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
              POWER_SAMPLING_API_KEY=$(openssl rand -hex 16) power-sampling serve --host 0.0.0.0
              power-sampling serve --model Qwen/Qwen2.5-7B-Instruct --device cuda --port 8000
              power-sampling serve --model Qwen/Qwen2.5-7B-Instruct --backend vllm
              power-sampling serve --method standard --logprobs-mode processed_logprobs
              power-sampling serve --model Qwen/Qwen2.5-7B-Instruct --replicas 8 \\
                  --gpus-per-replica 1 --ray-address auto

            docs: docs/serving.md (flags, API keys, limits, Ray, vLLM; `make docs` builds the site)
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
        "--max-batch",
        type=int,
        default=64,
        help="requests running at once, their model calls merged at every step [64]",
    )
    group.add_argument(
        "--batch-window",
        type=float,
        default=0.005,
        metavar="SECONDS",
        help="how long a step's model call waits for running requests that are still busy "
        "to join it [0.005]",
    )
    group.add_argument(
        "--max-kv-tokens",
        type=int,
        default=None,
        metavar="N",
        help="KV slots (rows x tokens) the running requests may hold together; beyond it "
        "requests wait [no limit]",
    )
    group.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="waiting requests beyond which the server answers 503 at once [256]",
    )
    group.add_argument(
        "--logprobs-mode",
        choices=("raw_logprobs", "processed_logprobs"),
        default="raw_logprobs",
        help="what /v1/completions returns as log-probs under plain decoding (--method "
        "standard), as in vLLM: the base model's at every temperature [raw_logprobs], or "
        "those of the distribution drawn from, which remote MCMC and Power-SMC need",
    )
    group.add_argument(
        "--shutdown-timeout",
        type=int,
        default=10,
        metavar="SECONDS",
        help="on Ctrl-C, how long running requests may finish before they are cancelled [10]",
    )
    _add_access_arguments(parser)
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


def _add_access_arguments(parser: argparse.ArgumentParser) -> None:
    from ..serving.access import API_KEY_ENV_VAR, AccessPolicy
    from ..serving.limits import RequestLimits

    access, limits = AccessPolicy(), RequestLimits()
    group = parser.add_argument_group("access and limits")
    group.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"accept requests with 'Authorization: Bearer KEY' only (repeat, or separate by "
        f"commas, for several keys; also read from ${API_KEY_ENV_VAR}); /health stays open",
    )
    group.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without an API key (only behind a gateway that checks)",
    )
    group.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="HOST",
        help="answer only requests whose Host header is one of these (guards against DNS "
        "rebinding; comma-separated or repeated) [any]",
    )
    group.add_argument(
        "--cors-origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from these origins call the server from a browser [none]",
    )
    group.add_argument(
        "--max-body-bytes",
        type=int,
        default=access.max_body_bytes,
        help=f"largest request body [{access.max_body_bytes}]",
    )
    group.add_argument(
        "--max-tokens-limit",
        type=int,
        default=limits.max_tokens,
        help=f"largest max_tokens a request may ask for [{limits.max_tokens}]",
    )
    group.add_argument(
        "--max-choices",
        type=int,
        default=limits.max_choices,
        help=f"largest n times prompts of one request [{limits.max_choices}]",
    )
    group.add_argument(
        "--max-request-forward-tokens",
        type=float,
        default=limits.max_forward_tokens,
        metavar="N",
        help="largest work of one request, in forward tokens bounded from its settings "
        f"[{limits.max_forward_tokens:.0e}]",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop a request that runs longer, with an error [none]",
    )


def _access(args: argparse.Namespace) -> tuple[Any, Any]:
    """The server's access policy and request limits from the flags (and the environment)."""
    from ..serving.access import API_KEY_ENV_VAR, AccessPolicy, is_loopback
    from ..serving.limits import RequestLimits

    keys = AccessPolicy.keys_from([*args.api_key, os.environ.get(API_KEY_ENV_VAR, "")])
    if not keys and not is_loopback(args.host) and not args.allow_unauthenticated:
        raise UsageError(
            f"--host {args.host} is reachable from other machines, and no API key is set: pass "
            f"--api-key KEY (or set {API_KEY_ENV_VAR}), or --allow-unauthenticated if a gateway "
            "in front of the server checks who calls it (docs/serving.md#api-keys-and-limits)"
        )
    if args.request_timeout is not None and args.request_timeout <= 0:
        raise UsageError(f"--request-timeout {args.request_timeout:g}: use a positive number")
    if args.max_choices > args.max_queue:
        raise UsageError(
            f"--max-choices {args.max_choices} is over --max-queue {args.max_queue}: such a "
            "request could never be queued; raise --max-queue or lower --max-choices"
        )
    try:
        access = AccessPolicy(
            api_keys=keys,
            allowed_hosts=tuple(h.lower() for h in AccessPolicy.keys_from(args.allowed_hosts)),
            cors_origins=AccessPolicy.keys_from(args.cors_origins),
            max_body_bytes=args.max_body_bytes,
        )
        limits = RequestLimits(
            max_tokens=args.max_tokens_limit,
            max_choices=args.max_choices,
            max_forward_tokens=int(args.max_request_forward_tokens),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return access, limits


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..backends.models import DEFAULT_MODEL

    config = config_from_args(args)  # fail fast, before the model loads
    access, limits = _access(args)
    try:
        limits.check(config, 1)
    except ValueError as exc:
        raise UsageError(f"the server's own settings: {exc}") from None
    if args.backend == "vllm" and args.device is not None:
        raise UsageError(
            f"--device {args.device} does not apply to --backend vllm: vLLM picks its platform; "
            "choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    check_model_arguments(args)
    for name in ("max_batch", "max_queue", "replicas", "max_kv_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: use 1 or more")
    try:
        import uvicorn

        from ..serving import LocalEngine, create_app
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    options = dict(
        window=args.batch_window,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_kv_tokens=args.max_kv_tokens,
    )
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
        engine = LocalEngine(_loader(args)(), close_backend=True, **options)
    name = args.served_model_name or args.model or DEFAULT_MODEL
    app = create_app(
        engine,
        model=name,
        defaults=config,
        access=access,
        limits=limits,
        request_timeout=args.request_timeout,
        logprobs_mode=args.logprobs_mode,
        root=_root(args),
    )
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


def _root(args: argparse.Namespace) -> str | None:
    """The served model's folder, where there is one (clients load its tokenizer from it)."""
    if args.base_url:
        return None
    if args.model is None:
        from ..backends.models import default_model_dir

        return str(default_model_dir())
    return os.path.abspath(args.model) if os.path.isdir(args.model) else args.model


def _loader(args: argparse.Namespace) -> Any:
    """A picklable function that loads the model (in this process, or in each Ray replica)."""
    if args.backend == "vllm":
        options = argparse.Namespace(
            model=args.model, device=None, dtype=args.dtype, base_url=args.base_url
        )
        return functools.partial(load_vllm_backend, options)
    if args.replicas:
        from ..engine.registry import load_shared

        return functools.partial(
            load_shared, args.model, device=args.device, dtype=args.dtype, base_url=args.base_url
        )
    return functools.partial(load_backend, args)
