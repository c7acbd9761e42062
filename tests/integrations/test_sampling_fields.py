"""One table of sampling-field outcomes, asserted through every entry point alike: the Python
API (``PowerSampler.generate``), LangChain's ``ChatPowerSampling``, DSPy's ``power_lm`` and the
real HTTP server on 127.0.0.1. The semantics are :mod:`power_sampling.fields`'; the model is the
scripted one, so a field that is honoured leaves the reply as it is and a refused one is an
error naming the field (a 400 whose ``param`` is the field)."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("langchain_core")
dspy = pytest.importorskip("dspy")
httpx = pytest.importorskip("httpx")

from dspy.utils.exceptions import LMInvalidRequestError  # noqa: E402
from serve_helpers import ANSWER, SMALL, scripted, serving  # noqa: E402

from power_sampling import PowerSampler, PowerSamplingConfig  # noqa: E402
from power_sampling.integrations.dspy import power_lm  # noqa: E402
from power_sampling.integrations.langchain import ChatPowerSampling  # noqa: E402

QUESTION = "What is 2 + 2?"
OK = "ok"
ALL = ("standard", "low_temperature", "power", "mcmc", "smc", "best_of_n")
POWERS = ("power", "mcmc", "smc", "best_of_n")

# (field, value, methods, expected): OK, or the refusal's words after "<field>=<value> is invalid"
TABLE: list[tuple[str, Any, tuple[str, ...], str]] = [
    ("temperature", 0, ("standard", "low_temperature"), OK),
    ("temperature", 0.3, ("standard", "low_temperature"), OK),
    ("temperature", 1, ALL, OK),
    ("temperature", 0, POWERS, "leave temperature unset or 1"),
    ("temperature", 0.3, POWERS, "leave temperature unset or 1"),
    ("temperature", 2, ("power",), "alpha controls the sharpening"),
    ("temperature", -1, ("standard", "power"), "use a finite number >= 0"),
    ("top_p", 1, ALL, OK),
    ("top_p", 0.9, ("standard", "power"), "nucleus (top-p) truncation is not implemented"),
    ("top_p", 0, ("standard",), "use a number in (0, 1]"),
    ("top_p", 2, ("power",), "use a number in (0, 1]"),
    ("top_k", 2, ("power",), OK),
    ("top_k", 4, ("standard", "low_temperature", "mcmc", "smc", "best_of_n"), "leave top_k unset"),
    ("seed", 3, ALL, OK),
    ("presence_penalty", 0, ("power",), OK),
    ("presence_penalty", 0.5, ("standard", "power"), "penalties change the distribution"),
    ("frequency_penalty", 1.0, ("standard",), "penalties change the distribution"),
    ("logit_bias", {}, ("power",), OK),
    ("logit_bias", {"7": 5}, ("standard", "power"), "a bias changes the distribution"),
    ("logprobs", False, ("power",), OK),
    ("logprobs", True, ("standard", "power"), "per-token log-probs are not returned"),
    ("top_logprobs", 2, ("standard",), "per-token log-probs are not returned"),
]
ROWS = [(f, v, m, e) for f, v, methods, e in TABLE for m in methods]
DSPY_OWN = [("temperature", -1), ("top_p", 2), ("top_logprobs", 2)]
"""Values dspy.LM itself refuses before any engine sees them (its message names the field)."""


@pytest.fixture(scope="module")
def backend() -> Any:
    return scripted()


@pytest.fixture(scope="module")
def server(backend: Any) -> Any:
    with serving(backend) as (running, _, _):
        yield running


def _check(expected: str, field: str, value: Any, call: Any) -> None:
    if expected == OK:
        assert call() == ANSWER
        return
    with pytest.raises(Exception) as caught:
        call()
    message = str(caught.value)
    assert re.search(rf"\b{field}=.+? is invalid", message), message  # DSPy sends floats
    assert expected in message, message


IDS = [f"{f}={v!r}-{m}" for f, v, m, _ in ROWS]


@pytest.mark.parametrize(("field", "value", "method", "expected"), ROWS, ids=IDS)
def test_python_api(backend: Any, field: str, value: Any, method: str, expected: str) -> None:
    sampler = PowerSampler(backend, PowerSamplingConfig(**SMALL, max_new_tokens=48))
    prompt = [{"role": "user", "content": QUESTION}]
    call = lambda: sampler.generate(prompt, method=method, **{field: value}).text  # noqa: E731
    _check(expected, field, value, call)


@pytest.mark.parametrize(("field", "value", "method", "expected"), ROWS, ids=IDS)
def test_langchain(backend: Any, field: str, value: Any, method: str, expected: str) -> None:
    chat = ChatPowerSampling(backend=backend, **SMALL, max_new_tokens=48)
    call = lambda: chat.invoke(QUESTION, method=method, **{field: value}).content  # noqa: E731
    _check(expected, field, value, call)


@pytest.mark.parametrize(("field", "value", "method", "expected"), ROWS, ids=IDS)
def test_dspy(backend: Any, field: str, value: Any, method: str, expected: str) -> None:
    lm = power_lm(backend=backend, cache=False, **SMALL, max_new_tokens=48)

    def call() -> str:
        return lm(QUESTION, metadata={"method": method}, **{field: value})[0]

    if any(field == f and value == v for f, v in DSPY_OWN):
        with pytest.raises(ValueError, match=field):
            call()
        return
    if expected != OK:
        with pytest.raises(LMInvalidRequestError):
            call()
    _check(expected, field, value, call)


@pytest.mark.parametrize(("field", "value", "method", "expected"), ROWS, ids=IDS)
def test_server(server: Any, field: str, value: Any, method: str, expected: str) -> None:
    body = {
        "model": "scripted",
        "messages": [{"role": "user", "content": QUESTION}],
        field: value,
        "power_sampling": {"method": method},
    }
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    if expected == OK:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == ANSWER
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert f"{field}={value!r} is invalid" in error["message"], error
    assert expected in error["message"], error


def test_n_is_choices_on_the_server_and_one_elsewhere(backend: Any, server: Any) -> None:
    body = {"model": "scripted", "messages": [{"role": "user", "content": QUESTION}], "n": 2}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert [c["message"]["content"] for c in response.json()["choices"]] == [ANSWER] * 2
    sampler = PowerSampler(backend, PowerSamplingConfig(**SMALL, max_new_tokens=48))
    chat = ChatPowerSampling(backend=backend, **SMALL, max_new_tokens=48)
    for call in (lambda: sampler.generate(QUESTION, n=2), lambda: chat.invoke(QUESTION, n=2)):
        with pytest.raises(ValueError, match=r"n=2 is invalid: this entry point returns one"):
            call()
    assert sampler.generate(QUESTION, n=1).text == chat.invoke(QUESTION, n=1).content


def test_stop_is_cut_alike(backend: Any, server: Any) -> None:
    sampler = PowerSampler(backend, PowerSamplingConfig(**SMALL, max_new_tokens=48))
    chat = ChatPowerSampling(backend=backend, **SMALL, max_new_tokens=48)
    lm = power_lm(backend=backend, cache=False, **SMALL, max_new_tokens=48)
    body = {"model": "scripted", "messages": [{"role": "user", "content": QUESTION}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stop": [" is"]})
    texts = {
        sampler.generate([{"role": "user", "content": QUESTION}], stop=[" is"]).text,
        chat.invoke(QUESTION, stop=[" is"]).content,
        lm(QUESTION, stop=[" is"])[0],
        response.json()["choices"][0]["message"]["content"],
    }
    assert texts == {"The answer"}


def test_a_call_wins_over_the_constructor(backend: Any) -> None:
    chat = ChatPowerSampling(backend=backend, method="standard", temperature=0.5)
    assert chat.config.temperature == 0.5
    assert chat._request("q", None, {"temperature": 0}).config.temperature == 0
    with pytest.raises(ValueError, match=r"temperature=0\.3 is invalid"):
        ChatPowerSampling(backend=backend, temperature=0.3)  # method power
    with pytest.raises(ValueError, match=r"top_p=0\.5 is invalid"):
        ChatPowerSampling(backend=backend, top_p=0.5)
    lm = power_lm(backend=backend, cache=False, method="standard", temperature=0.5)
    assert lm.kwargs["temperature"] == 0.5
    assert lm(QUESTION, temperature=0)[0] == ANSWER  # the call's 0 (greedy) is what runs
    with pytest.raises(ValueError, match=r"temperature=0\.3 is invalid"):
        power_lm(backend=backend, temperature=0.3)
