"""OpenAIBackend: the backend protocol over an OpenAI-compatible ``/v1/completions`` endpoint.

For a model already served by an engine (vLLM with tensor and data parallelism on many GPUs,
say): every protocol call becomes completions requests with token-id prompts, sent at once over
a pooled HTTP client (:mod:`.client`), and the engine batches them with whatever else it serves.

* ``sample``: one request per prefix (each prefix has its own seed; vLLM gives the ``n``
  children of a request ``seed + i``, as in-process): ``n``, ``max_tokens``, ``temperature``,
  ``seed``, ``logprobs=0``, ``stop_token_ids`` with ``ignore_eos`` (the model's own ends are in
  the stop condition), stop strings, token ids back (``return_token_ids``), and no truncation
  (``top_p=1, top_k=0, min_p=0``, no penalties: whatever defaults the server has are replaced).
* ``top_k``: one request for all distinct prefixes, ``max_tokens=1`` and ``logprobs=k`` at
  temperature 0, whose log-probs are the base model's in every ``--logprobs-mode``; ``k`` is
  capped by the server (vLLM's ``--max-logprobs``, 20 by default), and the error says so.
* Base and proposal log-probs follow vLLM's ``logprobs_mode`` exactly as in
  :mod:`..vllm.logprobs`, the mode being read off the server up front (:mod:`.probe`). On a
  ``processed_logprobs`` server a draw at another temperature costs one more request, which
  rescores the drawn sequences with ``prompt_logprobs=0``; on a ``raw_logprobs`` server (vLLM's
  default) there are no proposal log-probs at other temperatures, so MCMC and Power-SMC refuse
  to run, saying to restart the server with ``--logprobs-mode processed_logprobs``.
* Constraints are refused: the completions API cannot draw from the allowed tokens and report
  the base log-probs and the allowed mass that power sampling's correction needs.

The tokenizer is the model's own, loaded here (``tokenizer=``, else the served model's folder
when it is on this machine), and checked against the server's before the first call; without
one (``tokenizer=False`` and ``vocab_size=``) the backend takes token ids only.
"""

from __future__ import annotations

import contextlib
import os
import re
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
from ..vllm.logprobs import Drawn, Seq, continuation
from . import probe
from .client import Client, ServerError
from .probe import logprobs_mode, prompt_logprobs, token_id

if TYPE_CHECKING:
    from ...constraints import Matcher

MAX_PROMPTS = 1024
"""Prompts per request at most (vLLM's ``VLLM_MAX_COMPLETION_PROMPTS`` default)."""
# Every completions request: no truncation or penalty, whatever the server's defaults.
_PLAIN: dict[str, Any] = {
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "ignore_eos": True,
    "add_special_tokens": False,
    "return_token_ids": True,
    "return_tokens_as_token_ids": True,
}


