"""``SchemaJSONAdapter``: DSPy's JSONAdapter, always with the output fields' whole JSON schema.

``dspy.JSONAdapter`` sends a JSON schema only when OpenAI's structured outputs could follow it;
a signature with an open mapping (``dict[str, Any]``, e.g. ``dspy.ReAct``'s ``next_tool_args``)
gets ``{"type": "json_object"}`` instead, so the reply may be any object at all (a small model's
most likely one is ``{}``, which has none of the fields). A grammar-constrained engine can follow
open mappings: this adapter sends the schema of every output field, each required, no others,
an open mapping as any JSON object. With :func:`power_sampling.integrations.dspy.lm.power_lm` every
reply then holds every field with a value of its type, so it parses unless ``max_tokens`` cuts it.
"""

from __future__ import annotations

from typing import Any

import dspy
import pydantic
from dspy.adapters.types.tool import ToolCalls

__all__ = ["SchemaJSONAdapter"]


class SchemaJSONAdapter(dspy.JSONAdapter):
    """A ``dspy.JSONAdapter`` whose ``response_format`` is always the output fields' schema.

    >>> dspy.configure(lm=power_lm(preset="cpu"), adapter=SchemaJSONAdapter())
    """

    def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any) -> None:
        if "response_format" not in lm.supported_params:
            return
        lm_kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": signature.__name__, "schema": output_schema(signature)},
        }


def output_schema(signature: Any, *, native_tool_calls: bool = True) -> dict[str, Any]:
    """The JSON schema of ``signature``'s output fields, in their order, all required and no
    others (``ToolCalls`` fields are left out when tools are called natively)."""
    fields = {
        name: (field.annotation, ...)
        for name, field in signature.output_fields.items()
        if not (native_tool_calls and field.annotation == ToolCalls)
    }
    model = pydantic.create_model(
        "Outputs", __config__=pydantic.ConfigDict(extra="forbid"), **fields
    )
    schema = model.model_json_schema()
    schema["required"] = list(fields)
    return schema
