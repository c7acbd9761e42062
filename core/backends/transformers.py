"""TransformersBackend: the backend protocol over a Hugging Face causal LM, with KV-cache sharing.

Power sampling asks for many continuations of few prefixes: L candidate blocks of one prefix,
then M rollouts of each of K candidates, then the next step from the chosen candidate. So

* a prefix is prefilled once and its KV cache expanded to its ``n`` rows, never one prefill per
  row;
* ``keep_cache=True`` keeps the resulting rows (KV cache and next-token logits) in a small LRU
  store indexed by their token sequences; a later prefix that equals or extends a kept row
  gathers that row and runs only the extra tokens. A block step's rollouts start from the kept
  candidate rows, and the next step's prefix is a kept row itself;
* rows leave the batch when they end, and large batches are split by ``max_batch_size``.

Rows of different lengths share a batch by padding: caches are left-padded with masked zero
columns, and rows extended by different numbers of tokens leave masked holes; positions count
real tokens only, so every row sees exactly the positions of its own sequence.

``forward_tokens`` counts the token positions the model ran: the new tokens of every prefix
once (padding excluded), plus one per batch row per decode step.

Log-probs are the model's raw base log-probs (``log_softmax`` of float32 logits at temperature
1), never warper-processed; tokens are drawn from softmax(logits / temperature) with a
``torch.Generator`` seeded by the call's seed.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .base import (
    Continuation,
    SampleOutput,
    StopCondition,
    TopK,
    TopKOutput,
    budgets,
    validate_prefixes,
)

logger = logging.getLogger(__name__)

Seq = tuple[int, ...]
KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per-layer (keys, values), each ``[rows, heads, columns, head_dim]``."""
T = TypeVar("T")

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
"""Chat end-of-turn tokens that end a continuation whenever the vocabulary has them."""
KEPT_BATCHES = 4
"""How many ``keep_cache`` batches are remembered (the least recently used goes first)."""
SYNC_EVERY = 8
"""Decode steps between checks for ended rows; each check copies new tokens to the host."""


@dataclass
class _Rows:
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
        layers: list[Any] = list(self.cache.layers)  # all DynamicLayer: built by _new_cache
        return [(layer.keys, layer.values) for layer in layers]


@dataclass
class _Kept:
    """A kept batch: ``index`` maps each row's sequence to the row; ``lengths`` are their
    lengths, so a lookup tries one slice of the prefix per distinct length."""

    rows: _Rows
    index: dict[Seq, int]
    lengths: set[int]


