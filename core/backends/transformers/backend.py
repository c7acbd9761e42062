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

The module is longer than most because it is one class whose methods share the model, the kept
store and the lock; the row bookkeeping, token draws and grammar masks live in ``kv_rows.py``,
``draws.py`` and ``masks.py``.

Rows of different lengths share a batch by padding: caches are left-padded with masked zero
columns, and rows extended by different numbers of tokens leave masked holes; positions count
real tokens only, so every row sees exactly the positions of its own sequence.

``forward_tokens`` counts the token positions the model ran: the new tokens of every prefix
once (padding excluded), plus one per batch row per decode step. ``sequential_steps`` counts the
model runs themselves (one per prefill, one per decode step, whatever the rows): the latency.

Log-probs are the model's raw base log-probs (``log_softmax`` of float32 logits at temperature
1), never warper-processed; tokens are drawn from softmax(logits / temperature) with a
``torch.Generator`` seeded by the call's seed.

The row batches and the kept store are in :mod:`.kv_rows`, the per-decode bookkeeping in
:mod:`.draws`, the text methods in :mod:`.hf_text`; this module (over 400 lines: loading, the
protocol and the model runs belong together) runs the model.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ...text import tokens_to_stop
from ..base import (
    Continuation,
    SampleOutput,
    StopCondition,
    TopK,
    TopKOutput,
    budgets,
    check_constraint,
    validate_prefixes,
)
from ..hf_text import HFText
from .draws import Draws, bad_logits_message, draw
from .kv_rows import KeptStore, Rows, Seq, concat, select, share
from .kv_shared import budget
from .masks import RowMasks, masked_logprobs

if TYPE_CHECKING:
    from ...constraints import Matcher

logger = logging.getLogger(__name__)

T = TypeVar("T")

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
"""Chat end-of-turn tokens that end a continuation whenever the vocabulary has them."""
SYNC_EVERY = 8
"""Decode steps between checks for ended rows; each check copies new tokens to the host."""


class TransformersBackend(HFText):
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
        self._kept = KeptStore()
        self._runs = 0  # model runs so far: calls report the difference as sequential_steps

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

    def forget_kept(self) -> None:
        """Drop the kept rows (their KV caches and logits); later calls prefill afresh."""
        with self._lock:
            self._kept.batches.clear()

    # -- the protocol ------------------------------------------------------------------------

    def top_k(
        self,
        prefixes: Sequence[Sequence[int]],
        k: int,
        *,
        keep_cache: bool = False,
        constraint: Sequence[Matcher | None] | None = None,
    ) -> TopKOutput:
        validate_prefixes(prefixes, self.vocab_size)
        check_constraint(constraint, len(prefixes))
        if k < 1:
            raise ValueError(f"k={k} is invalid: ask for at least one token")
        requests = [tuple(int(t) for t in p) for p in prefixes]
        kept: list[Rows] = []

        def run(chunk: range) -> tuple[list[TopK], int]:
            rows, where, forward = self._resolve([requests[i] for i in chunk])
            assert rows.logits is not None
            if bool((torch.isnan(rows.logits) | torch.isposinf(rows.logits)).any()):
                raise ValueError(bad_logits_message(self.name))
            logp = torch.log_softmax(rows.logits, -1)
            if constraint is not None:  # rank the allowed tokens only, by base log-prob
                masks = RowMasks(
                    [constraint[i] for i in chunk],
                    [1] * len(chunk),
                    frozenset(),
                    self.vocab_size,
                    self.device,
                )
                allowed, _ = masks.allowed(range(len(chunk)))
                for j in masks.dead:  # a dead end allows nothing, so nothing is ranked
                    allowed[j] = False
                logp = logp.index_select(0, torch.tensor(where, device=self.device))
                logp = logp.masked_fill(~allowed, -torch.inf)
                where = list(range(len(chunk)))
            best = logp.topk(min(k, self.vocab_size))
            values, ids = best.values.tolist(), best.indices.tolist()
            if keep_cache:
                kept.append(rows)
            entries = []
            for j in where:
                pairs = [(t, v) for t, v in zip(ids[j], values[j], strict=True) if v > -1e30]
                entries.append(TopK(tuple(t for t, _ in pairs), tuple(v for _, v in pairs)))
            return entries, forward

        with self._lock, torch.inference_mode():
            runs = self._runs
            parts = self._in_chunks(len(requests), run)
            self._kept.remember(kept)
            steps = self._runs - runs
        return TopKOutput([e for p, _ in parts for e in p], sum(f for _, f in parts), steps)

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
        constraint: Sequence[Matcher | None] | None = None,
    ) -> SampleOutput:
        validate_prefixes(prefixes, self.vocab_size)
        check_constraint(constraint, len(prefixes))
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
        kept: list[Rows] = []

        def run(chunk: range) -> tuple[list[Continuation], int]:
            mine = [owner[r] for r in chunk]
            rows, where, forward = self._resolve([requests[i] for i in mine])
            rows = share(rows, where)  # each prefix's cache, shared by its rows
            masks = None
            if constraint is not None and any(constraint[i] is not None for i in mine):
                masks = RowMasks(
                    [constraint[i] for i in mine],
                    [limits[i] for i in mine],
                    stop.token_ids,
                    self.vocab_size,
                    self.device,
                )
            out, decoded, done = self._decode(
                rows, [limits[i] for i in mine], generator, temperature, stop, keep_cache, masks
            )
            kept.extend([done] if done is not None else [])
            return out, forward + decoded

        with self._lock, torch.inference_mode():
            generator = torch.Generator(self.device).manual_seed(int(seed) % 2**64)
            runs = self._runs
            parts = self._in_chunks(len(owner), run)
            self._kept.remember(kept)
            steps = self._runs - runs
        flat = [c for p, _ in parts for c in p]
        grouped = [flat[i * n : (i + 1) * n] for i in range(len(prefixes))]
        return SampleOutput(grouped, sum(f for _, f in parts), steps)

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

    # -- running the model -------------------------------------------------------------------

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
        rows: Rows,
        limits: list[int],
        generator: torch.Generator,
        temperature: float,
        stop: StopCondition,
        keep: bool,
        masks: RowMasks | None = None,
    ) -> tuple[list[Continuation], int, Rows | None]:
        """Draw up to ``limits[r]`` tokens for every row.

        Tokens stay on the device; at every budget and every ``SYNC_EVERY`` steps the new ones
        are copied to the host to find rows that ended (stop token or string, or budget). The
        steps in between do no host work that grows with the rows. Ended rows leave the batch
        once a quarter of it has ended. With ``keep``, rows that ran out of budget run their last
        token too and are returned with their cache and logits. With ``masks`` (a constraint)
        every step draws from the allowed tokens and copies the drawn tokens to the host once,
        to advance the matchers (:mod:`.masks`).
        """
        draws = Draws(limits, self.device, self.name)
        live = list(range(len(limits)))  # the continuation of each batch row
        checks, forward, kept = set(limits), 0, []
        for step in range(draws.longest):
            assert rows.logits is not None
            if masks is None:
                token, lp, lq = draw(rows.logits, temperature, generator)
                draws.record(live, step, token, lp, lq)
            else:
                allowed, constrained = masks.allowed(live)
                logp, logq, lm = masked_logprobs(rows.logits, allowed, constrained, temperature)
                token, lp, lq = draw(rows.logits, temperature, generator, (logp, logq))
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
            upto = tokens[: at_token or len(tokens)]
            at_string = tokens_to_stop(self.decode, upto, start, stop.strings)
            if at_string is not None:
                return at_string, True
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
