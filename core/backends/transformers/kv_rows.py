"""KV-cache rows for the transformers backend: batches of sequences with their caches, and the
store of kept batches that later calls continue from.

A :class:`Rows` batch holds one sequence per row, every token of it in the cache. Rows of
different lengths share a batch by padding: caches are left-padded with masked zero columns, and
rows extended by different numbers of tokens leave masked holes (``mask`` is 0 there). Nothing
here runs the model; :mod:`power_sampling.backends.transformers.backend` does.

Rows that continue the same prefix share its keys and values (:func:`share`): each layer stores
the prefixes once and only the tokens after them per row (:class:`~.kv_shared.SharedLayer`), so
n rollouts of a long prompt hold one copy of it, not n, and batches that mix kept and fresh
rows (:func:`concat`) keep what their rows shared. The model still attends over whole rows: a
layer's full keys are assembled for its attention and dropped after it, one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .kv_shared import SharedLayer, pad_left, stack, stack_masks

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
            for layer in rows.cache.layers:
                if isinstance(layer, SharedLayer):
                    layer.compact()  # a kept row holds its own tokens, not its prefix again
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

    def gather(self, prefixes: list[Seq]) -> tuple[Rows | None, list[int], list[int]]:
        """The longest kept row each prefix starts with, for the prefixes that have one.

        Returns those rows (None if no prefix has one; grouped by kept batch), the index in
        ``prefixes`` of each of them, and the indices of the prefixes with no kept row. The
        caller runs each row's missing tokens.
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
        order = [i for _, members, _ in groups.values() for i in members]
        return (concat(parts) if parts else None), order, fresh


def share(rows: Rows, index: list[int]) -> Rows:
    """Like :func:`select`, but the rows keep one copy of each prefix: new rows continuing the
    same sequence (a prefix's ``n`` samples) cost only their own tokens. Rows that already
    share their prefixes share them further (:meth:`SharedLayer.share`)."""
    at = torch.tensor(index, dtype=torch.long, device=rows.mask.device)
    cache = DynamicCache()
    if rows.shared:
        layers: list[Any] = list(rows.cache.layers)  # all SharedLayer
        cache.layers.extend(layer.share(at) for layer in layers)
    else:
        cache.layers.extend(SharedLayer.of(keys, values, at) for keys, values in rows.kv)
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
    """Stack batches, left-padding narrower ones with masked zero columns. If any part shares
    its prefixes the result does too, and what the parts shared stays shared
    (:func:`~.kv_shared.stack`); plain parts are stacked as they are."""
    if len(parts) == 1:
        return parts[0]
    if any(p.shared for p in parts):
        cache, mask = _stack_shared(parts)
    else:
        width = max(p.mask.shape[1] for p in parts)
        kvs = [p.kv for p in parts]
        like = next((kv for kv in kvs if kv), [])
        per_part = [kv or uncached(like, len(p.seqs)) for kv, p in zip(kvs, parts, strict=True)]
        kv = []
        for i in range(len(like)):
            keys = torch.cat([pad_left(layers[i][0], width, 2) for layers in per_part])
            values = torch.cat([pad_left(layers[i][1], width, 2) for layers in per_part])
            kv.append((keys, values))
        cache, mask = new_cache(kv), torch.cat([pad_left(p.mask, width, 1) for p in parts])
    logits = None
    first = next((p.logits for p in parts if p.logits is not None), None)
    if first is not None:
        blank = first.new_zeros(1, first.shape[1])
        logits = torch.cat(
            [blank.expand(len(p.seqs), -1) if p.logits is None else p.logits for p in parts]
        )
    return Rows([s for p in parts for s in p.seqs], cache, mask, logits)


def _stack_shared(parts: list[Rows]) -> tuple[DynamicCache, torch.Tensor]:
    """The cache and mask of the parts stacked as shared rows; a plain part's rows become
    pieces of their own (not copied per row), a part without a cache gets zero columns."""
    given: list[tuple[list[SharedLayer] | None, torch.Tensor]] = []
    for p in parts:
        layers: list[Any] = list(p.cache.layers)
        if p.shared:
            given.append((layers, p.mask))
        elif layers:
            at = torch.arange(len(p.seqs), device=p.mask.device)
            given.append(([SharedLayer.of(k, v, at) for k, v in p.kv], p.mask))
        else:
            given.append((None, p.mask))
    cache = DynamicCache()
    cache.layers.extend(stack(given))
    return cache, stack_masks(given)


def uncached(like: KV, rows: int) -> KV:
    """Zero-width keys and values for ``rows`` rows, shaped like ``like``."""
    return [
        (k.new_zeros(rows, k.shape[1], 0, k.shape[3]), v.new_zeros(rows, v.shape[1], 0, v.shape[3]))
        for k, v in like
    ]
