"""ScriptedLM: a text backend that writes a scripted reply, for testing integrations.

Framework adapters (LangChain tool loops, DSPy adapters) expect replies in exact formats that
a tiny random model never produces. ``ScriptedLM`` puts all probability on the tokens of
``reply(prompt_text)`` followed by the end-of-turn token, so every sampler, power sampling
included, returns that reply, while the whole pipeline (prompt rendering, candidates, rollouts,
streaming, stop strings) runs for real.

Under a constraint the model is still the one-hot script: where the scripted token is allowed it
keeps all the mass (allowed mass 1), where it is not the allowed mass is 0, a dead end, which the
samplers report as a clear error. So a script that the constraint admits comes out unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..text import first_stop
from .base import BaseBackend, Continuation, SampleOutput, StopCondition, TokenIds, TopK, TopKOutput
from .hf_text import HFText

if TYPE_CHECKING:
    from ..constraints import Matcher


class ScriptedLM(BaseBackend):
    """A backend over a Hugging Face tokenizer whose reply to a prompt is ``reply(prompt)``.

    ``reply`` is a fixed string or a function of the prompt text (the rendered chat template or
    the raw prompt). Prompts are recognised because they pass through ``encode`` or
    ``apply_chat_template``; a prefix that starts with no known prompt gets the end token.
    """

    def __init__(
        self,
        tokenizer: Any,
        reply: str | Callable[[str], str],
        *,
        name: str = "scripted",
        max_context: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        # The tokenizer's measures (max_token_bytes); the text methods below stay this class's
        # own, since they record the prompts they see.
        self.text = HFText(tokenizer, name)
        self._reply = (lambda _: reply) if isinstance(reply, str) else reply
        self._name = name
        self._max_context = max_context
        self._prompts: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._lock = threading.Lock()
        ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self._end = int(tokenizer.convert_tokens_to_ids("<|im_end|>") or tokenizer.eos_token_id)
        unk = getattr(tokenizer, "unk_token_id", None)
        self._stop = StopCondition(frozenset(int(i) for i in ids if i is not None and i != unk))

    # -- TextBackend ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def stop(self) -> StopCondition:
        return self._stop

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_context(self) -> int | None:
        return self._max_context

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        if add_special_tokens:
            self._remember(ids, text)
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(
            self.tokenizer.decode(
                list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tools=[dict(t) for t in tools] if tools else None,
            add_generation_prompt=True,
            tokenize=False,
        )
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        self._remember(ids, text)
        return ids

    # -- Backend -------------------------------------------------------------------------------

    def _top_k(
        self,
        prefixes: list[TokenIds],
        k: int,
        *,
        keep_cache: bool,
        constraint: Sequence[Matcher | None] | None,
    ) -> TopKOutput:
        entries = []
        for i, prefix in enumerate(prefixes):
            token, matcher = self._next(prefix), constraint[i] if constraint else None
            allowed = matcher is None or matcher.fork().accept(token)
            entries.append(TopK((token,), (0.0,)) if allowed else TopK((), ()))
        return TopKOutput(entries, forward_tokens=len(prefixes))

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
        rows = []
        for i, (prefix, budget) in enumerate(zip(prefixes, limits, strict=True)):
            seq, finished, log_mass = list(prefix), False, 0.0
            start = constraint[i] if constraint else None
            matcher = None if start is None else start.fork()
            tokens: list[int] = []
            while len(tokens) < budget and not finished:
                token = self._next(seq)
                if matcher is not None and not matcher.accept(token):
                    log_mass = float("-inf")  # the script leaves the constraint: a dead end
                    break
                seq.append(token)
                tokens.append(token)
                text = self.decode(tokens)
                finished = token in stop.token_ids or first_stop(text, stop.strings) >= 0
            zeros = (0.0,) * len(tokens)
            one = Continuation(tuple(tokens), 0.0, finished, zeros, zeros, log_mass)
            rows.append([one] * n)
        return SampleOutput(rows, forward_tokens=sum(len(r[0].token_ids) * n for r in rows))

    # -- the script ----------------------------------------------------------------------------

    def _remember(self, ids: list[int], text: str) -> None:
        with self._lock:
            if tuple(ids) not in self._prompts:
                script = self.tokenizer.encode(self._reply(text), add_special_tokens=False)
                self._prompts[tuple(ids)] = (*script, self._end)

    def _next(self, prefix: Sequence[int]) -> int:
        """The scripted token after ``prefix``: the reply continues where the prefix left off."""
        seq = tuple(int(t) for t in prefix)
        with self._lock:
            known = [p for p in self._prompts if seq[: len(p)] == p]
        if not known:
            return self._end
        prompt = max(known, key=len)
        script, done = self._prompts[prompt], seq[len(prompt) :]
        if done == script[: len(done)] and len(done) < len(script):
            return script[len(done)]
        return self._end
