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

``forward_tokens`` counts the token positions the model ran: the new tokens of every prefix
once (padding excluded), plus one per batch row per decode step. ``sequential_steps`` counts the
model runs themselves (one per prefill, one per decode step, whatever the rows): the latency.

The model runs are in :mod:`.runs`, loading in :mod:`.loading`, the check of a model's cache
layers and the sliding-window masks in :mod:`.layout`, the out-of-memory retries in
:mod:`.chunks`, the text methods in :mod:`..hf_text`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..base import (
    Continuation,
    SampleOutput,
    StopCondition,
    TokenIds,
    TopK,
    TopKOutput,
    validate_prefixes,
)
from ..cancel import abandoned
from ..hf_text import HFBackend, stop_ids
from .chunks import in_chunks
from .draws import bad_logits_message, row_uniforms
from .kv_rows import KeptStore, Rows, share
from .layout import WindowMasks, check_layers, layer_types
from .loading import load_pretrained
from .masks import RowMasks
from .runs import ModelRuns

if TYPE_CHECKING:
    from ...constraints import Matcher

SCORE_LOGITS = 1 << 26
"""Most logits (rows × positions × vocabulary) one scoring forward holds at once."""


class TransformersBackend(ModelRuns, HFBackend):
    """A :class:`~power_sampling.backends.base.TextBackend` over a transformers causal LM.

    Build it with :meth:`from_transformers` (objects you have) or :meth:`from_pretrained` (a hub
    id or a local folder). ``max_batch_size`` caps the rows run together (a chunk that runs out
    of GPU memory is retried at half the size); ``name`` overrides the short model name;
    ``stop_token_ids`` add end tokens to ``stop``. Without a tokenizer it is a token-id backend
    only. A lock serialises calls, so threads can share one backend.
    """

    no_text = (
        "this TransformersBackend has no tokenizer, so it has no {name}(); build it with "
        "TransformersBackend.from_transformers(model, tokenizer), or pass token ids"
    )
    build_with_text = "build it with from_transformers(model, tokenizer)"

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
        configs = (getattr(model, "generation_config", None), model.config)
        eos = [getattr(config, "eos_token_id", None) for config in configs]
        self.stop: StopCondition = StopCondition(
            stop_ids(eos, tokenizer, stop_token_ids or (), self.vocab_size)
        )
        self._set_text(tokenizer, self.name)
        params = inspect.signature(model.forward).parameters
        # Renamed in transformers v5; a model with neither keeps no KV cache and is refused.
        cache_arg = next((a for a in ("cache", "past_key_values") if a in params), None)
        check_layers(model, cache_arg)
        self._cache_arg: str = cache_arg or ""
        types = layer_types(model)
        self._window_masks = WindowMasks(model, types) if "sliding_attention" in types else None
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
        model, tokenizer = load_pretrained(
            name_or_path,
            device=device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            revision=revision,
            **model_kwargs,
        )
        return cls(model, tokenizer, max_batch_size=max_batch_size, name=name_or_path)

    def forget_kept(self) -> None:
        """Drop the kept rows (their KV caches and logits); later calls prefill afresh."""
        with self._lock:
            self._kept.batches.clear()

    # -- the protocol ------------------------------------------------------------------------

    def _top_k(
        self,
        prefixes: list[TokenIds],
        k: int,
        *,
        keep_cache: bool,
        constraint: Sequence[Matcher | None] | None,
    ) -> TopKOutput:
        kept: list[Rows] = []

        def run(chunk: range) -> tuple[list[TopK], int]:
            rows, where, forward = self._resolve([prefixes[i] for i in chunk])
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
            parts = in_chunks(len(prefixes), run, self.max_batch_size, self.name)
            self._kept.remember(kept)
            steps = self._runs - runs
        return TopKOutput([e for p, _ in parts for e in p], sum(f for _, f in parts), steps)

    def _sample(
        self,
        prefixes: list[TokenIds],
        n: int,
        limits: list[int],
        *,
        seeds: list[int],
        temperature: float,
        stop: StopCondition,
        keep_cache: bool,
        constraint: Sequence[Matcher | None] | None,
    ) -> SampleOutput:
        owner = [i for i in range(len(prefixes)) for _ in range(n)]  # the prefix of each row
        kept: list[Rows] = []

        def run(chunk: range) -> tuple[list[Continuation], int]:
            mine = [owner[r] for r in chunk]
            rows, where, forward = self._resolve([prefixes[i] for i in mine])
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
            uniforms = row_uniforms(
                [seeds[owner[r]] for r in chunk],
                [r % n for r in chunk],
                max((limits[i] for i in mine), default=0),
                self.device,
            )

            def gone() -> list[int]:  # the rows of this chunk whose prefix was abandoned
                lost = abandoned()
                return [j for j, i in enumerate(mine) if i in lost] if lost else []

            out, decoded, done = self._decode(
                rows,
                [limits[i] for i in mine],
                uniforms,
                temperature,
                stop,
                keep_cache,
                masks,
                gone,
            )
            kept.extend([done] if done is not None else [])
            return out, forward + decoded

        with self._lock, torch.inference_mode():
            runs = self._runs
            parts = in_chunks(len(owner), run, self.max_batch_size, self.name)
            self._kept.remember(kept)
            steps = self._runs - runs
        flat = [c for p, _ in parts for c in p]
        grouped = [flat[i * n : (i + 1) * n] for i in range(len(prefixes))]
        return SampleOutput(grouped, sum(f for _, f in parts), steps)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
        """See :meth:`~..base.ScoringBackend.score`: one forward pass over each chunk of
        sequences, without the kept rows. Sequences are right-padded: causal attention never
        lets a real position see the padding after it."""
        validate_prefixes(sequences, self.vocab_size)
        seqs = [[int(t) for t in s] for s in sequences]
        longest = max((len(s) for s in seqs), default=1)
        size = max(1, min(self.max_batch_size, SCORE_LOGITS // (longest * self.vocab_size)))

        def run(chunk: range) -> list[tuple[float, ...]]:
            rows = [seqs[i] for i in chunk]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)
            logits = self.model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            picked = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0].tolist()
            self._runs += 1
            return [tuple(p[: len(r) - 1]) for p, r in zip(picked, rows, strict=True)]

        with self._lock, torch.inference_mode():
            parts = in_chunks(len(seqs), run, size, self.name)
        return [scores for part in parts for scores in part]
