"""Constraint masks inside a vLLM engine: a V1 logits processor that masks each constrained
row's logits with its matcher and records the log allowed mass of every step.

Why not vLLM's structured outputs. ``SamplingParams(structured_outputs=...)`` starts its grammar
at the first output token and cannot take a grammar state mid-output, while the samplers ask
for continuations of prompt + tokens already generated under the constraint; and vLLM reports
no allowed mass, which the importance weights need. The processor here takes the caller's
matcher, positioned at the end of the prefix, and sees the raw logits, so every step gives

* the mask: disallowed logits set to -inf before vLLM samples (after it has computed
  ``raw_logprobs``, before temperature and ``processed_logprobs``), so tokens are drawn from
  the allowed ones renormalised, at the request's temperature, with vLLM's own seeded sampler;
* the log allowed mass log Σ_{v allowed} softmax(logits)_v, recorded in a tree of the tokens
  drawn so far (continuations of one prefix share it; preempted requests rejoin it);
* for ``top_k`` requests, the k most likely allowed tokens with their base log-probs.

Where it runs. The processor and the backend exchange Python objects through a table in this
module, keyed by an integer in ``SamplingParams.extra_args``: the engine core and its worker
must run in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one device, the uniprocess
executor), on vLLM's V1 model runner (the V2 runner, picked on GPU builds with Triton, has
another processor interface: ``VLLM_USE_V2_MODEL_RUNNER=0`` selects V1).
:func:`unsupported_reason` checks an engine for all of that.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from ...constraints import new_bitmask

if TYPE_CHECKING:
    from ...constraints import Matcher

EXTRA_ARG = "power_sampling_constraint"
"""The ``SamplingParams.extra_args`` key that names a request's :class:`Call`."""
PROCESSOR_NAME = "power_sampling.backends.vllm.constraints:ConstraintLogitsProcessor"
"""The processor's fully qualified name, as ``vllm.LLM(logits_processors=[...])`` takes it."""


@dataclass
class Node:
    """One prefix of the output: the log allowed mass of the step after it (None until a row
    has been there), and the prefixes one token longer."""

    mass: float | None = None
    children: dict[int, Node] = field(default_factory=dict)

    def child(self, token: int) -> Node:
        node = self.children.get(token)
        if node is None:
            node = self.children[token] = Node()
        return node


@dataclass
class Call:
    """What one constrained request shares with the processor: its matcher at the end of the
    prefix, the vocabulary the matcher's bitmask covers, ``k`` for a top-k request, and what
    the processor found (the tree of masses, the top-k)."""

    matcher: Matcher
    vocab_size: int
    k: int = 0
    root: Node = field(default_factory=Node)
    top: tuple[tuple[int, ...], tuple[float, ...]] | None = None

    def walk(self, tokens: Sequence[int]) -> tuple[list[float], bool]:
        """The log allowed mass of each step of ``tokens``, up to a dead end (no allowed token)
        if they reach one, and whether they did. Raises if the processor never saw a step, so
        a silently unconstrained draw cannot pass as a constrained one."""
        node, masses = self.root, list[float]()
        for token in tokens:
            if node.mass is None:
                raise RuntimeError(
                    "the engine drew a constrained token without the constraint's logits "
                    "processor; build the engine in this process with logits_processors="
                    f"[{PROCESSOR_NAME!r}] (VLLMBackend.from_pretrained does)"
                )
            if node.mass == -math.inf:
                return masses, True
            masses.append(node.mass)
            node = node.child(int(token))
        return masses, False


_calls: dict[int, Call] = {}
_keys = itertools.count(1)
_lock = threading.Lock()


@contextmanager
def registered(calls: Sequence[Call | None]) -> Iterator[list[dict[str, Any] | None]]:
    """Make ``calls`` visible to the processor for the duration of one engine call; yields
    each one's ``extra_args`` (None for an unconstrained request)."""
    keys: list[int | None] = []
    with _lock:
        for call in calls:
            key = None if call is None else next(_keys)
            if call is not None and key is not None:
                _calls[key] = call
            keys.append(key)
    try:
        yield [None if k is None else {EXTRA_ARG: k} for k in keys]
    finally:
        with _lock:
            for key in keys:
                if key is not None:
                    _calls.pop(key, None)


class _Row:
    """One running request of the batch: its own fork of the matcher, advanced lazily over the
    request's output tokens (vLLM appends to the list this row holds)."""

    def __init__(self, call: Call, output_ids: list[int]) -> None:
        self.call, self.output_ids = call, output_ids
        self.matcher: Matcher | None = call.matcher.fork()
        self.node, self.seen = call.root, 0

    def catch_up(self) -> None:
        """Advance the matcher and the node past the tokens drawn since the last step."""
        for token in self.output_ids[self.seen :]:
            if token < 0:
                raise RuntimeError(
                    "vLLM passed a placeholder output token to the constraint's logits "
                    "processor; disable async scheduling (async_scheduling=False)"
                )
            if self.matcher is not None and not self.matcher.accept(int(token)):
                self.matcher = None  # a dead end let the row draw freely; walk() cuts it
            self.node = self.node.child(int(token))
        self.seen = len(self.output_ids)


