"""Peak memory against prompt length, for ``power-sampling bench --prompt-lengths``.

Each method generates once from a prompt of each length (fixed token ids without end tokens,
:func:`~power_sampling.measure.workload.token_prompts`), and the memory its generation needed on
top of what was held before is recorded: on CUDA the peak of ``torch.cuda.max_memory_allocated``
over the allocation at the start; on a CPU the peak resident set size (Linux's ``VmHWM``, reset
through ``/proc/self/clear_refs`` before each run) over the resident size at the start. Kept KV
caches of earlier runs are dropped first, so each run starts from the same state.

The slope of peak memory against prompt length is the memory one more prompt token costs each
method; with the KV bytes per token of the model it says how many copies of the prompt's cache
a method holds at its peak (standard decoding: one; power sampling: one shared by its rows, plus
one layer's whole rows while that layer attends).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..samplers.power_sampler import PowerSampler
from .workload import full_length, token_prompts

MEMORY_METHODS: tuple[str, ...] = ("standard", "power", "mcmc")
"""The methods a prompt-length sweep runs (the paper's power algorithm, as in the bench)."""

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} is not in {_STATUS}")


def _trim() -> None:
    """Return freed heap memory to the system (glibc keeps it otherwise, and a later allocation
    that reuses it would not show as growth)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to return
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _cuda() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda if torch.cuda.is_available() else None


def memory_measure() -> str:
    """What :func:`peak_growth` measures on this machine."""
    if _cuda() is not None:
        return "torch.cuda.max_memory_allocated growth"
    if _CLEAR_REFS.exists():
        return "peak resident set size growth (VmHWM after a clear_refs reset)"
    return "ru_maxrss growth (a lower bound: the peak cannot be reset)"


def peak_growth(run: Callable[[], Any]) -> tuple[Any, int]:
    """``run()``'s result and the bytes of memory its peak needed beyond what was held before
    it (see :func:`memory_measure`)."""
    _trim()
    cuda = _cuda()
    if cuda is not None:
        cuda.synchronize()
        cuda.reset_peak_memory_stats()
        start = cuda.memory_allocated()
        result = run()
        cuda.synchronize()
        return result, int(cuda.max_memory_allocated() - start)
    if _CLEAR_REFS.exists():
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size
        start = _status_kib("VmRSS")
        result = run()
        return result, max(_status_kib("VmHWM") - start, 0) * 1024
    import resource

    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run()
    return result, max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start, 0) * 1024


def kv_bytes_per_token(backend: Any) -> int | None:
    """Keys and values of one token over all layers, from the model's config and dtype (None
    for a backend without an in-process model)."""
    model = getattr(backend, "model", None)
    if model is None or not hasattr(model, "config"):
        return None
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return int(2 * config.num_hidden_layers * heads * dim * itemsize)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The least-squares slope of ``ys`` on ``xs`` (None with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def memory_by_prompt_length(
    sampler: PowerSampler,
    lengths: Sequence[int],
    *,
    methods: Sequence[str] = MEMORY_METHODS,
    seed: int = 0,
    ignore_eos: bool = False,
) -> dict[str, Any]:
    """Each method's peak memory growth (and wall time) generating from one prompt of each of
    ``lengths`` tokens, shortest first; plus the KV bytes per token and each method's slope in
    bytes per prompt token. ``ignore_eos`` runs every generation to full length."""
    backend = sampler.backend
    if ignore_eos:
        sampler = full_length(sampler)
    paper = dict(adaptive_tolerance=0.0, reuse_rollouts=False)
    # One short generation first, so one-time allocations do not count against the first length.
    sampler.generate(token_prompts(backend, 1, 8)[0], seed=seed, method="standard")
    table: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for length in sorted(lengths):
        prompt = token_prompts(backend, 1, length)[0]
        for method in methods:
            forget = getattr(backend, "forget_kept", None)
            if forget is not None:
                forget()
            overrides: dict[str, Any] = {"method": method}
            if method == "power":
                overrides.update(paper)
            start = time.perf_counter()
            out, grown = peak_growth(partial(sampler.generate, prompt, seed=seed, **overrides))
            table[method].append(
                {
                    "prompt_tokens": length,
                    "peak_memory_mb": grown / 2**20,
                    "seconds": time.perf_counter() - start,
                    "completion_tokens": len(out.token_ids),
                }
            )
    per_token = kv_bytes_per_token(backend)
    slopes = {
        m: slope([r["prompt_tokens"] for r in rows], [r["peak_memory_mb"] * 2**20 for r in rows])
        for m, rows in table.items()
    }
    cfg = sampler.config
    return {
        "measure": memory_measure(),
        "kv_bytes_per_token": per_token,
        "rows": {"candidates": cfg.num_candidates, "rollouts": cfg.top_k * cfg.num_rollouts},
        "max_new_tokens": cfg.max_new_tokens,
        "ignore_eos": ignore_eos,
        "methods": table,
        "bytes_per_prompt_token": slopes,
        "prompt_copies_at_peak": {
            m: s / per_token if s is not None and per_token else None for m, s in slopes.items()
        },
    }


def memory_markdown(report: dict[str, Any]) -> str:
    """The sweep as a markdown table (MiB per method and prompt length) plus the slopes."""
    methods = list(report["methods"])
    lengths = [r["prompt_tokens"] for r in report["methods"][methods[0]]]
    lines = [
        f"Peak memory growth, MiB ({report['measure']}); "
        f"{report['rows']['candidates']} candidate rows, {report['rows']['rollouts']} rollout "
        f"rows, {report['max_new_tokens']} new tokens:",
        "",
        "| prompt tokens | " + " | ".join(methods) + " |",
        "|---:|" + "---:|" * len(methods),
    ]
    for i, length in enumerate(lengths):
        cells = [f"{report['methods'][m][i]['peak_memory_mb']:.1f}" for m in methods]
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    per_token = report["kv_bytes_per_token"]
    if per_token:
        lines += ["", f"- KV cache per token (all layers): {per_token / 1024:.1f} KiB"]
    for m in methods:
        s, copies = report["bytes_per_prompt_token"][m], report["prompt_copies_at_peak"][m]
        if s is not None:
            extra = f" ({copies:.1f} copies of the prompt's KV cache)" if copies is not None else ""
            lines.append(f"- {m}: {s / 1024:.1f} KiB per prompt token{extra}")
    return "\n".join(lines)
