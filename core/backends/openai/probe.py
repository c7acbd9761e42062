"""What :class:`~.backend.OpenAIBackend` checks of a server before its first call.

* **The tokenizer.** Samplers encode and decode with a tokenizer loaded here, so a server that
  runs another model (or another revision's vocabulary) would be fed wrong ids. A probe string
  (scripts, emoji, code, and the end-of-sequence token's text) is tokenised here and by the
  server (vLLM's and SGLang's ``/tokenize``, else a completions call that echoes the prompt's
  ids); any difference is refused, naming the first differing position.
* **What the log-probs are.** vLLM returns one kind per server (``--logprobs-mode``):
  ``raw_logprobs`` (the default) are the base model's at any temperature, ``processed_logprobs``
  those of the distribution drawn from (after temperature), and the ``*_logits`` modes are not
  log-probs at all. Three one-token calls on one prefix tell them apart exactly: the top-1
  log-prob at temperature 1 must equal the prefix's prompt log-prob of that token (else
  logits: refused), and at temperature 0.5 it stays the same (raw) or grows (processed), since
  sharpening raises the most likely token's probability unless it is already 1 (a prefix that
  cannot tell is refused, never guessed). The same calls check that the server returns token
  ids (vLLM's ``return_token_ids`` and ``return_tokens_as_token_ids``) and prompt log-probs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .client import Client, ServerError

PROBE_TEXT = "Power sampling: p(x)^α — naïve café, 東京, 🙂!\n\tdef f(x):\n    return x ** 2  # ok"
TOKEN_ID = re.compile(r"token_id:(-?\d+)$")
_SAME = 1e-3  # log-probs of one token computed twice by the server (float32 kernels)


def check_tokenizer(client: Client, model: str, tokenizer: Any) -> None:
    """Refuse a local ``tokenizer`` that does not tokenise like the server's model."""
    text = PROBE_TEXT + (tokenizer.eos_token or "")
    local = [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    remote = server_ids(client, model, text)
    if remote != local:
        at = next((i for i, (a, b) in enumerate(zip(local, remote, strict=False)) if a != b), None)
        at = min(len(local), len(remote)) if at is None else at
        raise ValueError(
            f"the local tokenizer does not match the model {model!r} served at "
            f"{client.base_url}: the probe text tokenises differently from token {at} on "
            f"({local[at : at + 4]} here, {remote[at : at + 4]} on the server); pass "
            "tokenizer= the served model's own (its folder or hub id)"
        )


def server_ids(client: Client, model: str, text: str) -> list[int]:
    """The server's token ids of ``text``, without special tokens added."""
    try:
        body = {"model": model, "prompt": text, "add_special_tokens": False}
        answer = client.post("/tokenize", body)
        return [int(t) for t in answer["tokens"]]
    except (ServerError, KeyError, TypeError):
        pass
    body = {
        "model": model,
        "prompt": text,
        "max_tokens": 1,
        "add_special_tokens": False,
        "return_token_ids": True,
    }
    try:
        ids = client.post("/v1/completions", body)["choices"][0].get("prompt_token_ids")
    except (ServerError, KeyError, IndexError, TypeError):
        ids = None
    if not ids:
        raise ValueError(
            f"the server at {client.base_url} neither tokenises text (/tokenize) nor returns "
            "a prompt's token ids, so the local tokenizer cannot be checked against its model; "
            "pass check_tokenizer=False if you are sure they are the same"
        )
    return [int(t) for t in ids]


def logprobs_mode(client: Client, body: dict[str, Any], prefix: Sequence[int]) -> str:
    """``raw_logprobs`` or ``processed_logprobs``: what the server's sampled log-probs are.
    ``body`` holds the fields every completions request carries (model, no truncation)."""
    prompt = [int(t) for t in prefix]
    one = {**body, "prompt": prompt, "max_tokens": 1, "logprobs": 1, "seed": 0}
    at_one, at_half = client.post_many(
        "/v1/completions", [{**one, "temperature": 1.0}, {**one, "temperature": 0.5}]
    )
    (token, first), (token_half, half) = top_one(at_one), top_one(at_half)
    choice = at_one["choices"][0]
    if not choice.get("token_ids"):
        raise ValueError(
            f"the server at {client.base_url} does not return token ids (vLLM's "
            "return_token_ids), which power sampling needs; serve the model with vLLM"
        )
    scored = client.post(
        "/v1/completions",
        {**body, "prompt": [*prompt, token], "max_tokens": 1, "prompt_logprobs": 0},
    )
    base = prompt_logprobs(scored["choices"][0], [*prompt, token])
    if base is None:
        raise ValueError(
            f"the server at {client.base_url} does not return prompt log-probs (vLLM's "
            "prompt_logprobs), which rescoring needs; serve the model with vLLM"
        )
    if abs(first - base[-1]) > _SAME:
        raise ValueError(
            f"the server at {client.base_url} returns logits, not log-probs (a vLLM "
            "--logprobs-mode raw_logits or processed_logits); start it with --logprobs-mode "
            "processed_logprobs"
        )
    if token_half == token and abs(half - first) <= _SAME / 5:
        return "raw_logprobs"
    if token_half == token and half - first >= 2 * _SAME:
        return "processed_logprobs"
    raise ValueError(
        f"could not tell which log-probs the server at {client.base_url} returns (its top "
        f"token's log-prob is {first:.6f} at temperature 1 and {half:.6f} at 0.5)"
    )


def top_one(answer: dict[str, Any]) -> tuple[int, float]:
    """The most likely first token of a one-token answer and its log-prob."""
    tops = answer["choices"][0]["logprobs"]["top_logprobs"][0]
    best = max(tops.items(), key=lambda kv: kv[1])
    return token_id(best[0]), float(best[1])


def token_id(key: str) -> int:
    """The id in vLLM's ``token_id:N`` token string (``return_tokens_as_token_ids``)."""
    found = TOKEN_ID.match(key)
    if found is None:
        raise ValueError(
            f"the server named a token {key!r} rather than 'token_id:N': it ignores "
            "return_tokens_as_token_ids, so its tokens cannot be identified; serve the model "
            "with vLLM"
        )
    return int(found.group(1))


def prompt_logprobs(choice: dict[str, Any], sequence: Sequence[int]) -> list[float] | None:
    """The base log-probs of ``sequence[1:]`` from a ``prompt_logprobs=0`` answer."""
    steps = choice.get("prompt_logprobs")
    if not steps or len(steps) != len(sequence):
        return None
    return [float(step[str(t)]["logprob"]) for t, step in zip(sequence[1:], steps[1:], strict=True)]
