"""The server's model API (``power_sampling.serving.model_api``): plain decoding with vLLM's
completions fields, on a real server over the tiny random model. The values are checked against
the backend's own calls; ``tests/remote`` runs ``OpenAIBackend`` and the samplers against it."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from serve_helpers import HeldBackend, serving, wait_for  # noqa: E402

from power_sampling import PowerSamplingConfig  # noqa: E402

PLAIN = PowerSamplingConfig(method="standard", max_new_tokens=8)
FIELDS = {"return_token_ids": True, "return_tokens_as_token_ids": True, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tiny_backend: Any) -> Any:
    with serving(tiny_backend, model="tiny", defaults=PLAIN) as (running, _, _):
        yield running.url, tiny_backend


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json={"model": "tiny", **body}, timeout=60)


def test_log_probs_are_the_backends_own(server: Any) -> None:
    url, backend = server
    prompt = backend.encode("Hello there")
    body = {"prompt": prompt, "n": 2, "max_tokens": 6, "seed": 3, "logprobs": 3, **FIELDS}
    answer = post(url, "/v1/completions", {**body, "prompt_logprobs": 2}).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["usage"]["prompt_tokens"] == len(prompt)
    [scored] = backend.score([prompt])
    for choice in answer["choices"]:
        tokens = choice["token_ids"]
        assert choice["prompt_token_ids"] == prompt and len(tokens) == 6
        assert choice["finish_reason"] == "length"
        logprobs = choice["logprobs"]
        assert logprobs["tokens"] == [f"token_id:{t}" for t in tokens]
        [base] = backend.score([prompt + tokens])
        assert np.allclose(logprobs["token_logprobs"], base[len(prompt) - 1 :], atol=1e-4)
        for j, top in enumerate(logprobs["top_logprobs"]):
            [want] = backend.top_k([prompt + tokens[:j]], 3).entries
            named = {f"token_id:{t}": v for t, v in zip(want.token_ids, want.logprobs, strict=True)}
            assert set(named) <= set(top) and len(top) <= 4  # the top 3 and the drawn one
            assert all(top[k] == pytest.approx(v, abs=1e-4) for k, v in named.items())
        steps = choice["prompt_logprobs"]
        assert steps[0] is None and len(steps) == len(prompt)
        for token, value, step in zip(prompt[1:], scored, steps[1:], strict=True):
            assert step[str(token)]["logprob"] == pytest.approx(value, abs=1e-4)
            assert 1 <= len(step) <= 3
    again = post(url, "/v1/completions", body).json()  # seeded: the same draws
    assert [c["token_ids"] for c in again["choices"]] == [c["token_ids"] for c in answer["choices"]]


def test_stop_ids_end_a_completion_and_text_prompts_are_tokenised(server: Any) -> None:
    url, backend = server
    body = {"prompt": "Hello there", "max_tokens": 8, "seed": 5, **FIELDS}
    free = post(url, "/v1/completions", body).json()["choices"][0]
    tokens = free["token_ids"]
    assert free["prompt_token_ids"] == backend.encode("Hello there", add_special_tokens=True)
    stop = tokens[3]
    cut = post(url, "/v1/completions", {**body, "stop_token_ids": [stop]}).json()["choices"][0]
    assert cut["token_ids"] == tokens[: tokens.index(stop) + 1]
    assert cut["finish_reason"] == "stop" and cut["stop_reason"] == stop


def test_tokenize_and_detokenize(server: Any) -> None:
    url, backend = server
    text = "Power sampling, step by step."
    answer = post(url, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    assert answer["tokens"] == backend.encode(text) and answer["count"] == len(answer["tokens"])
    assert answer["max_model_len"] == backend.max_context
    assert post(url, "/detokenize", {"tokens": answer["tokens"]}).json() == {"prompt": text}
    assert post(url, "/tokenize", {"prompt": text, "model": "gpt-4"}).status_code == 404
    refused = post(url, "/detokenize", {"tokens": [10**9]})
    assert refused.status_code == 400 and "outside the vocabulary" in refused.text
    card = httpx.get(f"{url}/v1/models").json()["data"][0]
    assert card["max_model_len"] == backend.max_context


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"power_sampling": {"method": "power"}}, "return_token_ids", "--method standard"),
        ({"stream": True}, "stream", "not streamed"),
        ({"top_k": 5}, "top_k", "leave it unset, 0 or -1"),
        ({"min_p": 0.1}, "min_p", "min-p"),
        ({"logprobs": 21}, "logprobs", "max allowed: 20"),
        ({"max_tokens": 10**6}, None, "--max-tokens-limit"),
        ({"prompt": [10**9]}, "prompt", "outside the vocabulary"),
        ({"temperature": -1}, "temperature", "temperature"),
    ],
)
def test_what_the_model_api_cannot_do_is_a_400(
    server: Any, change: dict[str, Any], param: str | None, words: str
) -> None:
    url, _ = server
    body = {"prompt": [1, 2, 3], "max_tokens": 4, **FIELDS, **change}
    response = post(url, "/v1/completions", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["param"] == param


def test_concurrent_calls_share_model_calls(tiny_backend: Any) -> None:
    """Four requests at once, the first held inside the model: the other three wait for it and
    then run as one merged call."""
    held = HeldBackend(tiny_backend, held=True)
    with serving(held, model="tiny", defaults=PLAIN) as (running, engine, _):
        body = {"prompt": [1, 2, 3], "max_tokens": 4, "seed": 1, **FIELDS}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(post, running.url, "/v1/completions", body) for _ in range(4)]
            wait_for(lambda: held.waiting.is_set(), what="the first call")
            wait_for(lambda: engine.active == 4, what="four calls queued or running")
            held.release()
            answers = [f.result().json() for f in futures]
    assert len({tuple(a["choices"][0]["token_ids"]) for a in answers}) == 1  # same seed
    assert held.calls <= 2
