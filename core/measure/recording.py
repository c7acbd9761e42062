"""The backend calls of a run, recorded, and replayed through the model's own ``generate``: the
reference the bench's efficiency is measured against."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Call:
    """The shape of one backend call: ``n`` continuations of at most ``new_tokens`` tokens after
    each prefix, ``drawn`` tokens actually produced, in ``seconds``."""

    prefixes: list[tuple[int, ...]]
    n: int
    new_tokens: int
    drawn: int
    seconds: float


class RecordingBackend:
    """A transparent proxy that records the shape of every ``sample`` and ``top_k`` call, so
    the same batched work can be replayed through the model's own ``generate``."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.calls: list[Call] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def sample(self, prefixes: Any, n: int, max_new_tokens: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self._backend.sample(prefixes, n, max_new_tokens, **kwargs)
        budget = max_new_tokens if isinstance(max_new_tokens, int) else max(max_new_tokens)
        drawn = sum(len(c.token_ids) for row in out.continuations for c in row)
        self._record(start, prefixes, n, budget, drawn)
        return out

    def top_k(self, prefixes: Any, k: int, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self._backend.top_k(prefixes, k, **kwargs)
        self._record(start, prefixes, 1, 1, len(prefixes))  # one position scored per prefix
        return out

    def _record(self, start: float, prefixes: Any, n: int, new_tokens: int, drawn: int) -> None:
        seconds = time.perf_counter() - start
        self.calls.append(Call([tuple(p) for p in prefixes], n, new_tokens, drawn, seconds))


def replay_with_generate(backend: Any, calls: Sequence[Call]) -> tuple[float, int]:
    """Run the recorded calls through ``model.generate`` (same prefixes, rows and lengths,
    sampling at temperature 1 without truncation, every row to the full length); returns the
    seconds taken and the tokens generated."""
    import torch

    model, seconds, tokens = backend.model, 0.0, 0
    kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=0)
    with torch.inference_mode():
        for call in calls:
            if call.new_tokens == 0:
                continue
            rows = [p for p in call.prefixes for _ in range(call.n)]
            width = max(map(len, rows))
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, row in enumerate(rows):  # left-padded, as generate expects
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
            start = time.perf_counter()
            model.generate(
                ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=call.new_tokens,
                min_new_tokens=call.new_tokens,
                **kwargs,
            )
            seconds += time.perf_counter() - start
            tokens += len(rows) * call.new_tokens
    return seconds, tokens