class OpenAIBackend(HFBackend):
    """A :class:`~power_sampling.backends.base.TextBackend` over a served model.

    ``base_url``: the server, with or without the trailing ``/v1``
    (``http://127.0.0.1:8000/v1``). ``model``: the served model's name (default: the only one
    served). ``api_key``: sent as a bearer token (default: ``$OPENAI_API_KEY`` when set).
    ``tokenizer``: a tokenizer object, or the folder or hub id to load it from (default: the
    served model's folder when it exists here); ``False`` for a token-id backend, which needs
    ``vocab_size``. ``check_tokenizer=False`` skips the check against the server's tokenizer
    (only for a server that cannot tokenise). ``timeout`` (seconds per request),
    ``max_retries`` (on 429/503 and lost connections) and ``max_connections`` go to the HTTP
    client.
    """

    no_text = (
        "this OpenAIBackend was built with tokenizer=False, so it has no {name}(); pass "
        "tokenizer= (the served model's folder or hub id), or pass token ids"
    )
    build_with_text = "build it with tokenizer= (the served model's folder or hub id)"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        tokenizer: Any = None,
        name: str | None = None,
        stop_token_ids: Sequence[int] | None = None,
        vocab_size: int | None = None,
        check_tokenizer: bool = True,
        timeout: float = 600.0,
        max_retries: int = 5,
        max_connections: int = 64,
    ) -> None:
        root = re.sub(r"/v1/?$", "", base_url.rstrip("/"))
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.client = Client(
            root,
            api_key=key,
            timeout=timeout,
            max_retries=max_retries,
            max_connections=max_connections,
        )
        self.base_url = f"{root}/v1"
        try:  # a server refused here leaves no connections or thread behind
            served = _served(self.client, model)
            self.model: str = str(served["id"])
            self.max_context: int | None = served.get("max_model_len")
            self.name: str = name or self.model.rstrip("/").split("/")[-1]
            folder = served.get("root") or self.model
            self.tokenizer: Any = _tokenizer(tokenizer, self.model, folder)
            config = _configs(tokenizer if isinstance(tokenizer, str) else folder)
            if self.tokenizer is None and vocab_size is None:
                raise ValueError("a token-id OpenAIBackend (tokenizer=False) needs vocab_size=")
            size = vocab_size or getattr(config[0], "vocab_size", None) or len(self.tokenizer)
            self.vocab_size: int = int(size)
            eos = [getattr(c, "eos_token_id", None) for c in config]
            self.stop: StopCondition = StopCondition(
                stop_ids(eos, self.tokenizer, stop_token_ids or (), self.vocab_size)
            )
            self._set_text(self.tokenizer, self.name)
            if self.tokenizer is not None and check_tokenizer:
                probe.check_tokenizer(self.client, self.model, self.tokenizer)
            start = self.encode("The") if self.text is not None else [min(1, self.vocab_size - 1)]
            self.logprobs_mode: str = logprobs_mode(self.client, self._body(), start or [0])
        except BaseException:
            self.client.close()
            raise

    @property
    def returns_proposal_logprobs(self) -> bool:
        """Whether ``sample`` at a temperature other than 1 returns exact proposal log-probs
        (a server started with ``--logprobs-mode processed_logprobs``); MCMC needs them."""
        return self.logprobs_mode == "processed_logprobs"

    proposal_logprobs_fix = (
        "(a server started with vLLM's default --logprobs-mode raw_logprobs); restart the "
        "server with --logprobs-mode processed_logprobs"
    )

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()

    # -- the protocol ------------------------------------------------------------------------

    def _top_k(
        self,
        prefixes: list[TokenIds],
        k: int,
        *,
        keep_cache: bool,
        constraint: Sequence[Matcher | None] | None,
    ) -> TopKOutput:
        self._refuse(constraint)
        k = min(k, self.vocab_size)
        distinct = list(dict.fromkeys(prefixes))
        one = {**self._body(), "max_tokens": 1, "temperature": 0.0, "logprobs": k}
        try:
            answers = self._many(distinct, one)
        except ServerError as error:
            if error.status != 400 or "logprobs" not in error.message:
                raise
            cap = re.search(r"max allowed: (\d+)", error.message)
            raise ValueError(
                f"top_k={k} is more than the server allows"
                f"{f' (at most {cap.group(1)} log-probs)' if cap else ''}: {error.message}; "
                f"ask for fewer, or start the server with --max-logprobs {k} (vLLM)"
            ) from error
        found = {}
        for prefix, (choice, _) in zip(distinct, answers, strict=True):
            tops = choice["logprobs"]["top_logprobs"][0]
            pairs = sorted(((token_id(t), float(v)) for t, v in tops.items()), key=_rank)[:k]
            found[prefix] = TopK(tuple(t for t, _ in pairs), tuple(v for _, v in pairs))
        forward = sum(len(p) for p in distinct)
        return TopKOutput([found[p] for p in prefixes], forward)

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
        self._refuse(constraint)
        empty = Continuation((), 0.0, False)
        grouped: list[list[Continuation]] = [[empty] * n for _ in prefixes]
        run = [i for i, limit in enumerate(limits) if n > 0 and limit > 0]
        common = {
            **self._body(),
            "n": n,
            "temperature": temperature,
            "logprobs": 0,
            "stop_token_ids": sorted(stop.token_ids),
            "stop": list(stop.strings),
            "include_stop_str_in_output": True,
            "skip_special_tokens": True,
            "spaces_between_special_tokens": False,
        }
        bodies = [
            {**common, "prompt": list(prefixes[i]), "max_tokens": limits[i], "seed": seeds[i]}
            for i in run
        ]
        answers = self.client.post_many("/v1/completions", bodies)
        drawn = {
            i: [_drawn(c, stop) for c in a["choices"]] for i, a in zip(run, answers, strict=True)
        }
        forward = sum(len(prefixes[i]) for i in run)
        forward += sum(max(len(r.tokens) - 1, 0) for rows in drawn.values() for r in rows)
        scores: dict[Seq, list[float]] = {}
        if temperature != 1.0 and self.logprobs_mode == "processed_logprobs":
            # the drawn log-probs are the proposal's; score the base ones
            sequences = [prefixes[i] + r.tokens for i, rows in drawn.items() for r in rows]
            scores = self._score([s for s in sequences if len(s) > 1])
            forward += sum(len(s) for s in scores)
        for i, rows in drawn.items():
            if len(rows) != n:
                raise RuntimeError(f"the server returned {len(rows)} completions, not n={n}")
            grouped[i] = [
                continuation(self.logprobs_mode, prefixes[i], r, temperature, scores) for r in rows
            ]
        return SampleOutput(grouped, forward)

    # -- requests ----------------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        return {"model": self.model, **_PLAIN}

    def score(self, sequences: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
        """See :meth:`~..base.ScoringBackend.score` (the server's prompt log-probs)."""
        validate_prefixes(sequences, self.vocab_size)
        seqs = [tuple(int(t) for t in s) for s in sequences]
        scores = self._score(seqs)
        return [tuple(scores[s]) for s in seqs]

    def _score(self, sequences: list[Seq]) -> dict[Seq, list[float]]:
        """Base log-probs of every token of each sequence after its first (prompt log-probs,
        which vLLM computes from the raw logits in every ``logprobs_mode``)."""
        distinct = list(dict.fromkeys(sequences))
        body = {**self._body(), "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        scores = {}
        for seq, (choice, _) in zip(distinct, self._many(distinct, body), strict=True):
            found = prompt_logprobs(choice, seq)
            if found is None:
                raise RuntimeError(f"the server at {self.base_url} returned no prompt log-probs")
            scores[seq] = found
        return scores

    def _many(self, prompts: list[Seq], body: dict[str, Any]) -> list[tuple[Any, Any]]:
        """One choice per prompt (with its answer's usage), several prompts per request."""
        chunks = [prompts[j : j + MAX_PROMPTS] for j in range(0, len(prompts), MAX_PROMPTS)]
        bodies = [{**body, "prompt": [list(p) for p in chunk]} for chunk in chunks]
        out = []
        answers = self.client.post_many("/v1/completions", bodies)
        for chunk, answer in zip(chunks, answers, strict=True):
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            if len(choices) != len(chunk):
                raise RuntimeError(f"the server answered {len(chunk)} prompts {len(choices)} times")
            out += [(c, answer.get("usage")) for c in choices]
        return out

    def _refuse(self, constraint: Sequence[Matcher | None] | None) -> None:
        if constraint is not None and any(m is not None for m in constraint):
            raise ValueError(
                "OpenAIBackend cannot run constrained outputs: the completions API cannot draw "
                "from the allowed tokens while reporting the base log-probs and the allowed "
                "mass that power sampling's correction needs; drop the constraint, or run the "
                "model in-process (TransformersBackend, or VLLMBackend with its constraint "
                "processor)"
            )


def _rank(pair: tuple[int, float]) -> tuple[float, int]:
    return (-pair[1], pair[0])


def _drawn(choice: dict[str, Any], stop: StopCondition) -> Drawn:
    """One completion as drawn. vLLM checks the length budget before stop tokens, so a stop
    token drawn last reads "length": the flag comes from the tokens themselves too."""
    tokens = tuple(int(t) for t in choice.get("token_ids") or ())
    logprobs = [float(v) for v in choice["logprobs"]["token_logprobs"]]
    if len(logprobs) != len(tokens):
        raise RuntimeError(f"the server returned {len(tokens)} tokens, {len(logprobs)} log-probs")
    ended = bool(tokens and tokens[-1] in stop.token_ids)
    finished = choice.get("finish_reason") == "stop" or ended
    return Drawn(tokens, logprobs, finished, [0.0] * len(tokens))


def _served(client: Client, model: str | None) -> dict[str, Any]:
    """The ``/v1/models`` entry of ``model`` (the only one served when None)."""
    entries = client.get("/v1/models").get("data") or []
    served = [str(e.get("id")) for e in entries]
    if model is None and len(entries) == 1:
        return dict(entries[0])
    for entry in entries:  # the served name, its folder, or the folder's last part
        names = {str(entry.get("id")), str(entry.get("root"))}
        if model is not None and (model in names or model in {n.split("/")[-1] for n in names}):
            return dict(entry)
    which = "name one with model=" if model is None else f"it does not serve {model!r}"
    raise ValueError(f"the server at {client.base_url} serves {served}: {which}")


def _tokenizer(tokenizer: Any, model: str, folder: str) -> Any:
    """The tokenizer object: given, loaded from the name given, or from the served folder."""
    if tokenizer is False:
        return None
    if tokenizer is not None and not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    source = os.fspath(tokenizer) if tokenizer is not None else folder
    if tokenizer is None and not os.path.isdir(source):
        source = model
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    except ImportError as error:
        raise ImportError(
            "OpenAIBackend loads the model's tokenizer with transformers: pip install "
            "'power-sampling[remote]'"
        ) from error
    except (OSError, ValueError) as error:
        raise ValueError(
            f"could not load the tokenizer of {model!r} from {source!r} ({error}); pass "
            "tokenizer= the served model's folder or hub id, or tokenizer=False (and "
            "vocab_size=) for a token-id backend"
        ) from error


def _configs(source: str) -> list[Any]:
    """The model's config and generation config where they load (vocabulary size, EOS ids);
    None for each that does not."""
    found: list[Any] = [None, None]
    if not os.path.isdir(source):  # a hub id: only what the tokenizer says
        return found
    try:
        from transformers import AutoConfig, GenerationConfig
    except ImportError:
        return found
    kinds: tuple[Any, ...] = (AutoConfig, GenerationConfig)
    for j, kind in enumerate(kinds):
        with contextlib.suppress(OSError, ValueError):
            found[j] = kind.from_pretrained(source)
    return found
