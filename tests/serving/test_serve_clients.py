"""The server called the way LangChain and DSPy users call a hosted model: ``ChatOpenAI`` with
``base_url`` and ``extra_body``, and ``dspy.LM("openai/<name>", api_base=...)``."""

from __future__ import annotations

import os
from typing import Any

import pytest

# LiteLLM (under dspy.LM) would fetch its model cost map from the internet, with retries.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
langchain_openai = pytest.importorskip("langchain_openai")
dspy = pytest.importorskip("dspy")

from serve_helpers import ADD_TOOL, ANSWER, CALL, scripted, serving  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Any:
    with serving(scripted()) as running:
        yield running


def chat_openai(server: Any, **kwargs: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        base_url=server[0].url + "/v1", api_key="x", model="scripted", max_retries=0, **kwargs
    )


def test_chat_openai_invoke_stream_and_settings(server: Any) -> None:
    sampler = server[2]
    llm = chat_openai(server, extra_body={"power_sampling": {"alpha": 2.0, "top_k": 3}})
    message = llm.invoke("What is 2 + 2?")
    assert message.content == ANSWER and message.usage_metadata["output_tokens"] > 0
    config = sampler.runs[-1][1]
    assert (config.alpha, config.top_k) == (2.0, 3)
    streamed = list(llm.stream("What is 2 + 2?"))
    assert "".join(str(c.content) for c in streamed) == ANSWER and len(streamed) >= 3
    llm.invoke("What is 2 + 2?", extra_body={"power_sampling": {"alpha": 3.0}})
    assert sampler.runs[-1][1].alpha == 3.0  # per call, replacing the constructor's
    with pytest.raises(openai.BadRequestError, match="did you mean 'alpha'"):
        chat_openai(server, extra_body={"power_sampling": {"alhpa": 2}}).invoke("hi")


def test_chat_openai_tool_calls(server: Any) -> None:
    llm = chat_openai(server).bind_tools([ADD_TOOL])
    message = llm.invoke("What is 2 + 2?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("add", CALL["arguments"])]
    chunks = list(llm.stream("What is 2 + 2?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("add", CALL["arguments"])]


def test_dspy_lm_and_predict(server: Any) -> None:
    lm = dspy.LM("openai/scripted", api_base=server[0].url + "/v1", api_key="x", cache=False)
    assert lm("What is 2 + 2?") == [ANSWER]
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="What is 2 + 2?").answer == "4"


# Extra request fields send dspy.LM through LiteLLM, which took ~60 s to import on 2 busy cores.
@pytest.mark.slow
def test_dspy_lm_with_power_sampling_settings(server: Any) -> None:
    lm = dspy.LM(
        "openai/scripted",
        api_base=server[0].url + "/v1",
        api_key="x",
        cache=False,
        num_retries=0,
        extra_body={"power_sampling": {"alpha": 2.5}},
    )
    assert lm("What is 2 + 2?") == [ANSWER]
    assert server[2].runs[-1][1].alpha == 2.5
