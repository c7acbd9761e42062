"""The model runs of :class:`~.backend.TransformersBackend`: prefill, extension and decoding.

Rows of different lengths share a batch by padding: caches are left-padded with masked zero
columns, and rows extended by different numbers of tokens leave masked holes; positions count
real tokens only, so every row sees exactly the positions of its own sequence.

Log-probs are the model's raw base log-probs (``log_softmax`` of float32 logits at temperature
1), never warper-processed; tokens are drawn from softmax(logits / temperature) with the call's
seeded ``torch.Generator``. The row batches and the kept store are in :mod:`.kv_rows`, the
per-decode bookkeeping in :mod:`.draws`, the grammar masks in :mod:`.masks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...text import tokens_to_stop
from ..base import Continuation, StopCondition
from ..hf_text import HFText
from .draws import Draws, draw
from .kv_rows import KeptStore, Rows, Seq, concat, select
from .kv_shared import budget
from .layout import WindowMasks
from .masks import RowMasks, masked_logprobs

SYNC_EVERY = 8
"""Decode steps between checks for ended rows; each check copies new tokens to the host."""


class ModelRuns:
    """Running a transformers ``model`` over rows, for the backend that holds these fields."""

    model: Any
    device: torch.device
    name: str
    text: HFText | None
    _kept: KeptStore
    _runs: int
    _cache_arg: str
    _logits_to_keep: bool
    _window_masks: WindowMasks | None

    def _resolve(self, prefixes: list[Seq]) -> tuple[Rows, list[int], int]:
        """One row with cache and next-token logits per distinct prefix.

        Kept rows are gathered and run only their extra tokens; the other prefixes are
        prefilled together, in a forward of their own when kept rows need tokens too, so the
        kept rows' shared caches get no columns of the fresh prompts' width (and the fresh rows
        none of theirs beyond the shared prefix pieces, :func:`~.kv_rows.concat`). Returns the
        rows, the row of every prefix, and the number of tokens run.
        """
        distinct = list(dict.fromkeys(prefixes))
        kept, order, fresh = self._kept.gather(distinct)
        parts, forward = [], 0
        if kept is not None:
            extra = [distinct[i][len(s) :] for i, s in zip(order, kept.seqs, strict=True)]
            forward += self._extend(kept, extra)
            parts.append(kept)
        if fresh:
            new = Rows.empty(len(fresh), self.device)
            forward += self._extend(new, [distinct[i] for i in fresh])
            parts.append(new)
        rows = concat(parts)
        row_of = {distinct[i]: j for j, i in enumerate(order + fresh)}
        return rows, [row_of[p] for p in prefixes], forward

    def _extend(self, rows: Rows, extra: list[Seq]) -> int:
        """Run each row's ``extra`` tokens, right-aligned so the last column holds every row's
        last token; rows without extra tokens keep their logits. Returns the tokens run."""
        width = max(map(len, extra), default=0)
        if width == 0:
            return 0
        ids = torch.zeros(len(extra), width, dtype=torch.long)
        new = torch.zeros(len(extra), width, dtype=torch.long)
        for j, tokens in enumerate(extra):
            if tokens:
                ids[j, width - len(tokens) :] = torch.tensor(tokens)
                new[j, width - len(tokens) :] = 1
        old, new = rows.logits, new.to(self.device)
        rows.logits = self._forward(rows, ids.to(self.device), new)
        if old is not None:
            rows.logits = torch.where(new[:, -1:].bool(), rows.logits, old)
        rows.seqs = [s + e for s, e in zip(rows.seqs, extra, strict=True)]
        return sum(map(len, extra))

    def _forward(self, rows: Rows, ids: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Append ``ids`` (real where ``new`` is 1) to the rows' cache; return the float32 logits
        after the last column. Positions count real tokens, so padding does not shift them."""
        self._runs += 1
        rows.mask = torch.cat([rows.mask, new], dim=1)
        positions = (rows.mask.cumsum(1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        budget(rows.cache.layers)  # the layers' whole-row buffers share one memory budget
        kwargs: dict[str, Any] = {self._cache_arg: rows.cache}  # updated in place
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # no [rows, columns, vocab] logits for a long prefill
        mask: Any = rows.mask
        if self._window_masks is not None:  # windows counted in tokens, not padded columns
            mask = self._window_masks(rows.mask, ids.shape[1])
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -1].float().to(self.device)

    def _decode(
        self,
        rows: Rows,
        limits: list[int],
        uniforms: torch.Tensor,
        temperature: float,
        stop: StopCondition,
        keep: bool,
        masks: RowMasks | None = None,
        gone: Callable[[], list[int]] = lambda: [],
    ) -> tuple[list[Continuation], int, Rows | None]:
        """Draw up to ``limits[r]`` tokens for every row.

        Tokens stay on the device; at every budget and every ``SYNC_EVERY`` steps the new ones
        are copied to the host to find rows that ended (stop token or string, or budget). The
        steps in between do no host work that grows with the rows. Ended rows leave the batch
        once a quarter of it has ended. With ``keep``, rows that ran out of budget run their last
        token too and are returned with their cache and logits. With ``masks`` (a constraint)
        every step draws from the allowed tokens and copies the drawn tokens to the host once,
        to advance the matchers (:mod:`.masks`). Rows that ``gone`` names at a check (their
        caller left, :mod:`..cancel`) end there, unfinished.
        """
        draws = Draws(limits, self.device, self.name)
        live = list(range(len(limits)))  # the continuation of each batch row
        checks, forward, kept = set(limits), 0, []
        for step in range(draws.longest):
            assert rows.logits is not None
            if masks is None:
                token, lp, lq = draw(rows.logits, temperature, uniforms[:, step])
                draws.record(live, step, token, lp, lq)
            else:
                allowed, constrained = masks.allowed(live)
                logp, logq, lm = masked_logprobs(rows.logits, allowed, constrained, temperature)
                token, lp, lq = draw(rows.logits, temperature, uniforms[:, step], (logp, logq))
                draws.record(live, step, token, lp, lq, lm)
                masks.advance(live, token.tolist())
            drawn = step + 1
            checked = drawn in checks or drawn % SYNC_EVERY == 0  # nothing ends in between
            harvest: list[int] = []
            if checked:  # which rows ended, on the host
                draws.pull(live, drawn, lambda t, s, n: self._find_end(t, s, n, stop))
                # Rows out of budget just now are kept: they still need their last token run.
                harvest = [
                    j for j, r in enumerate(live) if keep and draws.ends.get(r) == (drawn, False)
                ]
                for r in gone():  # after the harvest: an abandoned row is not worth keeping
                    draws.ends.setdefault(r, (drawn, False))
                if not harvest and all(r in draws.ends for r in live):
                    break
            rows.logits = self._forward(rows, token[:, None], torch.ones_like(token)[:, None])
            forward += len(live)
            if not checked:
                continue
            if harvest:
                kept.append(draws.finished_rows(rows, live, harvest))
            stay = [j for j, r in enumerate(live) if r not in draws.ends]
            if not stay:
                break
            if 4 * (len(live) - len(stay)) >= len(live):  # compact when worth it
                rows, live = select(rows, stay), [live[j] for j in stay]
                uniforms = uniforms[torch.tensor(stay, device=uniforms.device)]
        if masks is None:
            return draws.continuations(), forward, concat(kept) if kept else None
        dead = []
        for r, length in masks.dead.items():  # a dead end cuts the continuation there
            end, finished = draws.ends[r]
            if length < end or (length == end and not finished):
                draws.ends[r] = (length, False)
                dead.append(r)
        return draws.continuations(dead), forward, concat(kept) if kept else None

    def _find_end(
        self, tokens: list[int], start: int, limit: int, stop: StopCondition
    ) -> tuple[int, bool] | None:
        """(length, finished) if ``tokens`` end after ``start``: at a stop token (included), at
        the token that completes a stop string, or at the budget; None if they go on."""
        at_token = next(
            (j + 1 for j in range(start, len(tokens)) if tokens[j] in stop.token_ids), 0
        )
        if stop.strings:  # only a backend with a tokenizer has them (checked in sample)
            assert self.text is not None
            upto = tokens[: at_token or len(tokens)]
            at_string = tokens_to_stop(self.text.decode, upto, start, stop.strings)
            if at_string is not None:
                return at_string, True
        if at_token:
            return at_token, True
        return (limit, False) if len(tokens) >= limit else None