class TransformersBackend:
    """A :class:`~power_sampling.backends.base.TextBackend` over a transformers causal LM.

    Build it with :meth:`from_transformers` (objects you have) or :meth:`from_pretrained` (a hub
    id or a local folder). ``max_batch_size`` caps the rows run together (a chunk that runs out
    of GPU memory is retried at half the size); ``name`` overrides the short model name;
    ``stop_token_ids`` add end tokens to ``stop``. Without a tokenizer it is a token-id backend
    only. A lock serialises calls, so threads can share one backend.
    """

    def __new__(cls, model: Any, tokenizer: Any = None, **kwargs: Any) -> TransformersBackend:
        # Without a tokenizer, build the token-id-only variant (see _TokenIdsBackend).
        kind = _TokenIdsBackend if tokenizer is None and cls is TransformersBackend else cls
        return super().__new__(kind)

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        max_batch_size: int = 256,
        name: str | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} is invalid: use an integer >= 1")
        self.model = model.eval()  # dropout would make the log-probs random
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.device: torch.device = model.get_input_embeddings().weight.device
        config = model.config.get_text_config()
        head = model.get_output_embeddings()
        self.vocab_size: int = int(getattr(head, "out_features", 0) or config.vocab_size)
        self.max_context: int | None = getattr(config, "max_position_embeddings", None)
        path = name or getattr(model.config, "_name_or_path", "") or config.model_type
        self.name: str = str(path).rstrip("/").split("/")[-1]
        self.stop = StopCondition(frozenset(self._stop_ids(stop_token_ids or ())))
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in v5
        self._logits_to_keep = "logits_to_keep" in params
        self._lock = threading.RLock()
        self._kept: list[_Kept] = []

    @classmethod
    def from_transformers(
        cls,
        model: Any,
        tokenizer: Any = None,
        *,
        max_batch_size: int = 256,
        name: str | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> TransformersBackend:
        """Wrap a loaded model and its tokenizer. Without a tokenizer the backend takes token ids
        only: it is then no ``TextBackend``, and ``encode``/``decode`` raise AttributeError."""
        return cls(
            model,
            tokenizer,
            max_batch_size=max_batch_size,
            name=name,
            stop_token_ids=stop_token_ids,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        max_batch_size: int = 256,
        **model_kwargs: Any,
    ) -> TransformersBackend:
        """Load a model and its tokenizer from a hub id (where the hub is reachable) or a folder.

        ``device`` defaults to CUDA when available, else the CPU; ``dtype`` to bfloat16 on a GPU
        that supports it, else float32. ``model_kwargs`` go to ``AutoModelForCausalLM``.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cuda = torch.cuda.is_available()
        if dtype is None:
            dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
        model_kwargs.setdefault("device_map", str(device or ("cuda" if cuda else "cpu")))
        common = {"trust_remote_code": trust_remote_code, "revision": revision}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **common)
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path, dtype=dtype, **common, **model_kwargs
            )
        except (OSError, ValueError) as error:
            raise OSError(
                f"could not load the model {name_or_path!r}: {error}. Without access to the "
                "Hugging Face hub, pass the path of a local folder that holds the model."
            ) from error
        return cls(model, tokenizer, max_batch_size=max_batch_size, name=name_or_path)

    def _stop_ids(self, extra: Sequence[int]) -> set[int]:
        """EOS ids of the generation config, model config and tokenizer, end-of-turn tokens,
        ``extra``."""
        ids = {int(t) for t in extra}
        for config in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(config, "eos_token_id", None)
            ids.update([eos] if isinstance(eos, int) else eos or [])
        if self.tokenizer is not None:
            if self.tokenizer.eos_token_id is not None:
                ids.add(self.tokenizer.eos_token_id)
            vocab = self.tokenizer.get_vocab()
            ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
        return {i for i in ids if 0 <= i < self.vocab_size}

    # -- text --------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int]) -> str:
        # No clean-up of spaces: decoding must be prefix-stable for stop strings and streaming.
        ids = [int(t) for t in token_ids]
        return str(
            self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {self.name} has no chat template; pass a text prompt or "
                "token ids, or set tokenizer.chat_template"
            )
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=[dict(t) for t in tools] if tools else None,
            add_generation_prompt=True,
            tokenize=False,
        )
        return self.encode(str(text))

    # -- the protocol ------------------------------------------------------------------------

    def top_k(
        self, prefixes: Sequence[Sequence[int]], k: int, *, keep_cache: bool = False
    ) -> TopKOutput:
        validate_prefixes(prefixes, self.vocab_size)
        if k < 1:
            raise ValueError(f"k={k} is invalid: ask for at least one token")
        requests = [tuple(int(t) for t in p) for p in prefixes]
        kept: list[_Rows] = []

        def run(chunk: range) -> tuple[list[TopK], int]:
            rows, where, forward = self._resolve([requests[i] for i in chunk])
            assert rows.logits is not None
            best = torch.log_softmax(rows.logits, -1).topk(min(k, self.vocab_size))
            values, ids = best.values.tolist(), best.indices.tolist()
            if keep_cache:
                kept.append(rows)
            entries = []
            for j in where:
                pairs = [(t, v) for t, v in zip(ids[j], values[j], strict=True) if v > -1e30]
                entries.append(TopK(tuple(t for t, _ in pairs), tuple(v for _, v in pairs)))
            return entries, forward

        with self._lock, torch.inference_mode():
            parts = self._in_chunks(len(requests), run)
            self._remember(kept)
        return TopKOutput([e for p, _ in parts for e in p], sum(f for _, f in parts))

    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        n: int,
        max_new_tokens: int | Sequence[int],
        *,
        seed: int,
        temperature: float = 1.0,
        stop: StopCondition | None = None,
        keep_cache: bool = False,
    ) -> SampleOutput:
        validate_prefixes(prefixes, self.vocab_size)
        limits = budgets(max_new_tokens, len(prefixes))
        if n < 0 or min(limits, default=0) < 0:
            raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must be >= 0")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} is invalid: use a value > 0")
        stop = self.stop if stop is None else stop
        if stop.strings and self.tokenizer is None:
            raise ValueError(
                "this backend has no tokenizer, so it cannot match stop strings; pass stop "
                "token ids, or build it with from_transformers(model, tokenizer)"
            )
        owner = [i for i in range(len(prefixes)) for _ in range(n)]  # the prefix of each row
        requests = [tuple(int(t) for t in p) for p in prefixes]
        kept: list[_Rows] = []

        def run(chunk: range) -> tuple[list[Continuation], int]:
            mine = [owner[r] for r in chunk]
            rows, where, forward = self._resolve([requests[i] for i in mine])
            rows = _select(rows, where)  # each prefix's cache, expanded to its rows
            out, decoded, done = self._decode(
                rows, [limits[i] for i in mine], generator, temperature, stop, keep_cache
            )
            kept.extend([done] if done is not None else [])
            return out, forward + decoded

        with self._lock, torch.inference_mode():
            generator = torch.Generator(self.device).manual_seed(int(seed) % 2**64)
            parts = self._in_chunks(len(owner), run)
            self._remember(kept)
        flat = [c for p, _ in parts for c in p]
        grouped = [flat[i * n : (i + 1) * n] for i in range(len(prefixes))]
        return SampleOutput(grouped, sum(f for _, f in parts))

    # -- the kept store ----------------------------------------------------------------------

    def _remember(self, parts: list[_Rows]) -> None:
        """Keep these rows for later calls whose prefixes equal or extend their sequences."""
        rows = _concat(parts) if parts else None
        if rows is not None and rows.seqs:
            index = {s: i for i, s in enumerate(rows.seqs)}
            self._kept.append(_Kept(rows, index, {len(s) for s in rows.seqs}))
            del self._kept[:-KEPT_BATCHES]

    def _lookup(self, prefix: Seq) -> tuple[_Kept, int, int] | None:
        """(batch, row, length) of the longest kept sequence that ``prefix`` starts with; that
        batch becomes the most recently used."""
        best: tuple[_Kept, int, int] | None = None
        for kept in self._kept:
            for length in kept.lengths:
                row = kept.index.get(prefix[:length]) if length <= len(prefix) else None
                if row is not None and (best is None or length > best[2]):
                    best = (kept, row, length)
        if best is not None:
            self._kept.remove(best[0])
            self._kept.append(best[0])
        return best

    def _resolve(self, prefixes: list[Seq]) -> tuple[_Rows, list[int], int]:
        """One row with cache and next-token logits per distinct prefix.

        Kept rows are gathered and run only their extra tokens; the other prefixes are
        prefilled in the same left-padded forward. Returns the rows, the row of every prefix,
        and the number of tokens run.
        """
        distinct = list(dict.fromkeys(prefixes))
        groups: dict[int, tuple[_Kept, list[int], list[int]]] = {}
        fresh = []
        for i, prefix in enumerate(distinct):
            hit = self._lookup(prefix)
            if hit is None:
                fresh.append(i)
            else:
                members, picks = groups.setdefault(id(hit[0]), (hit[0], [], []))[1:]
                members.append(i)
                picks.append(hit[1])
        parts = [_select(kept.rows, picks) for kept, _, picks in groups.values()]
        order = [i for _, members, _ in groups.values() for i in members] + fresh
        if fresh:
            empty = torch.zeros(len(fresh), 0, dtype=torch.long, device=self.device)
            parts.append(_Rows([()] * len(fresh), DynamicCache(), empty, None))
        rows = _concat(parts)
        extra = [distinct[i][len(s) :] for i, s in zip(order, rows.seqs, strict=True)]
        forward = self._extend(rows, extra)
        row_of = {distinct[i]: j for j, i in enumerate(order)}
        return rows, [row_of[p] for p in prefixes], forward

    # -- running the model -------------------------------------------------------------------

    def _extend(self, rows: _Rows, extra: list[Seq]) -> int:
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

    def _forward(self, rows: _Rows, ids: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Append ``ids`` (real where ``new`` is 1) to the rows' cache; return the float32 logits
        after the last column. Positions count real tokens, so padding does not shift them."""
        rows.mask = torch.cat([rows.mask, new], dim=1)
        positions = (rows.mask.cumsum(1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        kwargs: dict[str, Any] = {self._cache_arg: rows.cache}  # updated in place
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # no [rows, columns, vocab] logits for a long prefill
        out = self.model(
            input_ids=ids,
            attention_mask=rows.mask,
            position_ids=positions,
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -1].float().to(self.device)

    def _decode(
        self,
        rows: _Rows,
        limits: list[int],
        generator: torch.Generator,
        temperature: float,
        stop: StopCondition,
        keep: bool,
    ) -> tuple[list[Continuation], int, _Rows | None]:
        """Draw up to ``limits[r]`` tokens for every row.

        Tokens stay on the device; at every budget and every ``SYNC_EVERY`` steps the new ones
        are copied to the host to find rows that ended (stop token or string, or budget). The
        steps in between do no host work that grows with the rows. Ended rows leave the batch
        once a quarter of it has ended. With ``keep``, rows that ran out of budget run their last
        token too and are returned with their cache and logits.
        """
        count, longest = len(limits), max(limits, default=0)
        tokens = torch.zeros(count, max(longest, 1), dtype=torch.long, device=self.device)
        base = torch.zeros(count, max(longest, 1), device=self.device)
        proposal = torch.zeros_like(base)
        live = list(range(count))  # the continuation of each batch row
        live_index = torch.arange(count, device=self.device)
        seen: list[list[int]] = [[] for _ in range(count)]
        ends = {r: (0, False) for r in live if limits[r] == 0}  # r -> (length, finished)
        checks, pulled, forward, kept = set(limits), 0, 0, []
        for step in range(longest):
            assert rows.logits is not None  # draw one token per batch row, on the device
            token, lp, lq = _draw(rows.logits, temperature, generator)
            tokens[live_index, step], base[live_index, step] = token, lp
            proposal[live_index, step] = lq
            drawn = step + 1
            checked = drawn in checks or drawn % SYNC_EVERY == 0  # nothing ends in between
            harvest: list[int] = []
            if checked:  # which rows ended, on the host
                host = tokens[live_index, pulled:drawn].tolist()
                for r, new in zip(live, host, strict=True):
                    if r not in ends:
                        seen[r].extend(new)
                        end = self._find_end(seen[r], pulled, limits[r], stop)
                        if end is not None:
                            ends[r] = end
                pulled = drawn
                # Rows out of budget just now are kept: they still need their last token run.
                harvest = [j for j, r in enumerate(live) if keep and ends.get(r) == (drawn, False)]
                if not harvest and all(r in ends for r in live):
                    break
            rows.logits = self._forward(rows, token[:, None], torch.ones_like(token)[:, None])
            forward += len(live)
            if not checked:
                continue
            if harvest:
                done = _select(rows, harvest)
                done.seqs = [
                    s + tuple(seen[live[j]]) for s, j in zip(done.seqs, harvest, strict=True)
                ]
                kept.append(done)
            stay = [j for j, r in enumerate(live) if r not in ends]  # compact when worth it
            if not stay:
                break
            if 4 * (len(live) - len(stay)) >= len(live):
                rows, live = _select(rows, stay), [live[j] for j in stay]
                live_index = torch.tensor(live, device=self.device)
        out = []
        columns = zip(tokens.tolist(), base.tolist(), proposal.tolist(), strict=True)
        for r, (ids, lps, lqs) in enumerate(columns):
            length, finished = ends[r]
            logps = tuple(lps[:length])
            out.append(
                Continuation(tuple(ids[:length]), sum(logps), finished, logps, tuple(lqs[:length]))
            )
        return out, forward, _concat(kept) if kept else None

    def _find_end(
        self, tokens: list[int], start: int, limit: int, stop: StopCondition
    ) -> tuple[int, bool] | None:
        """(length, finished) if ``tokens`` end after ``start``: at a stop token (included), at
        the token that completes a stop string, or at the budget; None if they go on."""
        at_token = next(
            (j + 1 for j in range(start, len(tokens)) if tokens[j] in stop.token_ids), 0
        )
        if stop.strings:
            upto = at_token or len(tokens)
            if _has_stop(self.decode(tokens[:upto]), stop.strings):
                ends = range(start + 1, upto + 1)
                return next(
                    j for j in ends if _has_stop(self.decode(tokens[:j]), stop.strings)
                ), True
        if at_token:
            return at_token, True
        return (limit, False) if len(tokens) >= limit else None

    def _in_chunks(self, count: int, run: Callable[[range], T]) -> list[T]:
        """``run`` over chunks of at most ``max_batch_size`` rows; when the GPU runs out of
        memory, retry the chunk at half the size, down to one row."""
        size, start, out = self.max_batch_size, 0, []
        while start < count:
            chunk = range(start, min(start + size, count))
            try:
                out.append(run(chunk))
            except torch.cuda.OutOfMemoryError as error:
                if len(chunk) == 1:
                    raise RuntimeError(
                        f"{self.name} ran out of GPU memory on a single row (max_batch_size="
                        f"{self.max_batch_size} was halved down to 1); use shorter prompts, a "
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


class _TokenIdsBackend(TransformersBackend):
    """What :meth:`TransformersBackend.from_transformers` returns without a tokenizer.

    The text methods are None on the class, so ``isinstance(b, TextBackend)`` is False and
    samplers treat it as a token-id backend (they would decode otherwise); reading one raises
    an AttributeError that names the fix.
    """

    encode = decode = apply_chat_template = None  # type: ignore[assignment]

    def __getattribute__(self, name: str) -> Any:
        if name in ("encode", "decode", "apply_chat_template"):
            raise AttributeError(
                f"this TransformersBackend has no tokenizer, so it has no {name}(); build it "
                "with TransformersBackend.from_transformers(model, tokenizer), or pass token ids"
            )
        return super().__getattribute__(name)


# -- tensor helpers ----------------------------------------------------------------------------


def _draw(
    logits: torch.Tensor, temperature: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token per row from softmax(logits / temperature), with its base and proposal
    log-probs. Inverse-CDF sampling: one uniform per row and a search in the cumulative sums,
    all on the device (no host sync), and some 20x cheaper on the CPU than racing exponential
    noise over the whole vocabulary."""
    logp = torch.log_softmax(logits, -1)
    logq = logp if temperature == 1.0 else torch.log_softmax(logits / temperature, -1)
    cdf = logq.exp().cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, generator=generator)
    # Scaling by the total absorbs rounding in the sums; right=True never lands on a token of
    # probability zero (its cumulative sum equals its predecessor's).
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp_max(cdf.shape[1] - 1)
    pick = token[:, None]
    return token, logp.gather(1, pick)[:, 0], logq.gather(1, pick)[:, 0]


def _new_cache(kv: KV) -> DynamicCache:
    """A DynamicCache over these tensors as they are (``update`` would copy them once more)."""
    cache = DynamicCache()
    for keys, values in kv:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def _select(rows: _Rows, index: list[int]) -> _Rows:
    """A new batch of the given rows (repeats allowed); ``rows`` is left as it is."""
    at = torch.tensor(index, dtype=torch.long, device=rows.mask.device)
    cache = _new_cache([(k.index_select(0, at), v.index_select(0, at)) for k, v in rows.kv])
    logits = None if rows.logits is None else rows.logits.index_select(0, at)
    return _Rows([rows.seqs[i] for i in index], cache, rows.mask.index_select(0, at), logits)


def _concat(parts: list[_Rows]) -> _Rows:
    """Stack batches, left-padding narrower ones with masked zero columns."""
    if len(parts) == 1:
        return parts[0]
    width = max(p.mask.shape[1] for p in parts)
    like = next((p.kv for p in parts if p.kv), [])
    per_part = [p.kv or _uncached(like, len(p.seqs)) for p in parts]
    kv = []
    for i in range(len(like)):
        keys = torch.cat([_pad_left(layers[i][0], width, 2) for layers in per_part])
        values = torch.cat([_pad_left(layers[i][1], width, 2) for layers in per_part])
        kv.append((keys, values))
    mask = torch.cat([_pad_left(p.mask, width, 1) for p in parts])
    logits = None
    first = next((p.logits for p in parts if p.logits is not None), None)
    if first is not None:
        blank = first.new_zeros(1, first.shape[1])
        logits = torch.cat(
            [blank.expand(len(p.seqs), -1) if p.logits is None else p.logits for p in parts]
        )
    return _Rows([s for p in parts for s in p.seqs], _new_cache(kv), mask, logits)


def _uncached(like: KV, rows: int) -> KV:
    """Zero-width keys and values for ``rows`` rows, shaped like ``like``."""
    return [
        (k.new_zeros(rows, k.shape[1], 0, k.shape[3]), v.new_zeros(rows, v.shape[1], 0, v.shape[3]))
        for k, v in like
    ]


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` with zero columns prepended along ``dim`` up to ``width``."""
    shape = list(t.shape)
    shape[dim] = width - t.shape[dim]
    return torch.cat([t.new_zeros(shape), t], dim=dim) if shape[dim] else t


def _has_stop(text: str, strings: Sequence[str]) -> bool:
    return any(s in text for s in strings)
