"""LangChain's standard chat-model suites (``langchain-tests``) on in-process models.

Tests that check what the model *says* (tool calls with the right arguments, structured output,
JSON) run on ``ScriptedLM`` with :func:`scripted_reply`, a deterministic stand-in for a capable
model that reads the rendered chat template, so the whole pipeline (template, tools, prefill,
power sampler, parsing, streaming) runs for real. Tests that only exercise mechanics (invoke,
stream, async, batch, usage, stop, histories) run on the tiny random transformers model.

Switched off, with reasons:

- ``supports_model_override`` = False: an instance holds one loaded model; a per-call
  ``model=`` that differs raises a clear error instead of loading other weights.
- image / audio / PDF / video inputs (suite defaults, False): the models are text-only.
- ``test_init_from_env`` skips itself: the model needs no API key from the environment.
  ``test_serdes`` is an expected failure: its ``allowed_objects="all"`` admits only the classes
  langchain-core's mapping lists; ``test_serdes_by_name`` runs it with our class allowed.
- ``enable_vcr_tests`` (default False): there is no HTTP traffic to record.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("transformers")

from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumpd, load
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from power_sampling.backends.scripted import ScriptedLM
from power_sampling.integrations.langchain import ChatPowerSampling
from power_sampling.testing import tiny_chat_model, tiny_tokenizer

# Tiny budgets: every stage of power sampling runs (candidates, rollouts, jackknife), briefly.
BUDGET = dict(
    block_size=4,
    num_candidates=4,
    top_k=2,
    num_rollouts=2,
    rollout_length=4,
    max_new_tokens=128,
    seed=0,
)
TINY_MAX_NEW_TOKENS = 16  # the tiny model's text is gibberish: a few tokens show the mechanics


def _value(spec: dict[str, Any], question: str) -> Any:
    """A plausible argument of JSON-schema type ``spec`` taken from the user's question."""
    kinds = [spec.get("type")] + [s.get("type") for s in spec.get("anyOf", [])]
    if "integer" in kinds or "number" in kinds:
        number = re.search(r"-?\d+", question)
        return int(number.group()) if number else 3
    if "boolean" in kinds:
        return True
    quoted = re.search(r"'([^']+)'", question)
    return quoted.group(1) if quoted else question


def _arguments(schema: dict[str, Any], question: str) -> dict[str, Any]:
    return {name: _value(spec, question) for name, spec in schema.get("properties", {}).items()}


def scripted_reply(prompt: str) -> str:
    """What a capable model would answer to the rendered ChatML ``prompt``.

    - tools listed and the last user turn is not a tool result: call the tool named in the
      question (else the first one), with arguments taken from the question;
    - a JSON schema in the system message: a JSON object with every property;
    - otherwise a short greeting.
    """
    turn = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    question = turn.split("<|im_end|>", 1)[0]
    if "<tools>" in prompt and "<tool_response>" not in turn:
        listing = prompt.split("<tools>\n", 1)[1].split("</tools>", 1)[0]
        tools = [json.loads(line)["function"] for line in listing.splitlines()]
        tool = next((t for t in tools if t["name"] in question), tools[0])
        call = {"name": tool["name"], "arguments": _arguments(tool["parameters"], question)}
        return f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"
    if "JSON schema:\n" in prompt:
        schema = json.loads(prompt.split("JSON schema:\n", 1)[1].split("<|im_end|>", 1)[0])
        return json.dumps(_arguments(schema, question), ensure_ascii=False)
    return "Hello! How are you today?"


@functools.cache
def scripted_backend() -> ScriptedLM:
    return ScriptedLM(tiny_tokenizer(), scripted_reply, name="scripted-capable")


@functools.cache
def tiny_backend() -> Any:
    from power_sampling.backends import TransformersBackend

    return TransformersBackend.from_transformers(*tiny_chat_model(seed=0))


# Standard tests that only exercise mechanics: they run on the tiny transformers model.
MECHANICS = {
    "test_invoke",
    "test_ainvoke",
    "test_stream",
    "test_astream",
    "test_stream_events_v3",
    "test_astream_events_v3",
    "test_batch",
    "test_abatch",
    "test_conversation",
    "test_double_messages_conversation",
    "test_usage_metadata",
    "test_usage_metadata_streaming",
    "test_stop_sequence",
    "test_message_with_name",
    "test_tool_message_histories_string_content",
    "test_tool_message_histories_list_content",
    "test_tool_message_error_status",
    "test_structured_few_shot_examples",
    "test_anthropic_inputs",
}


class TestChatPowerSamplingUnit(ChatModelUnitTests):
    """Construction only: the model is named, never loaded (construction stays fast)."""

    @property
    def chat_model_class(self) -> type[ChatPowerSampling]:
        return ChatPowerSampling

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "SmolLM2-135M-Instruct", **BUDGET}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suite's temperature 0 (greedy) is refused by method="power", whose target is
        # p(x)^alpha (power_sampling.fields); the field's behaviour has tests of its own.
        params = super().standard_chat_model_params
        return {key: value for key, value in params.items() if key != "temperature"}

    @property
    def supports_model_override(self) -> bool:
        return False

    @pytest.mark.xfail(
        reason="loads(allowed_objects='all') admits only the classes in langchain-core's "
        "mapping; test_serdes_by_name runs the same round trip with our class allowed"
    )
    def test_serdes(self, model: BaseChatModel, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)

    def test_serdes_by_name(self, model: BaseChatModel, snapshot: Any) -> None:
        serialized = dumpd(model)
        assert serialized == snapshot(name="serialized")
        loaded = load(
            serialized, valid_namespaces=["power_sampling"], allowed_objects=[ChatPowerSampling]
        )
        assert loaded.dict() == model.dict()


class TestChatPowerSamplingIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatPowerSampling]:
        return ChatPowerSampling

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"backend": scripted_backend(), **BUDGET}

    @pytest.fixture
    def model(self, request: Any) -> BaseChatModel:
        """The suite's fixture, with the backend chosen per test (see ``MECHANICS``)."""
        params = {**self.chat_model_params, **(getattr(request, "param", None) or {})}
        if request.node.originalname in MECHANICS:
            params |= {"backend": tiny_backend(), "max_new_tokens": TINY_MAX_NEW_TOKENS}
        return ChatPowerSampling(**params)

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False
