"""Cache layers whose rows share their prefixes' keys and values (see :mod:`.kv_rows`).

A :class:`SharedLayer` holds a row's columns in segments, left to right: each segment is a tensor
of a few distinct pieces (``[pieces, heads, columns, head_dim]``) and an index naming the piece
of every row, so rows that continue one prefix point at one copy of it. Only the tokens a row
added since it was last shared (``own``) are stored per row. Whole rows are assembled for one
layer's attention and dropped after it.

Sharing again (a candidate's rollouts, the next step's candidates) turns the rows' own tokens
into one more segment, without copying what is already shared. At most :data:`MAX_SEGMENTS`
are kept: beyond that the last two merge, copying the later part of each row once per distinct
piece (the tokens generated so far, once per distinct prefix: never the prompt, which is the
first segment, once per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

MAX_SEGMENTS = 3
"""Segments per layer: the prompt, the tokens generated before, and the latest shared tokens.
More would make every attention assemble rows from more pieces."""
WHOLE_ROWS_BYTES = 64 * 2**20
"""A cache whose layers' whole rows (keys and values, shared columns copied out per row) fit in
this many bytes together keeps them, while a call runs, in one buffer per layer that each step
writes its new columns into; a larger one assembles a layer's whole rows afresh at every step.
That assembly copies every row's prefix at every step, which makes it most of a small model's
step at long contexts (docs/performance.md, "Memory", gives the bound). Rows are kept
(:meth:`SharedLayer.compact`) and shared again without the buffer."""


@dataclass(frozen=True)
class Segment:
    """Columns shared by the rows: row ``r`` holds ``keys[index[r]]`` and ``values[index[r]]``."""

    keys: torch.Tensor
    values: torch.Tensor
    index: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.keys.shape[-2])

    def pick(self, at: torch.Tensor) -> Segment:
        """The same pieces for the rows ``at``."""
        return Segment(self.keys, self.values, self.index[at])


class SharedLayer(DynamicLayer):
    """A cache layer of shared :class:`Segment` columns followed by each row's own columns
    (``own_keys`` / ``own_values``, ``[rows, heads, columns, head_dim]``)."""

    def __init__(self, segments: list[Segment], own: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.lazy_initialization(*own)
        self.segments = segments
        self.own_keys, self.own_values = own
        self.keys, self.values = own
        self.layers = 1
        """How many layers the cache has: they share WHOLE_ROWS_BYTES (see :func:`budget`)."""
        self._buffer: tuple[torch.Tensor, torch.Tensor] | None = None
        """Whole rows with spare columns (see :data:`WHOLE_ROWS_BYTES`); while it lives, the
        own columns are views of it."""

    @classmethod
    def of(cls, keys: torch.Tensor, values: torch.Tensor, at: torch.Tensor) -> SharedLayer:
        """Rows ``at`` of these whole rows, sharing them (nothing is copied)."""
        return cls([Segment(keys, values, at)], _no_columns(keys, values, len(at)))

    @property
    def widths(self) -> list[int]:
        """The width of each segment, then of the own columns."""
        return [s.width for s in self.segments] + [int(self.own_keys.shape[-2])]

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole rows: the segments' columns followed by the own ones (new tensors)."""
        return self._whole(0), self._whole(1)

    def _whole(self, kind: int, columns: int = 0) -> torch.Tensor:
        """Keys (``kind`` 0) or values (1) of whole rows, in ``columns`` columns if more."""
        own = (self.own_keys, self.own_values)[kind]
        rows, width = own.shape[0], sum(self.widths)
        out = own.new_empty(rows, own.shape[1], max(width, columns), own.shape[3])
        start = 0
        for segment in self.segments:
            piece = (segment.keys, segment.values)[kind]
            end = start + segment.width
            # A single piece (the common case) is broadcast into place without a gathered copy.
            if piece.shape[0] == 1:
                out[:, :, start:end] = piece.expand(rows, -1, -1, -1)
            else:
                out[:, :, start:end] = piece.index_select(0, segment.index)
            start = end
        out[:, :, start:width] = own
        return out

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shared, start = sum(s.width for s in self.segments), self.get_seq_length()
        stop = start + key_states.shape[-2]
        if self._buffer is None or self._buffer[0].shape[-2] < stop:
            self._grow(stop)
        if self._buffer is None:  # too large to keep whole: assemble the rows for this step
            self.own_keys = torch.cat([self.own_keys, key_states], dim=-2)
            self.own_values = torch.cat([self.own_values, value_states], dim=-2)
            self.keys, self.values = self.own_keys, self.own_values
            return self.full()
        keys, values = self._buffer
        keys[:, :, start:stop] = key_states
        values[:, :, start:stop] = value_states
        self.own_keys, self.own_values = keys[:, :, shared:stop], values[:, :, shared:stop]
        self.keys, self.values = self.own_keys, self.own_values
        return keys[:, :, :stop], values[:, :, :stop]

    def _grow(self, needed: int) -> None:
        """A buffer of at least ``needed`` columns holding the rows so far, with room to grow
        by half again (so copies are rare); none when it would exceed this layer's share of
        WHOLE_ROWS_BYTES."""
        own = self.own_keys
        per_column = 2 * own.shape[0] * own.shape[1] * own.shape[3] * own.element_size()
        columns = min(needed + max(needed // 2, 64), WHOLE_ROWS_BYTES // self.layers // per_column)
        self._buffer = (
            None if columns < needed else (self._whole(0, columns), self._whole(1, columns))
        )

    def compact(self) -> SharedLayer:
        """This layer without its buffer: the own columns copied out (rows that are kept
        hold their own tokens, not a copy of their prefixes)."""
        if self._buffer is not None:
            self.own_keys, self.own_values = self.own_keys.clone(), self.own_values.clone()
            self.keys, self.values = self.own_keys, self.own_values
            self._buffer = None
        return self

    def get_seq_length(self) -> int:
        return sum(self.widths)

    def select(self, at: torch.Tensor) -> SharedLayer:
        """The rows ``at`` (repeats allowed): the segments stay shared, own columns are copied."""
        own = (self.own_keys.index_select(0, at), self.own_values.index_select(0, at))
        return SharedLayer([s.pick(at) for s in self.segments], own)

    def share(self, at: torch.Tensor) -> SharedLayer:
        """The rows ``at`` (repeats allowed), their own columns shared as one more segment."""
        self.compact()
        segments = [s.pick(at) for s in self.segments]
        if self.own_keys.shape[-2]:
            segments.append(Segment(self.own_keys, self.own_values, at))
        if len(segments) > MAX_SEGMENTS:
            segments[-2:] = [_merge(*segments[-2:])]
        return SharedLayer(segments, _no_columns(self.own_keys, self.own_values, len(at)))


def budget(layers: list[Any]) -> None:
    """Tell the shared layers of one cache how many share WHOLE_ROWS_BYTES."""
    for layer in layers:
        if isinstance(layer, SharedLayer):
            layer.layers = len(layers)


def _no_columns(
    keys: torch.Tensor, values: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-width keys and values for ``rows`` rows, shaped like ``keys`` and ``values``."""
    return (
        keys.new_zeros(rows, keys.shape[1], 0, keys.shape[3]),
        values.new_zeros(rows, values.shape[1], 0, values.shape[3]),
    )


def _merge(first: Segment, second: Segment) -> Segment:
    """One segment for two adjacent ones: a piece per distinct pair the rows use."""
    count = second.keys.shape[0]
    pairs, index = torch.unique(first.index * count + second.index, return_inverse=True)
    left, right = pairs // count, pairs % count
    keys = torch.cat([first.keys.index_select(0, left), second.keys.index_select(0, right)], 2)
    values = torch.cat(
        [first.values.index_select(0, left), second.values.index_select(0, right)], 2
    )
    return Segment(keys, values, index)


def stack(parts: list[tuple[list[SharedLayer] | None, torch.Tensor]]) -> list[SharedLayer]:
    """The layers of the parts' rows stacked, prefixes still shared; :func:`stack_masks` gives
    the matching mask.

    Each part is its layers (None for rows with no cache yet) and its ``[rows, columns]`` mask.
    Segments line up from the left: segment ``j`` of every part goes into one segment, each
    piece left-padded to the widest with masked zero columns (a part without it gets a zero
    piece). A segment that is the same tensor in every part is kept as it is, so rows gathered
    from one batch share what they shared before; otherwise its pieces are copied once each.
    """
    like = next(layers for layers, _ in parts if layers is not None)
    _, widths, own_width = _shapes(parts)
    counts = [len(mask) for _, mask in parts]
    out = []
    for i, ref in enumerate(like):
        at_i = [None if layers is None else layers[i] for layers, _ in parts]
        segments = [
            _stack_segment(
                [None if layer is None or j >= len(layer.segments) else layer.segments[j]
                 for layer in at_i],
                counts, widths[j], ref,
            )
            for j in range(len(widths))
        ]  # fmt: skip
        own = [
            (layer.own_keys, layer.own_values)
            if layer is not None
            else _no_columns(ref.own_keys, ref.own_values, count)
            for layer, count in zip(at_i, counts, strict=True)
        ]
        keys = torch.cat([pad_left(k, own_width, 2) for k, _ in own])
        values = torch.cat([pad_left(v, own_width, 2) for _, v in own])
        out.append(SharedLayer(segments, (keys, values)))
    return out


def stack_masks(parts: list[tuple[list[SharedLayer] | None, torch.Tensor]]) -> torch.Tensor:
    """The mask of :func:`stack`'s rows: each part's columns laid out as its segments are."""
    shapes, widths, own_width = _shapes(parts)
    masks = []
    for (_, mask), shape in zip(parts, shapes, strict=True):
        pieces, start = [], 0
        for j, width in enumerate(widths):
            mine = shape[j] if j < len(shape) - 1 else 0
            pieces.append(pad_left(mask[:, start : start + mine], width, 1))
            start += mine
        pieces.append(pad_left(mask[:, start:], own_width, 1))
        masks.append(torch.cat(pieces, 1))
    return torch.cat(masks)


def _shapes(
    parts: list[tuple[list[SharedLayer] | None, torch.Tensor]],
) -> tuple[list[list[int]], list[int], int]:
    """Each part's widths (segments, then own), the stacked segments' widths, the own width."""
    shapes = [[0] if layers is None else layers[0].widths for layers, _ in parts]
    depth = max(len(w) for w in shapes) - 1
    widths = [max(w[j] for w in shapes if j < len(w) - 1) for j in range(depth)]
    return shapes, widths, max(w[-1] for w in shapes)


def _stack_segment(
    mine: list[Segment | None], counts: list[int], width: int, like: SharedLayer
) -> Segment:
    """One segment for the parts' segments (None where a part has none), ``width`` wide."""
    present = [s for s in mine if s is not None]
    first = present[0]
    if len(present) == len(mine) and all(s.keys is first.keys for s in present):
        return Segment(first.keys, first.values, torch.cat([s.index for s in present]))
    keys, values, index, pieces, zero_at = [], [], [], 0, -1
    for segment, count in zip(mine, counts, strict=True):
        if segment is None:
            if zero_at < 0:  # one zero piece for every row without this segment
                zero_k, zero_v = _no_columns(like.own_keys, like.own_values, 1)
                keys.append(pad_left(zero_k, width, 2))
                values.append(pad_left(zero_v, width, 2))
                zero_at, pieces = pieces, pieces + 1
            index.append(first.index.new_full((count,), zero_at))
            continue
        keys.append(pad_left(segment.keys, width, 2))
        values.append(pad_left(segment.values, width, 2))
        index.append(segment.index + pieces)
        pieces += segment.keys.shape[0]
    return Segment(torch.cat(keys), torch.cat(values), torch.cat(index))


def pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` with zero columns prepended along ``dim`` up to ``width``."""
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim) if shape[dim] else t