class ConstraintLogitsProcessor(LogitsProcessor):
    """vLLM V1 logits processor (batch level) for requests whose ``extra_args`` name a
    :class:`Call`; other requests pass untouched. Register it at engine construction:
    ``vllm.LLM(..., logits_processors=[PROCESSOR_NAME])``."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}
        self.device = device
        self._bits: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # masking changes the greedy choice

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    @staticmethod
    def _new_row(params: Any, prompt_ids: list[int] | None, output_ids: list[int]) -> _Row | None:
        key = (params.extra_args or {}).get(EXTRA_ARG)
        if key is None:
            return None
        call = _calls.get(int(key))
        if call is None:
            raise RuntimeError(
                f"constraint request {key} is unknown to this process: the engine's worker runs "
                "in another process; build it with VLLM_ENABLE_V1_MULTIPROCESSING=0 and the "
                "uniprocess executor (one device)"
            )
        return _Row(call, output_ids)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        index = sorted(self.rows)
        rows = [self.rows[i] for i in index]
        vocab = min(rows[0].call.vocab_size, logits.shape[1])
        bitmask = new_bitmask(len(rows), rows[0].call.vocab_size)
        live = np.zeros(len(rows), dtype=bool)
        for j, row in enumerate(rows):
            row.catch_up()
            if row.matcher is not None:
                row.matcher.fill_bitmask(bitmask, j)
                live[j] = bool(bitmask[j].any())
            if not live[j]:  # a dead end: recorded, and the row's logits left as they are
                row.node.mass, row.matcher = -math.inf, None
        picked = torch.tensor(index, device=logits.device)
        selected = logits.index_select(0, picked)
        allowed = torch.zeros(selected.shape, dtype=torch.bool, device=logits.device)
        allowed[:, :vocab] = self._unpack(bitmask, vocab, logits.device)
        logz = torch.logsumexp(selected, -1, keepdim=True)
        masked = selected.masked_fill(~allowed, -math.inf)
        mass = (torch.logsumexp(masked, -1, keepdim=True) - logz)[:, 0].tolist()
        for j, row in enumerate(rows):
            if live[j]:
                row.node.mass = float(mass[j])
            if row.call.k and row.seen == 0:  # a top-k request (empty at a dead end)
                best = (masked[j] - logz[j]).topk(min(row.call.k, vocab))
                pairs = [
                    (int(t), float(v))
                    for t, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)
                    if v > -1e30 and live[j]
                ]
                row.call.top = (tuple(t for t, _ in pairs), tuple(v for _, v in pairs))
        keep = torch.from_numpy(live).to(logits.device)[:, None]
        logits.index_copy_(0, picked, torch.where(keep, masked, selected))
        return logits

    def _unpack(self, bitmask: np.ndarray, vocab: int, device: torch.device) -> torch.Tensor:
        """The boolean ``[rows, vocab]`` mask of int32 bitmask rows (bit j of word w is token
        32 w + j), unpacked on the device; the word and bit of each token are computed once."""
        key = (vocab, str(device))
        if key not in self._bits:
            position = torch.arange(vocab, device=device)
            self._bits[key] = (position // 32, (position % 32).to(torch.int32))
        word, bit = self._bits[key]
        return ((torch.from_numpy(bitmask).to(device)[:, word] >> bit) & 1).bool()


def unsupported_reason(llm: Any) -> str | None:
    """Why constraints cannot run on ``llm``, naming the fix; None when they can."""
    engine = llm.llm_engine
    registered_here = [
        p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}"
        for p in (engine.model_config.logits_processors or [])
    ]
    if PROCESSOR_NAME not in registered_here:
        return (
            "the engine was built without the constraint's logits processor; build it with "
            f"vllm.LLM(..., logits_processors=[{PROCESSOR_NAME!r}]) (VLLMBackend.from_pretrained "
            "does this on vLLM's V1 model runner)"
        )
    if type(engine.engine_core).__name__ != "InprocClient":
        return (
            "the engine core runs in another process, where the constraint's matchers cannot "
            "follow; build the engine with VLLM_ENABLE_V1_MULTIPROCESSING=0 in the environment"
        )
    parallel = engine.vllm_config.parallel_config
    if parallel.world_size > 1 or parallel.distributed_executor_backend not in (None, "uni"):
        return (
            "the engine's workers run in other processes (tensor/pipeline parallelism or a "
            f"{parallel.distributed_executor_backend!r} executor); constraints need one device "
            "and the uniprocess executor"
        )
    return None
