"""Progress bars on stderr, shared by the commands and the long runs they start (evaluations,
the bench, the fidelity study): a tqdm bar when asked for, nothing otherwise.

A command asks for one with :func:`progress_wanted`: not with ``-q``, and only when stderr is a
terminal, so logs and pipes get no bar. The functions that run take ``progress`` as a flag and
draw the bar with :func:`progress_bar`. tqdm is imported inside, so importing this is cheap.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


def progress_wanted(quiet: bool) -> bool:
    """Whether a command draws progress bars: not when ``quiet``, and only on a terminal."""
    return not quiet and sys.stderr.isatty()


def progress_bar(
    total: int, *, desc: str, unit: str, progress: bool, file: IO[str] | None = None, **kwargs: Any
) -> tqdm[Any]:
    """A tqdm bar over ``total`` steps on ``file`` (stderr by default); a silent one that
    counts nothing unless ``progress``."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc or None,
        unit=unit,
        file=file if file is not None else sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
        **kwargs,
    )
