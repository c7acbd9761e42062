"""The server's access rules, limits and error shapes, on a real server on 127.0.0.1.

Each case is one request with the status it must get; the server is the scripted model, so only
the checks in front of the model decide the answers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import HeldBackend, scripted, serving  # noqa: E402

from power_sampling import PowerSamplingConfig  # noqa: E402
from power_sampling.serving.access import AccessPolicy  # noqa: E402
from power_sampling.serving.limits import RequestLimits, forward_tokens  # noqa: E402

KEYS = ("key-one", "key-two")
CHAT = {"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 8}
POLICY = AccessPolicy(api_keys=KEYS, allowed_hosts=("127.0.0.1",), max_body_bytes=4096)
LIMITS = RequestLimits(max_tokens=64, max_choices=4, max_forward_tokens=100_000)


@pytest.fixture(scope="module")
def server() -> Any:
    options = {"access": POLICY, "limits": LIMITS}
    with serving(scripted(max_context=400), app_options=options) as (http, _, _):
        yield http


def post(server: Any, body: Any, *, key: str | None = "key-one", **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body) if isinstance(body, dict) else body
    headers.setdefault("Content-Type", "application/json")
    return httpx.post(
        server.url + "/v1/chat/completions", content=data, headers=headers, timeout=30, **kwargs
    )


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer  key-one-x",
        "Bearer wrong",
        "Bearer key-one-and-more",
        "Bearer key-on",
        "Basic key-one",
        "key-one",
        "Bearer KEY-ONE",
    ],
)
def test_requests_without_a_valid_key_are_refused(server: Any, header: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    response = httpx.post(
        server.url + "/v1/chat/completions", content=json.dumps(CHAT), headers=headers
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("key", KEYS)
def test_every_configured_key_is_served(server: Any, key: str) -> None:
    response = post(server, CHAT, key=key)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def test_models_needs_a_key_and_health_does_not(server: Any) -> None:
    assert httpx.get(server.url + "/v1/models").status_code == 401
    auth = {"Authorization": "Bearer key-two"}
    assert httpx.get(server.url + "/v1/models", headers=auth).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_only_json_bodies_are_read(server: Any, kind: str) -> None:
    response = post(server, CHAT, headers={"Content-Type": kind})
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


def test_json_with_a_charset_is_json(server: Any) -> None:
    response = post(server, CHAT, headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200


def test_a_foreign_host_header_is_refused(server: Any) -> None:
    response = post(server, CHAT, headers={"Host": "attacker.example"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_host"


def test_a_large_body_is_refused_by_its_length(server: Any) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
    response = post(server, body)
    assert response.status_code == 413
    assert "--max-body-bytes" in response.json()["error"]["message"]


def test_a_large_chunked_body_is_refused_while_it_arrives(server: Any) -> None:
    def chunks() -> Any:
        yield json.dumps(CHAT)[:-1].encode()
        for _ in range(100):  # 100 KiB of padding, over the 4 KiB limit
            yield b" " * 1024
        yield b"}"

    response = post(server, chunks())
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_tokens": 65}, "--max-tokens-limit"),
        ({"n": 5}, "--max-choices"),
        (
            {"power_sampling": {"top_k": 4096, "num_candidates": 4096, "num_rollouts": 4096}},
            "--max-request-forward-tokens",
        ),
        ({"power_sampling": {"method": "mcmc", "mcmc_steps": 100_000}}, "--max-request-forward"),
    ],
)
def test_requests_over_the_limits_are_refused_up_front(
    server: Any, change: dict[str, Any], field: str
) -> None:
    response = post(server, {**CHAT, **change})
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


def test_deep_nesting_is_a_clear_400(server: Any) -> None:
    body = '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}"
    with serving(scripted(), app_options={"access": AccessPolicy()}) as (http, _, _):
        response = httpx.post(
            http.url + "/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("POST", "/v1/nowhere", 404), ("GET", "/v1/chat/completions", 405)],
)
def test_unknown_paths_and_methods_answer_in_openai_shape(
    server: Any, method: str, path: str, status: int
) -> None:
    headers = {"Authorization": "Bearer key-one", "Content-Type": "application/json"}
    response = httpx.request(method, server.url + path, headers=headers, content=b"{}")
    assert response.status_code == status
    assert set(response.json()["error"]) >= {"message", "type", "code"}


def test_a_request_past_the_deadline_ends_with_an_error() -> None:
    slow = HeldBackend(scripted(), delay=0.3)
    with serving(slow, app_options={"request_timeout": 0.5}) as (http, _, _):
        whole = httpx.post(http.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert whole.status_code == 504
        assert "--request-timeout" in whole.json()["error"]["message"]
        with httpx.stream(
            "POST", http.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30
        ) as streamed:
            lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert "--request-timeout" in json.loads(lines[-2].removeprefix("data: "))["error"]["message"]


def test_forward_tokens_bound_the_methods_work() -> None:
    """Worked by hand: T = 12 new tokens, blocks of B = 4 (3 steps)."""
    base = {"max_new_tokens": 12, "block_size": 4, "num_candidates": 3}
    cfg = PowerSamplingConfig(**base, top_k=2, num_rollouts=2, rollout_length=5)
    assert forward_tokens(cfg) == 3 * (3 * 4 + 2 * 2 * 5)  # L·B candidates + K·M·H rollouts
    token_level = cfg.replace(block_size=1)
    assert forward_tokens(token_level) == 12 * (1 + 2 * 2 * 5)
    assert forward_tokens(cfg.replace(method="standard")) == 12
    assert forward_tokens(cfg.replace(method="best_of_n", best_of=3)) == 36
    assert forward_tokens(cfg.replace(method="mcmc", mcmc_steps=2)) == 3 * (4 + 2 * 12)


def test_the_server_refuses_defaults_over_its_own_limits() -> None:
    with pytest.raises(ValueError, match="max-tokens-limit"):
        RequestLimits(max_tokens=8).check(PowerSamplingConfig(max_new_tokens=9), 1)
