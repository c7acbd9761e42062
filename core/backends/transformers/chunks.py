"""Running rows in chunks of a bounded size, halving a chunk that runs out of GPU memory."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


def in_chunks(count: int, run: Callable[[range], T], max_batch_size: int, name: str) -> list[T]:
    """``run`` over chunks of at most ``max_batch_size`` of ``count`` rows; when the GPU runs out
    of memory, retry the chunk at half the size, down to one row (then an error that says what
    to change, naming the model ``name``)."""
    size, start, out = max_batch_size, 0, []
    while start < count:
        chunk = range(start, min(start + size, count))
        try:
            out.append(run(chunk))
        except torch.cuda.OutOfMemoryError as error:
            if len(chunk) == 1:
                raise RuntimeError(
                    f"{name} ran out of GPU memory on a single row (max_batch_size="
                    f"{max_batch_size} was halved down to 1); use shorter prompts, a "
                    "smaller dtype or a smaller model"
                ) from error
            size = len(chunk) // 2
            logger.warning(
                "out of GPU memory at %d rows, retrying with %d; a lower max_batch_size "
                "avoids the retries",
                len(chunk),
                size,
            )
            torch.cuda.empty_cache()
            continue
        start = chunk.stop
    return out
