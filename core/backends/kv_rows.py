"""KV-cache rows for the transformers backend: batches of sequences with their caches, and the
store of kept batches that later calls continue from.

A :class:`Rows` batch holds one sequence per row, every token of it in the cache. Rows of
different lengths share a batch by padding: caches are left-padded with masked zero columns, and
rows extended by different numbers of tokens leave masked holes (``mask`` is 0 there). Nothing
here runs the model; :mod:`power_sampling.backends.transformers` does.

Rows that continue the same prefix share its keys and values (:func:`share`): each layer stores
the prefixes once and only the tokens after them per row (:class:`SharedLayer`), so n rollouts of
a long prompt hold one copy of it, not n. The model still attends over whole rows: a layer's
full keys are assembled for its attention and dropped after it, one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

Seq = tuple[int, ...]
KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per-layer (keys, values), each ``[rows, heads, columns, head_dim]``."""

KEPT_BATCHES = 4
"""How many kept batches are remembered (the least recently used goes first)."""


@dataclass
class Rows:
    """Sequences whose every token is in ``cache``, one per row, padded to a common width.

    ``mask`` is 1 on real columns and 0 on padding and holes; ``logits`` are the float32
    next-token logits after each row's last token (None before the first run).
    """

    seqs: list[Seq]
    cache: DynamicCache
    mask: torch.Tensor
    logits: torch.Tensor | None

    @property
    def kv(self) -> KV:
        """The cache's per-layer (keys, values), whole rows (shared prefixes copied out)."""
        layers: list[Any] = list(self.cache.layers)  # DynamicLayer or SharedLayer
        return [
            layer.full() if isinstance(layer, SharedLayer) else (layer.keys, layer.values)
            for layer in layers
        ]

    @property
    def shared(self) -> bool:
        """Whether the cache stores shared prefixes once (see :func:`share`)."""
        layers = list(self.cache.layers)
        return bool(layers) and all(isinstance(layer, SharedLayer) for layer in layers)

    @classmethod
    def empty(cls, count: int, device: torch.device) -> Rows:
        """``count`` rows with no tokens yet."""
        mask = torch.zeros(count, 0, dtype=torch.long, device=device)
        return cls([()] * count, DynamicCache(), mask, None)


@dataclass
class Kept:
    """A kept batch: ``index`` maps each row's sequence to the row; ``lengths`` are their
    lengths, so a lookup tries one slice of the prefix per distinct length."""

    rows: Rows
    index: dict[Seq, int]
    lengths: set[int]


class KeptStore:
    """A small LRU store of kept batches, indexed by their rows' token sequences."""

    def __init__(self, capacity: int = KEPT_BATCHES) -> None:
        self.capacity = capacity
        self.batches: list[Kept] = []

    def remember(self, parts: list[Rows]) -> None:
        """Keep these rows for later prefixes that equal or extend their sequences."""
        rows = concat(parts) if parts else None
        if rows is not None and rows.seqs:
            index = {s: i for i, s in enumerate(rows.seqs)}
            self.batches.append(Kept(rows, index, {len(s) for s in rows.seqs}))
            del self.batches[: -self.capacity]

    def lookup(self, prefix: Seq) -> tuple[Kept, int, int] | None:
        """(batch, row, length) of the longest kept sequence that ``prefix`` starts with; that
        batch becomes the most recently used."""
        best: tuple[Kept, int, int] | None = None
        for kept in self.batches:
            for length in kept.lengths:
                row = kept.index.get(prefix[:length]) if length <= len(prefix) else None
                if row is not None and (best is None or length > best[2]):
                    best = (kept, row, length)
        if best is not None:
            self.batches.remove(best[0])
            self.batches.append(best[0])
        return best

    def gather(self, prefixes: list[Seq], device: torch.device) -> tuple[Rows, list[int]]:
        """One row per prefix: the longest kept row it starts with, or an empty row.

        Returns the rows and, for each row, the index of its prefix in ``prefixes`` (rows come
        grouped by kept batch, the empty ones last). The caller runs each row's missing tokens.
        """
        groups: dict[int, tuple[Kept, list[int], list[int]]] = {}
        fresh = []
        for i, prefix in enumerate(prefixes):
            hit = self.lookup(prefix)
            if hit is None:
                fresh.append(i)
            else:
                members, picks = groups.setdefault(id(hit[0]), (hit[0], [], []))[1:]
                members.append(i)
                picks.append(hit[1])
        parts = [select(kept.rows, picks) for kept, _, picks in groups.values()]
        order = [i for _, members, _ in groups.values() for i in members] + fresh
        if fresh:
            parts.append(Rows.empty(len(fresh), device))
        return concat(parts), order


