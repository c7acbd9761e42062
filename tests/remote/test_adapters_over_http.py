"""LangChain, DSPy and the CLI over HTTP: each reaches the served embedded model through
``base_url`` (``OpenAIBackend``), end to end against the real vLLM server of ``conftest.py``."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("langchain_core")
dspy = pytest.importorskip("dspy")

from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402

from power_sampling.backends.openai import OpenAIBackend  # noqa: E402
from power_sampling.engine.registry import load_shared  # noqa: E402
from power_sampling.integrations.dspy import power_lm  # noqa: E402
from power_sampling.integrations.langchain import ChatPowerSampling  # noqa: E402

FAST = {"top_k": 2, "num_rollouts": 2, "rollout_length": 4, "block_size": 4}


def test_a_langchain_chain_runs_over_http(embedded_url: str) -> None:
    llm = ChatPowerSampling(base_url=embedded_url, api_key="unused", seed=0, max_tokens=8, **FAST)
    chain = ChatPromptTemplate.from_messages([("user", "What is {a} + {b}?")]) | llm
    message = chain.invoke({"a": 2, "b": 2})
    assert message.content.strip()
    usage = message.usage_metadata
    assert usage is not None and 0 < usage["output_tokens"] <= 8
    # The model loaded for the chain is the served one, shared by every instance naming it.
    backend = load_shared(None, base_url=embedded_url, api_key="unused")
    assert isinstance(backend, OpenAIBackend) and backend.base_url == embedded_url
    again = (chain | StrOutputParser()).invoke({"a": 2, "b": 2})
    assert again == message.content  # seeded: the same answer from the server


def test_a_dspy_predict_runs_over_http(embedded_url: str) -> None:
    """A ``dspy.Predict`` over HTTP (one call: no JSON fallback, whose schema would be a
    constraint; 16 tokens may not finish DSPy's format)."""
    lm = power_lm(base_url=embedded_url, seed=0, cache=False, max_new_tokens=16, **FAST)
    assert lm.model.startswith("power/default@")
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    with dspy.context(lm=lm, adapter=adapter):
        try:
            result = dspy.Predict("question -> answer")(question="What is 2 + 2?")
        except dspy.utils.exceptions.AdapterParseError:
            result = None
    assert result is None or isinstance(result.answer, str)
    [entry] = lm.history
    assert entry["messages"][0]["role"] == "system"  # the adapter sent its instructions
    assert 0 < entry["usage"]["completion_tokens"] <= 16
    assert entry["response"].text.strip()
    assert "api_key" not in json.dumps(lm._engine_spec.dump_state())


def test_structured_output_over_http_is_refused_with_the_reason(embedded_url: str) -> None:
    lm = power_lm(base_url=embedded_url, seed=0, cache=False, max_new_tokens=8, **FAST)
    with (
        dspy.context(lm=lm, adapter=dspy.JSONAdapter()),
        pytest.raises(Exception, match="cannot run constrained outputs"),
    ):
        dspy.Predict("question -> answer")(question="What is 2 + 2?")


def test_the_cli_generates_over_http(embedded_url: str, capsys: Any) -> None:
    from power_sampling.cli import main

    argv = ["generate", "What is 2+2?", "--base-url", embedded_url, "--max-new-tokens", "6"]
    assert main([*argv, "--top-k", "2", "--num-rollouts", "2", "-q", "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip()
    assert main([*argv, "--device", "cpu"]) == 2  # the server chose where the model runs
    assert "do not apply to --base-url" in capsys.readouterr().err
