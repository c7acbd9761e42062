"""01 · A LangChain chain with a power-sampled chat model.

``ChatPowerSampling`` is a LangChain chat model, so it drops into any chain::

    chain = prompt | ChatPowerSampling(alpha=4, num_rollouts=8) | StrOutputParser()

This recipe streams an answer through ``prompt | llm`` (power sampling commits text a block at a
time, after scoring look-ahead rollouts, so chunks arrive in blocks), prints what the sampler
spent, then asks the same question with standard sampling (``method="standard"``: the base model
at temperature 1) through ``llm.bind(...)``, which sets sampler options per call.

- ``alpha``: how sharp the target p(x)^alpha is; 1 is the base model, the paper uses 4.
- The rollout budget: ``top_k`` candidates per step, ``num_rollouts`` rollouts per candidate,
  each up to ``rollout_length`` tokens; a step decides ``block_size`` tokens.

Run ``python cookbook/01_langchain_chain.py`` (the embedded SmolLM2-135M-Instruct; a minute or
two on a laptop CPU). ``POWER_SAMPLING_COOKBOOK_MODEL=tiny`` runs a tiny random model instead (a
smoke test: its text is gibberish).
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from power_sampling.integrations.langchain import ChatPowerSampling

TINY = os.environ.get("POWER_SAMPLING_COOKBOOK_MODEL") == "tiny"

# The "cpu" preset's budgets (the paper's are preset="paper"), shorter answers, a fixed seed.
SETTINGS: dict[str, Any] = dict(preset="cpu", max_new_tokens=24 if TINY else 128, seed=0)


def make_llm(**settings: Any) -> ChatPowerSampling:
    if TINY:
        from power_sampling.backends import TransformersBackend
        from power_sampling.testing import tiny_chat_model

        backend = TransformersBackend.from_transformers(*tiny_chat_model(seed=0))
        return ChatPowerSampling(backend=backend, **settings)
    return ChatPowerSampling(**settings)  # the embedded SmolLM2-135M-Instruct, loaded on first use


def main() -> None:
    llm = make_llm(**SETTINGS)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a concise math tutor."), ("human", "{question}")]
    )
    question = {"question": "Pencils cost 15 cents each. How much do 7 pencils cost?"}
    print(f"Q: {question['question']}\nA (power sampling, alpha={llm.config.alpha}): ", end="")
    message = None
    for chunk in (prompt | llm).stream(question):
        print(chunk.content, end="", flush=True)
        message = chunk if message is None else message + chunk
    assert message is not None
    cost = message.response_metadata["power_sampling"]
    print(
        f"\n  {message.usage_metadata['output_tokens']} tokens; the sampler also drew "
        f"{cost['candidate_tokens']} candidate and {cost['rollout_tokens']} rollout tokens "
        f"in {cost['wall_time']:.1f} s"
    )
    standard = prompt | llm.bind(method="standard") | StrOutputParser()
    print(f"A (standard sampling): {standard.invoke(question)}")


if __name__ == "__main__":
    main()
