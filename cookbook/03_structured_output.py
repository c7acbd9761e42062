"""03 · Structured output: a pydantic object from a power-sampled chat model.

``llm.with_structured_output(Schema)`` returns validated ``Schema`` objects:

- ``method="function_calling"`` (default): a forced call of a tool named after the schema;
- ``method="json_schema"``: a JSON reply (``"json_mode"``: any JSON object).

Both are constrained to the schema, so every reply is a valid object unless ``max_new_tokens``
cuts it. A reply that does not parse or validate raises ``OutputParserException``; with
``include_raw=True`` you get ``{"raw": AIMessage, "parsed": obj | None, "parsing_error": ...}``
instead, as here, so a small model's mistakes are visible rather than fatal. A worked example in
the history (in the method's own format) is what gets a 135M model to fill in the fields.

Run ``python cookbook/03_structured_output.py`` (the embedded SmolLM2-135M-Instruct; a minute or
two on a CPU). ``POWER_SAMPLING_COOKBOOK_MODEL=tiny`` runs a tiny random model instead (a smoke
test: its gibberish strings may run past ``max_new_tokens``, which the recipe reports).
"""

from __future__ import annotations

import json
import os
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, Field

from power_sampling.integrations.langchain import ChatPowerSampling

TINY = os.environ.get("POWER_SAMPLING_COOKBOOK_MODEL") == "tiny"
# The "cpu" preset's budgets (the paper's are preset="paper"), shorter answers, a fixed seed.
SETTINGS: dict[str, Any] = dict(preset="cpu", max_new_tokens=24 if TINY else 64, seed=0)


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(description="the city's name")
    country: str = Field(description="the country the city is in")


def make_llm(**settings: Any) -> ChatPowerSampling:
    if TINY:
        from power_sampling.backends import TransformersBackend
        from power_sampling.testing import tiny_chat_model

        backend = TransformersBackend.from_transformers(*tiny_chat_model(seed=0))
        return ChatPowerSampling(backend=backend, **settings)
    return ChatPowerSampling(**settings)  # the embedded SmolLM2-135M-Instruct


def main() -> None:
    llm = make_llm(**SETTINGS)
    # A worked example in each method's own format helps a small model fill in the fields.
    rome = {"name": "Rome", "country": "Italy"}
    examples = {
        "function_calling": [
            HumanMessage("Which city is the Colosseum in?"),
            AIMessage("", tool_calls=[{"name": "City", "args": rome, "id": "0"}]),
            ToolMessage("You have correctly called this tool.", tool_call_id="0"),
        ],
        "json_schema": [
            HumanMessage("Which city is the Colosseum in?"),
            AIMessage(json.dumps(rome)),
        ],
    }
    question = HumanMessage("Which city is the Eiffel Tower in?")
    for method, example in examples.items():
        structured = llm.with_structured_output(City, method=method, include_raw=True)
        result = structured.invoke([*example, question])
        if result["parsed"] is not None:
            print(f"{method}: {result['parsed']!r}")
        else:
            print(f"{method}: no valid City ({result['parsing_error']})")


if __name__ == "__main__":
    main()
