"""What the server tests share: a scripted model, a backend whose calls can be held and counted,
and a sampler that records its runs (to show batching by counting, not timing)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from power_sampling import PowerSampler, PowerSamplingConfig
from power_sampling.backends.scripted import ScriptedLM
from power_sampling.serving import BackgroundServer, LocalEngine, create_app
from power_sampling.testing import tiny_tokenizer

SMALL = dict(block_size=4, num_candidates=4, top_k=2, num_rollouts=2, rollout_length=4)
ANSWER = "The answer is 4."
CALL = {"name": "add", "arguments": {"a": 2, "b": 2}}
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
LONG = " ".join(f"word{i}" for i in range(150))


def reply(prompt: str) -> str:
    """The scripted model's answer: a tool call when tools are offered, JSON when asked for,
    DSPy's field format when DSPy asks, a long text when asked to ramble, else :data:`ANSWER`."""
    if "<tools>" in prompt and "<tool_response>" not in prompt:
        return f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>"
    if "Reply with one JSON object" in prompt:
        return '{"answer": 4}'
    if "[[ ## answer ## ]]" in prompt:
        return "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
    if "ramble" in prompt:
        return LONG
    return ANSWER


class HeldBackend:
    """Proxy of a backend that counts its calls, can hold them until :meth:`release`, and can
    slow each call down by ``delay`` seconds."""

    def __init__(self, backend: Any, *, held: bool = False, delay: float = 0.0) -> None:
        self._backend = backend
        self.calls = 0
        self.delay = delay
        self.waiting = threading.Event()  # a call is being held
        self._open = threading.Event()
        if not held:
            self._open.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def release(self) -> None:
        self._open.set()

    def _enter(self) -> None:
        self.calls += 1
        if not self._open.is_set():
            self.waiting.set()
            self._open.wait(60)
        if self.delay:
            time.sleep(self.delay)

    def sample(self, *args: Any, **kwargs: Any) -> Any:
        self._enter()
        return self._backend.sample(*args, **kwargs)

    def top_k(self, *args: Any, **kwargs: Any) -> Any:
        self._enter()
        return self._backend.top_k(*args, **kwargs)


class CountingSampler(PowerSampler):
    """A ``PowerSampler`` that records every run: how many requests, and their settings."""

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self.runs: list[tuple[int, PowerSamplingConfig]] = []

    def run(self, requests: Any, cancelled: Any = None) -> Any:
        self.runs.append((len(requests), requests[0].config))
        return super().run(requests, cancelled)


def scripted(**kwargs: Any) -> ScriptedLM:
    return ScriptedLM(tiny_tokenizer(), reply, **kwargs)


@contextmanager
def serving(
    backend: Any,
    *,
    model: str = "scripted",
    defaults: PowerSamplingConfig | None = None,
    shutdown_timeout: float = 5.0,
    app_options: dict[str, Any] | None = None,
    **engine_options: Any,
) -> Iterator[tuple[BackgroundServer, LocalEngine, CountingSampler]]:
    """A real server on 127.0.0.1 (a free port) over ``backend``, stopped on exit;
    ``app_options`` go to ``create_app`` (access, limits, request_timeout)."""
    sampler = CountingSampler(backend)
    engine = LocalEngine(sampler, **engine_options)
    config = defaults or PowerSamplingConfig(**SMALL, max_new_tokens=48)
    app = create_app(engine, model=model, defaults=config, **(app_options or {}))
    with BackgroundServer(app, shutdown_timeout=shutdown_timeout) as server:
        yield server, engine, sampler


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