class SharedLayer(DynamicLayer):
    """A cache layer whose rows continue shared prefixes: ``prefix_keys`` / ``prefix_values``
    hold each prefix once (``[prefixes, heads, columns, head_dim]``), ``index`` names the prefix
    of every row, and ``own_keys`` / ``own_values`` hold only each row's tokens after it."""

    def __init__(
        self,
        prefix: tuple[torch.Tensor, torch.Tensor],
        index: torch.Tensor,
        own: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        super().__init__()
        self.prefix_keys, self.prefix_values = prefix
        self.index = index
        self.lazy_initialization(*own)
        self.own_keys, self.own_values = own
        self.keys, self.values = own

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole rows: each row's prefix followed by its own tokens (new tensors)."""
        return self._whole(self.prefix_keys, self.own_keys), self._whole(
            self.prefix_values, self.own_values
        )

    def _whole(self, prefix: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        rows, width = len(self.index), prefix.shape[-2]
        out = own.new_empty(rows, own.shape[1], width + own.shape[2], own.shape[3])
        # One prefix (the common case) is broadcast straight into place, with no gathered copy.
        source = prefix.expand(rows, -1, -1, -1) if prefix.shape[0] == 1 else prefix[self.index]
        out[:, :, :width] = source
        out[:, :, width:] = own
        return out

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.own_keys = torch.cat([self.own_keys, key_states], dim=-2)
        self.own_values = torch.cat([self.own_values, value_states], dim=-2)
        self.keys, self.values = self.own_keys, self.own_values
        return self.full()

    def get_seq_length(self) -> int:
        return int(self.prefix_keys.shape[-2] + self.own_keys.shape[-2])

    def select(self, at: torch.Tensor) -> SharedLayer:
        """The rows ``at`` (repeats allowed), still sharing the same prefixes."""
        own = (self.own_keys.index_select(0, at), self.own_values.index_select(0, at))
        return SharedLayer((self.prefix_keys, self.prefix_values), self.index[at], own)


def share(rows: Rows, index: list[int]) -> Rows:
    """Like :func:`select`, but the rows keep one copy of each prefix: new rows continuing the
    same sequence (a prefix's ``n`` samples) cost only their own tokens."""
    if rows.shared:
        return select(rows, index)
    at = torch.tensor(index, dtype=torch.long, device=rows.mask.device)
    cache = DynamicCache()
    for keys, values in rows.kv:
        empty = (
            keys.new_zeros(len(index), *keys.shape[1:2], 0, keys.shape[3]),
            values.new_zeros(len(index), *values.shape[1:2], 0, values.shape[3]),
        )
        cache.layers.append(SharedLayer((keys, values), at, empty))
    logits = None if rows.logits is None else rows.logits.index_select(0, at)
    return Rows([rows.seqs[i] for i in index], cache, rows.mask.index_select(0, at), logits)


def new_cache(kv: KV) -> DynamicCache:
    """A DynamicCache over these tensors as they are (``update`` would copy them once more)."""
    cache = DynamicCache()
    for keys, values in kv:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def select(rows: Rows, index: list[int]) -> Rows:
    """A new batch of the given rows (repeats allowed); ``rows`` is left as it is. Shared
    prefixes stay shared."""
    at = torch.tensor(index, dtype=torch.long, device=rows.mask.device)
    if rows.shared:
        cache = DynamicCache()
        layers: list[Any] = list(rows.cache.layers)  # all SharedLayer
        cache.layers.extend(layer.select(at) for layer in layers)
    else:
        cache = new_cache([(k.index_select(0, at), v.index_select(0, at)) for k, v in rows.kv])
    logits = None if rows.logits is None else rows.logits.index_select(0, at)
    return Rows([rows.seqs[i] for i in index], cache, rows.mask.index_select(0, at), logits)


def concat(parts: list[Rows]) -> Rows:
    """Stack batches, left-padding narrower ones with masked zero columns."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.mask.shape[1] for p in parts)
    kvs = [p.kv for p in parts]  # shared prefixes are copied out here
    like = next((kv for kv in kvs if kv), [])
    per_part = [kv or uncached(like, len(p.seqs)) for kv, p in zip(kvs, parts, strict=True)]
    kv = []
    for i in range(len(like)):
        keys = torch.cat([pad_left(layers[i][0], width, 2) for layers in per_part])
        values = torch.cat([pad_left(layers[i][1], width, 2) for layers in per_part])
        kv.append((keys, values))
    mask = torch.cat([pad_left(p.mask, width, 1) for p in parts])
    logits = None
    first = next((p.logits for p in parts if p.logits is not None), None)
    if first is not None:
        blank = first.new_zeros(1, first.shape[1])
        logits = torch.cat(
            [blank.expand(len(p.seqs), -1) if p.logits is None else p.logits for p in parts]
        )
    return Rows([s for p in parts for s in p.seqs], new_cache(kv), mask, logits)


def uncached(like: KV, rows: int) -> KV:
    """Zero-width keys and values for ``rows`` rows, shaped like ``like``."""
    return [
        (k.new_zeros(rows, k.shape[1], 0, k.shape[3]), v.new_zeros(rows, v.shape[1], 0, v.shape[3]))
        for k, v in like
    ]


def pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` with zero columns prepended along ``dim`` up to ``width``."""
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim) if shape[dim] else t
