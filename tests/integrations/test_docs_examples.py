"""Every Python block of README.md and docs/*.md runs.

The blocks are written for the embedded model; here the default model is a scripted one
(:class:`power_sampling.backends.scripted.ScriptedLM` over the tiny tokenizer) whose replies
follow the prompt (a tool call when tools are offered, DSPy's fields when DSPy asks), so the whole
pipeline runs in seconds. An HTML comment before a block says how else it runs:

- ``<!-- docs-test: server -->``: a server on the scripted model runs for it, with an API key in
  ``POWER_SAMPLING_API_KEY``; the block's ``http://127.0.0.1:8000`` is that server's address.
- ``<!-- docs-test: skip REASON -->``: not run (REASON says why: a GPU, vLLM, a long run).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain")
pytest.importorskip("dspy")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- docs-test: (?P<mark>[^>]*?) -->\n)?```python\n(?P<code>.*?)\n```", re.S
)
ANSWER = "17 * 24 = 408."


def blocks() -> list[Any]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            mark = (match.group("mark") or "").strip()
            marks = [pytest.mark.skip(reason=mark[5:].strip())] if mark.startswith("skip") else []
            found.append(
                pytest.param(
                    mark, match.group("code"), id=f"{page.relative_to(ROOT)}:{line}", marks=marks
                )
            )
    return found


def value(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    return {"integer": 408, "number": 408.0, "boolean": True, "string": ANSWER}.get(kind, ANSWER)


def reply(prompt: str) -> str:
    """What the scripted model says to ``prompt``."""
    turn = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    if "<tools>" in prompt and "<tool_response>" not in turn:
        tools = prompt.split("<tools>", 1)[1]
        first, _ = json.JSONDecoder().raw_decode(tools[tools.index("{") :])
        function = first.get("function", first)
        properties = function.get("parameters", {}).get("properties", {})
        call = {"name": function["name"], "arguments": {k: value(v) for k, v in properties.items()}}
        return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
    if "Your output fields are:" in prompt:  # DSPy
        section = prompt.split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
        fields = re.findall(r"`(\w+)` \((\w+)\)", section)
        kinds = {"int": "integer", "float": "number", "bool": "boolean"}
        values = {name: value({"type": kinds.get(kind, "string")}) for name, kind in fields}
        if "JSON" in prompt.split("Your output fields are:", 1)[1]:
            return json.dumps(values)
        return "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in values.items()) + (
            "[[ ## completed ## ]]"
        )
    if "JSON" in prompt:  # a JSON schema described in the prompt, or any object
        return json.dumps({k: value(v) for k, v in schema_in(prompt).items()} or {"answer": 408})
    return ANSWER


def schema_in(prompt: str) -> dict[str, Any]:
    """The properties of the first JSON schema written in ``prompt`` ({} if none)."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", prompt)):
        try:
            found, _ = decoder.raw_decode(prompt[start:])
        except ValueError:
            continue
        if isinstance(found, dict) and isinstance(found.get("properties"), dict):
            return found["properties"]
    return {}


@pytest.fixture
def scripted_default(monkeypatch: pytest.MonkeyPatch) -> Any:
    from power_sampling.backends import models
    from power_sampling.backends.scripted import ScriptedLM
    from power_sampling.engine import registry
    from power_sampling.testing import tiny_tokenizer

    backend = ScriptedLM(tiny_tokenizer(), reply, name="SmolLM2-135M-Instruct")
    original = models.resolve_model

    def resolve(model: object = None, **kwargs: Any) -> Any:
        if model in (None, "default", "SmolLM2-135M-Instruct"):
            return backend
        return original(model, **kwargs)

    monkeypatch.setattr(models, "resolve_model", resolve)
    monkeypatch.setattr(registry, "_MODELS", {})
    return backend


@contextlib.contextmanager
def server(backend: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from power_sampling import PowerSamplingConfig
    from power_sampling.serving import BackgroundServer, LocalEngine, create_app
    from power_sampling.serving.access import API_KEY_ENV_VAR, AccessPolicy

    key = "docs-test-key"
    monkeypatch.setenv(API_KEY_ENV_VAR, key)
    app = create_app(
        LocalEngine(backend),
        model="SmolLM2-135M-Instruct",
        defaults=PowerSamplingConfig.preset("cpu"),
        access=AccessPolicy(api_keys=frozenset({key})),
    )
    background = BackgroundServer(app)
    background.start()
    try:
        yield f"http://{background.host}:{background.port}"
    finally:
        background.stop()


@pytest.mark.parametrize(("mark", "code"), blocks())
def test_block_runs(
    mark: str, code: str, scripted_default: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    dspy_settings = importlib.import_module("dspy.dsp.utils.settings")  # the module
    # A block's dspy.configure is global: each block configures a copy, dropped after it.
    config = dspy_settings.main_thread_config
    monkeypatch.setattr(dspy_settings, "main_thread_config", type(config)(config))
    output = io.StringIO()
    with contextlib.ExitStack() as stack:
        if mark == "server":
            url = stack.enter_context(server(scripted_default, monkeypatch))
            code = code.replace("http://127.0.0.1:8000", url)
        else:
            assert not mark, f"unknown docs-test mark {mark!r}"
        stack.enter_context(contextlib.redirect_stdout(output))
        exec(compile(code, "<docs block>", "exec"), {"__name__": "__docs__"})
    assert output.getvalue().strip(), "a quick start should print what it made"
